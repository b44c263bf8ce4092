"""Every piece of the objective equals a direct, loop-based computation of MED.md's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkge.config import LossConfig, MedConfig
from medkge.losses import (
    MEDObjective,
    base_loss,
    evolutionary_positive_weights,
    evolutionary_weights,
    negative_weights,
    regularization,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def softmax(values: list[float]) -> list[float]:
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [x / sum(e) for x in e]


def huber(a: float, b: float, delta: float = 1.0) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d <= delta else delta * (d - 0.5 * delta)


def loop_base(s: list[list[float]], alpha: float) -> float:
    """L_base of one sub-model from scores s[b][0 = positive, 1.. = negatives]."""
    B = len(s)
    pos = -sum(log_sigmoid(row[0]) for row in s) / B
    neg = 0.0
    for row in s:
        p = softmax([alpha * x for x in row[1:]])
        neg -= sum(pk * log_sigmoid(-x) for pk, x in zip(p, row[1:], strict=True))
    return pos + neg / B


def ei_positive_logit(reading: str, s: float) -> float:
    """f(q) of MED.md's EI positive weights under each reading, q = sigmoid(s)."""
    q = sigmoid(s)
    return {"paper-literal": 1 / q, "power": -math.log(q), "error": 1 - q, "uniform": 0.0}[reading]


def loop_ei_weights(s, i, w1, w2, positives="paper-literal", negatives="paper-literal", alpha=1.0, temperature=1.0):
    """EI weights of sub-model i >= 1 (0-based) from sub-model i-1's scores s[i-1][b][k], one triple at a time."""
    B = len(s[i])
    u = softmax([w1 * ei_positive_logit(positives, s[i - 1][b][0]) / temperature for b in range(B)])
    v = []
    for b in range(B):
        if negatives == "paper-literal":
            v.append(softmax([w2 * sigmoid(x) for x in s[i - 1][b][1:]]))
        elif negatives == "raw":
            v.append(softmax([w2 * x for x in s[i - 1][b][1:]]))
        else:  # the sub-model's own self-adversarial weights
            v.append(softmax([alpha * x for x in s[i][b][1:]]))
    return u, v


def loop_med(scores: torch.Tensor, dims, alpha, w1, w2, w3, ml=True, ei=True, dlw=True, **reading) -> float:
    B, _, n = scores.shape
    s = [[[float(scores[b, k, i]) for k in range(scores.shape[1])] for b in range(B)] for i in range(n)]
    total = 0.0
    if ml:
        for i in range(1, n):
            total += sum(
                huber(sigmoid(s[i - 1][b][k]), sigmoid(s[i][b][k])) for b in range(B) for k in range(len(s[i][b]))
            ) / (B * len(s[i][0]))
    for i in range(n):
        if i == 0 or not ei:
            hard = loop_base(s[i], alpha)
        else:
            u, v = loop_ei_weights(s, i, w1, w2, alpha=alpha, **reading)
            hard = -sum(u[b] * log_sigmoid(s[i][b][0]) for b in range(B))
            neg = 0.0
            for b in range(B):
                neg -= sum(vk * log_sigmoid(-x) for vk, x in zip(v[b], s[i][b][1:], strict=True))
            hard += neg / B
        weight = math.exp(w3 * dims[i] / dims[-1]) if dlw else 1.0
        total += weight * hard
    return total


def random_scores(B=5, K=4, n=3, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 1 + K, n, generator=g, dtype=torch.float64) * scale).requires_grad_()


@pytest.mark.parametrize(
    ("ml", "ei", "dlw"), [(True, True, True), (False, True, True), (True, False, True), (True, True, False)]
)
@pytest.mark.parametrize("w", [(1.0, 1.0, 1.0), (0.5, 2.0, -0.75)])
def test_med_objective_equals_the_formulas(ml, ei, dlw, w):
    dims = [2, 5, 8]
    scores = random_scores(n=len(dims))
    med = MedConfig(mutual_learning=ml, evolutionary=ei, dynamic_weights=dlw, w1=w[0], w2=w[1], w3=w[2])
    objective = MEDObjective(dims, LossConfig(alpha=0.7), med).double()
    loss, _ = objective(scores)
    expected = loop_med(scores.detach(), dims, 0.7, *w, ml=ml, ei=ei, dlw=dlw)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-10)


