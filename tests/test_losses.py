"""Every piece of the objective equals a direct, loop-based computation of MED.md's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from medkge.config import LossConfig, MedConfig
from medkge.losses import MEDObjective, base_loss, evolutionary_positive_weights, negative_weights, regularization


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


def loop_med(scores: torch.Tensor, dims, alpha, w1, w2, w3, ml=True, ei=True, dlw=True) -> float:
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
            u = softmax([w1 / sigmoid(s[i - 1][b][0]) for b in range(B)])
            hard = -sum(u[b] * log_sigmoid(s[i][b][0]) for b in range(B))
            neg = 0.0
            for b in range(B):
                v = softmax([w2 * sigmoid(x) for x in s[i - 1][b][1:]])
                neg -= sum(vk * log_sigmoid(-x) for vk, x in zip(v, s[i][b][1:], strict=True))
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


def test_objectives_outside_the_fused_case_use_the_reference_path():
    assert not MEDObjective([2, 4], LossConfig(kind="margin"), MedConfig()).fusable
    assert not MEDObjective([2, 4], LossConfig(), MedConfig(evolutionary=True)).fusable
    assert not MEDObjective([2, 4], LossConfig(), MedConfig(weights="learn")).fusable