def test_mutual_learning_sends_gradients_into_both_neighbours_and_ei_weights_are_detached():
    dims = [2, 4]
    scores = random_scores(n=2)
    ml_only = MEDObjective(dims, LossConfig(), MedConfig(evolutionary=False, dynamic_weights=False)).double()
    loss, _ = ml_only(scores)
    grad_ml = torch.autograd.grad(loss, scores)[0]
    hard_only = MEDObjective(
        dims, LossConfig(), MedConfig(mutual_learning=False, evolutionary=False, dynamic_weights=False)
    ).double()
    grad_hard = torch.autograd.grad(hard_only(scores)[0], scores)[0]
    mutual = grad_ml - grad_hard
    assert (mutual[..., 0].abs() > 0).all() and (mutual[..., 1].abs() > 0).all()
    # with EI, sub-model 1's scores get no gradient from sub-model 2's weights: only its own loss and ML
    ei = MEDObjective(dims, LossConfig(), MedConfig(mutual_learning=False, dynamic_weights=False, evolutionary=True))
    ei = ei.double()
    grad_ei = torch.autograd.grad(ei(scores)[0], scores)[0]
    torch.testing.assert_close(grad_ei[..., 0], grad_hard[..., 0])


def test_learned_weights_get_gradients_fixed_ones_do_not():
    dims = [2, 4, 8]
    learn = MEDObjective(dims, LossConfig(), MedConfig(weights="learn", evolutionary=True)).double()
    learn(random_scores())[0].backward()
    assert learn.w.grad is not None and (learn.w.grad != 0).all()
    fixed = MEDObjective(dims, LossConfig(), MedConfig(weights="fixed"))
    assert not fixed.w.requires_grad


def test_evolutionary_weights_survive_extreme_scores():
    s_prev = torch.tensor([[-800.0], [-90.0], [0.0], [50.0]])
    weights, ess = evolutionary_positive_weights(s_prev, torch.tensor(1.0))
    assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(1.0)
    assert weights[0, 0] > 0.99  # the worst-scored positive takes the weight
    assert ess.item() == pytest.approx(1.0, abs=1e-3)
    flat, ess_flat = evolutionary_positive_weights(torch.zeros(6, 1), torch.tensor(1.0))
    torch.testing.assert_close(flat, torch.full((6, 1), 1 / 6))
    assert ess_flat.item() == pytest.approx(6.0)
    # a temperature spreads the weights
    _, ess_t = evolutionary_positive_weights(torch.tensor([[-2.0], [0.0], [1.0]]), torch.tensor(1.0), 10.0)
    _, ess_1 = evolutionary_positive_weights(torch.tensor([[-2.0], [0.0], [1.0]]), torch.tensor(1.0), 1.0)
    assert ess_t > ess_1


def test_softplus_and_margin_losses():
    scores = random_scores(B=3, K=2, n=1).detach()
    s_pos, s_neg = scores[:, 0], scores[:, 1:]
    uniform = negative_weights("softplus", s_neg, alpha=1.0)
    softplus = base_loss("softplus", s_pos, s_neg, None, uniform)
    rows = scores[..., 0].tolist()
    expected = (
        -sum(log_sigmoid(r[0]) for r in rows) / 3 - sum(sum(log_sigmoid(-x) for x in r[1:]) / 2 for r in rows) / 3
    )
    assert float(softplus) == pytest.approx(expected)
    margin = base_loss("margin", s_pos, s_neg, None, uniform, margin=2.0)
    expected = sum(sum(max(0.0, 2.0 - r[0] + x) for x in r[1:]) / 2 for r in rows) / 3
    assert float(margin) == pytest.approx(expected)
    adversarial = negative_weights("self_adversarial", s_neg, alpha=0.5)
    torch.testing.assert_close(adversarial.sum(1), torch.ones(3, 1, dtype=torch.float64))
    assert float(base_loss("self_adversarial", s_pos, s_neg, None, adversarial)) == pytest.approx(loop_base(rows, 0.5))


def test_regularizers():
    x = torch.tensor([[[3.0, -1.0], [4.0, 0.0]]])  # one row, parts (re, im), D = 2
    assert float(regularization("l2", [x], [True])) == pytest.approx(9 + 1 + 16)
    assert float(regularization("n3", [x], [True])) == pytest.approx(5.0**3 + 1.0**3)
    assert float(regularization("n3", [x], [False])) == pytest.approx(27 + 1 + 64)


@pytest.mark.parametrize(("kind", "alpha"), [("self_adversarial", 0.7), ("self_adversarial", 1.0), ("softplus", 0.0)])
@pytest.mark.parametrize(("ml", "dlw"), [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("scale", [3.0, 60.0])
@pytest.mark.parametrize("strided", [False, True])
def test_fused_objective_equals_the_autograd_reference(kind, alpha, ml, dlw, scale, strided):
    """The default objective's closed-form gradient (_FusedMEDLoss) is autograd's, to rounding."""
    dims = [2, 5, 8, 16]
    med = MedConfig(mutual_learning=ml, dynamic_weights=dlw, w3=0.8)
    fused = MEDObjective(dims, LossConfig(kind=kind, alpha=alpha), med).double()
    reference = MEDObjective(dims, LossConfig(kind=kind, alpha=alpha), med, fused=False).double()
    assert fused.fusable and not reference.fusable
    scores = random_scores(B=7, K=5, n=len(dims), seed=3, scale=scale)
    if strided:  # scores laid out [1 + K, B, n] in memory
        scores = scores.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    loss, logs = fused(scores)
    expected, expected_logs = reference(scores)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert logs.keys() == expected_logs.keys()
    for key in logs:
        assert float(logs[key]) == pytest.approx(float(expected_logs[key]), rel=1e-12, abs=1e-15)
    grad = torch.autograd.grad(2.5 * loss, scores)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(2.5 * expected, scores)[0], rtol=1e-9, atol=1e-15)


READINGS = [
    {"positives": p, "negatives": n}
    for p, n in [
        ("paper-literal", "paper-literal"),
        ("power", "raw"),
        ("error", "raw"),
        ("error", "own"),
        ("uniform", "raw"),
        ("power", "paper-literal"),
    ]
]


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: f"{r['positives']}+{r['negatives']}")
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_every_ei_reading_equals_its_formula(reading, temperature):
    """Loss and weights of each EI reading equal a triple-by-triple computation; ess_pos is 1 / sum u^2."""
    dims = [2, 5, 8]
    scores = random_scores(B=6, K=4, n=len(dims), seed=1)
    med = MedConfig(
        evolutionary=True,
        ei_positives=reading["positives"],
        ei_negatives=reading["negatives"],
        pos_temperature=temperature,
        w1=0.75,
        w2=1.5,
        w3=0.5,
    )
    for fused in (False, True):
        objective = MEDObjective(dims, LossConfig(alpha=0.7), med, fused=fused).double()
        loss, logs = objective(scores)
        expected = loop_med(scores.detach(), dims, 0.7, 0.75, 1.5, 0.5, temperature=temperature, **reading)
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-10)
        s = [[[float(scores.detach()[b, k, i]) for k in range(5)] for b in range(6)] for i in range(3)]
        ess = [
            1 / sum(x * x for x in loop_ei_weights(s, i, 0.75, 1.5, alpha=0.7, temperature=temperature, **reading)[0])
            for i in (1, 2)
        ]
        assert float(logs["ess_pos"]) == pytest.approx(sum(ess) / 2 / 6, rel=1e-10)
        assert ("ess_neg" in logs) == (reading["negatives"] != "own")
    own = negative_weights("self_adversarial", scores.detach()[:, 1:], 0.7)
    pos_w, neg_w, _ = evolutionary_weights(scores.detach(), med, torch.tensor(0.75), torch.tensor(1.5), own)
    for i in (1, 2):
        u, v = loop_ei_weights(s, i, 0.75, 1.5, alpha=0.7, temperature=temperature, **reading)
        torch.testing.assert_close(pos_w[:, i], torch.tensor(u, dtype=torch.float64))
        torch.testing.assert_close(neg_w[..., i], torch.tensor(v, dtype=torch.float64))
    torch.testing.assert_close(pos_w[:, 0], torch.full((6,), 1 / 6, dtype=torch.float64))  # no smaller neighbour
    torch.testing.assert_close(neg_w[..., 0], own[..., 0])


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: f"{r['positives']}+{r['negatives']}")
def test_ei_gradients_flow_only_into_the_weighted_sub_model(reading):
    """EI's weights are constants: without ML, sub-model i's gradient is that of its own base loss with
    the weights as fixed numbers (sub-model i-1 gets none from EI(i)); with ML the fused gradient is the
    reference path's autograd gradient."""
    dims = [2, 4, 8]
    scores = random_scores(B=7, K=5, n=3, seed=4)
    s = [[[float(scores.detach()[b, k, j]) for k in range(6)] for b in range(7)] for j in range(3)]
    for ml in (False, True):
        med = MedConfig(
            evolutionary=True, mutual_learning=ml, ei_positives=reading["positives"], ei_negatives=reading["negatives"]
        )
        fused = MEDObjective(dims, LossConfig(alpha=0.5), med).double()
        reference = MEDObjective(dims, LossConfig(alpha=0.5), med, fused=False).double()
        grad = torch.autograd.grad(fused(scores)[0], scores)[0]
        torch.testing.assert_close(grad, torch.autograd.grad(reference(scores)[0], scores)[0], rtol=1e-9, atol=1e-15)
        if ml:
            continue
        for i in range(3):
            part = scores.detach()[..., i].clone().requires_grad_()
            if i == 0:  # uniform positives, its own self-adversarial negatives
                u = torch.full((7,), 1 / 7, dtype=torch.float64)
                v = torch.softmax(0.5 * part[:, 1:].detach(), dim=1)
            else:
                u, v = loop_ei_weights(s, i, 1.0, 1.0, alpha=0.5, **reading)
                u, v = torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)
            hard = -(u * F.logsigmoid(part[:, 0])).sum() - (v * F.logsigmoid(-part[:, 1:])).sum(1).mean()
            expected = torch.autograd.grad(math.exp(dims[i] / dims[-1]) * hard, part)[0]
            torch.testing.assert_close(grad[..., i], expected, rtol=1e-9, atol=1e-15)


def test_ei_positive_readings_keep_the_batch_where_the_paper_collapses():
    """One positive scored low (q = 0.05): 1/q gives it the whole batch's weight, -log q (weights ~ 1/q)
    about 17x the others', 1 - q (bounded) at most e times; a temperature spreads -log q's weights."""
    s_prev = torch.tensor([[-3.0]] + [[2.0]] * 63)

    def ess(reading: str, temperature: float = 1.0) -> float:
        return float(evolutionary_positive_weights(s_prev, torch.tensor(1.0), temperature, reading)[1]) / 64

    assert ess("paper-literal") < 1.01 / 64  # one triple
    assert ess("uniform") == pytest.approx(1.0)
    assert 0.2 < ess("power") < 0.3 < ess("power", 4.0)
    assert ess("error") > 0.95
    u, _ = evolutionary_positive_weights(torch.linspace(-50, 50, 64).unsqueeze(1), torch.tensor(2.0), 1.0, "error")
    assert float(u.max() / u.min()) <= math.exp(2.0) + 1e-9


def test_objectives_outside_the_fused_case_use_the_reference_path():
    assert not MEDObjective([2, 4], LossConfig(kind="margin"), MedConfig()).fusable
    assert MEDObjective([2, 4], LossConfig(), MedConfig(evolutionary=True)).fusable
    assert not MEDObjective([2, 4], LossConfig(), MedConfig(weights="learn")).fusable


# ---- the reference recipe's levers (issue 33) -------------------------------------------------------


def loop_weighted_base(s: list[list[float]], alpha: float, w: list[float]) -> float:
    """L_base with RotatE's subsampling: each positive and its negatives weighted by w_b / sum(w)."""
    total = sum(w)
    out = 0.0
    for row, wb in zip(s, w, strict=True):
        p = softmax([alpha * x for x in row[1:]])
        out -= wb / total * (log_sigmoid(row[0]) + sum(pk * log_sigmoid(-x) for pk, x in zip(p, row[1:], strict=True)))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_subsampling_weights_each_positive_with_its_negatives_as_rotate_does(fused):
    dims = [2, 5, 8]
    scores = random_scores(B=6, K=4, n=len(dims), seed=7)
    g = torch.Generator().manual_seed(1)
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    weights = w * (6 / w.sum())  # Batch.weights: mean 1 over the batch

    class Batch:
        pass

    batch = Batch()
    batch.weights = weights
    med = MedConfig(mutual_learning=False, dynamic_weights=False)
    objective = MEDObjective(dims, LossConfig(alpha=0.5), med, fused=fused).double()
    loss, _ = objective(scores, batch)
    s = [[[float(scores[b, k, i].detach()) for k in range(5)] for b in range(6)] for i in range(len(dims))]
    expected = sum(loop_weighted_base(s[i], 0.5, w.tolist()) for i in range(len(dims)))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    from medkge.losses import independent_loss

    independent = independent_loss(scores, LossConfig(alpha=0.5), weights).detach()
    assert float(independent) == pytest.approx(expected, rel=1e-12)
    # the fused gradient is autograd's with weights too
    reference = MEDObjective(dims, LossConfig(alpha=0.5), med, fused=False).double()
    grads = [torch.autograd.grad(o(scores, batch)[0], scores)[0] for o in (objective, reference)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-15)


def test_the_subsampling_weights_are_rotates_and_follow_the_rows_of_the_scores():
    from medkge.sampling import NegativeSampler

    train = torch.tensor([[0, 0, 1], [0, 0, 2], [0, 0, 3], [4, 1, 0], [2, 1, 0], [3, 0, 1]])
    sampler = NegativeSampler(train, 5, 2, negatives=3, subsampling=True)
    raw = sampler.weights(train).double()
    # count(h, r) and count(t, r^-1) start at 4 (3 + occurrences): (0, 0) occurs 3 times, (1, 0^-1) twice, ...
    counts = [(3 + 3) + (3 + 2), (3 + 3) + (3 + 1), (3 + 3) + (3 + 1), (3 + 1) + (3 + 2), (3 + 1) + (3 + 2)]
    counts.append((3 + 1) + (3 + 2))
    expected = torch.tensor([c**-0.5 for c in counts], dtype=torch.float64)
    torch.testing.assert_close(raw, expected * (6 / expected.sum()), rtol=1e-6, atol=0)
    batch = sampler.batch(train, step=0)
    corrupt_head = sampler.sides(train, 0)
    torch.testing.assert_close(batch.weights, torch.cat([raw[~corrupt_head], raw[corrupt_head]]).float())
    assert NegativeSampler(train, 5, 2, negatives=3).batch(train, step=0).weights is None


@pytest.mark.parametrize("method", ["med", "dt"])
def test_a_run_with_subsampling_trains_with_the_weights(tmp_path, method):
    import medkge
    from medkge.sampling import Batch

    seen = []
    original = Batch.to

    def spy(self, device):
        seen.append(self.weights)
        return original(self, device)

    options = {"dataset": "nations", "dims": [4, 8], "epochs": 1, "eval_every": 0, "method": method}
    options |= {"train.threads": 1, "eval.test": False}
    Batch.to = spy
    try:
        plain = medkge.train(**options, out=tmp_path / "plain", progress=False)
        assert seen and all(w is None for w in seen)
        seen.clear()
        weighted = medkge.train(**options, **{"loss.subsampling": True}, out=tmp_path / "weighted", progress=False)
    finally:
        Batch.to = original
    assert seen and all(w is not None and len(w) for w in seen)
    assert not torch.equal(plain.model.entity, weighted.model.entity)


def test_rotates_step_decay_and_the_square_root_margin():
    from medkge.model import CroppableModel
    from medkge.training import schedule

    assert [schedule("step", s, 10) for s in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]
    assert schedule("linear", 5, 10) == 0.5 and schedule("constant", 9, 10) == 1.0
    model = CroppableModel("rotate", 3, 2, [4, 16, 64], gamma=8.0, gamma_scaling="sqrt")
    torch.testing.assert_close(model.margins(), torch.tensor([2.0, 4.0, 8.0]))
    assert float(model.crop(16).margins()) == pytest.approx(4.0)  # a crop keeps its sub-model's margin
