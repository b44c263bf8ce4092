"""Large graphs: row-wise optimisers, shared negatives, the sampled protocol, memory known before it is spent."""

from __future__ import annotations

import json
import math

import pytest
import torch

import medkge
from medkge import CroppableModel, MedkgeError
from medkge.cli import main
from medkge.evaluation import evaluate
from medkge.model import Group
from medkge.optim import LazyAdam, RowAdagrad, choose

from .conftest import random_dataset, train_tiny

MODELS = [("transe", 1), ("transe", 2), ("distmult", 1), ("complex", 1), ("rotate", 1), ("simple", 1), ("pairre", 1)]


# ---- row-wise optimisers -------------------------------------------------------------------------


def test_lazy_adam_touching_every_row_is_dense_adam():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
    dense = torch.nn.Parameter(start.clone())
    reference = torch.optim.Adam([dense], lr=0.01, foreach=False)
    table = start.clone()
    lazy = LazyAdam(table)
    for _ in range(4):
        grad = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
        dense.grad = grad.clone()
        reference.step()
        lazy.step(torch.arange(6), grad, 0.01)
    torch.testing.assert_close(table, dense.detach(), rtol=1e-12, atol=1e-14)


def test_lazy_adam_updates_the_touched_rows_by_the_formula_and_leaves_the_rest_alone():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(8, 1, 3, generator=g, dtype=torch.float64)
    lazy = LazyAdam(table)
    m, v, expected = torch.zeros_like(table), torch.zeros_like(table), table.clone()
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.05
    for step, touched in enumerate(([0, 3, 5], [3, 6], [0, 6, 7]), start=1):
        rows = torch.tensor(touched)
        grad = torch.randn(len(rows), 1, 3, generator=g, dtype=torch.float64)
        untouched = [i for i in range(8) if i not in touched]
        before = table[untouched].clone(), lazy.exp_avg[untouched].clone(), lazy.exp_avg_sq[untouched].clone()
        lazy.step(rows, grad, lr)
        for j, i in enumerate(touched):  # the dense Adam update of this row's gradient, bias-corrected by step
            m[i] = b1 * m[i] + (1 - b1) * grad[j]
            v[i] = b2 * v[i] + (1 - b2) * grad[j] ** 2
            expected[i] -= lr / (1 - b1**step) * m[i] / (v[i].sqrt() / math.sqrt(1 - b2**step) + eps)
        torch.testing.assert_close(table, expected, rtol=1e-12, atol=1e-14)
        assert torch.equal(table[untouched], before[0])
        assert torch.equal(lazy.exp_avg[untouched], before[1]) and torch.equal(lazy.exp_avg_sq[untouched], before[2])


@pytest.mark.parametrize("dims", [None, [1, 3, 4]])
def test_row_adagrad_equals_its_formula(dims):
    g = torch.Generator().manual_seed(2)
    table = torch.randn(5, 2, 4, generator=g)
    blocks = [(0, 4)] if dims is None else [(0, 1), (1, 3), (3, 4)]  # a croppable model's sub-model blocks
    expected, state = table.clone().double(), torch.zeros(5, len(blocks), dtype=torch.float64)
    adagrad = RowAdagrad(table, dims)
    for touched in ([1, 2], [2, 4], [0, 2]):
        rows = torch.tensor(touched)
        grad = torch.randn(len(rows), 2, 4, generator=g)
        untouched = [i for i in range(5) if i not in touched]
        before, before_state = table[untouched].clone(), adagrad.state_sum[untouched].clone()
        adagrad.step(rows, grad, 0.1)
        for j, i in enumerate(touched):  # state[row, b] += mean(g_b^2); g_b -= lr g_b / (sqrt(state[row, b]) + eps)
            for b, (lo, hi) in enumerate(blocks):
                state[i, b] += grad[j, :, lo:hi].double().square().mean()
                expected[i, :, lo:hi] -= 0.1 * grad[j, :, lo:hi].double() / (state[i, b].sqrt() + 1e-8)
        torch.testing.assert_close(table.double(), expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(adagrad.state_sum.double(), state, rtol=1e-6, atol=0)
        assert torch.equal(table[untouched], before) and torch.equal(adagrad.state_sum[untouched], before_state)


def test_auto_keeps_dense_adam_on_small_graphs():
    assert choose("auto", 40_943, 1024 * 66, adam_fits=True) == "adam"
    assert choose("auto", 2_000_000, 1024 * 66, adam_fits=True) == "sparse_adam"
    assert choose("auto", 2_000_000, 1024 * 66, adam_fits=False) == "row_adagrad"
    assert choose("row_adagrad", 10, 100, adam_fits=True) == "row_adagrad"


def test_an_unset_learning_rate_is_the_optimisers_own_and_auto_says_when_it_leaves_adam(tmp_path, capsys):
    from medkge import memory
    from medkge.cli import main
    from medkge.optim import DEFAULT_LR

    made = random_dataset(3000, 3, (600, 20, 20))
    folder = tmp_path / "graph"
    folder.mkdir()
    for name in ("train", "valid", "test"):
        lines = "".join(f"e{h}\tr{r}\te{t}\n" for h, r, t in made.split(name).tolist())
        (folder / f"{name}.txt").write_text(lines)
    ds = medkge.load_dataset(folder)
    cfg = medkge.Config().with_overrides({"model.dims": [8], "train.batch_size": 8, "train.negatives": 4})
    assert memory.plan(cfg, ds, torch.device("cpu")).optimizer == "sparse_adam"  # ~2,900 rows, 48 touched a step
    tight = sum(memory.estimate(cfg, ds, "row_adagrad").values()) + 1
    cfg = cfg.with_overrides({"train.memory_budget": tight})
    assert memory.plan(cfg, ds, torch.device("cpu")).optimizer == "row_adagrad"  # Adam's moments do not fit
    args = ["train", "--dataset", str(folder), "--dims", "8", "--epochs", "1", "--batch-size", "8", "--negatives", "4"]
    args += ["--set", f"train.memory_budget={tight}", "--set", "eval.every=0", "--set", "eval.test=false"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    err = capsys.readouterr().err
    assert f"optimizer row_adagrad (train.optimizer auto), learning rate {DEFAULT_LR['row_adagrad']:g}" in err
    results = medkge.Run.open(tmp_path / "default").results()
    assert results["optimizer"] == "row_adagrad" and results["lr"] == DEFAULT_LR["row_adagrad"]
    assert main([*args, "--lr", "0.005", "--out", str(tmp_path / "given")]) == 0  # a rate set for Adam: said
    assert (
        "medkge: warning: train.optimizer auto chose row_adagrad (Adam's moments would make" in capsys.readouterr().err
    )
    for optimizer in ("adam", "sparse_adam"):  # a named optimiser is never replaced
        named = cfg.with_overrides({"train.optimizer": optimizer, "train.memory_budget": None})
        assert memory.plan(named, ds, torch.device("cpu")).optimizer == optimizer


def test_row_adagrads_default_rate_falls_with_how_often_a_step_touches_a_row(tmp_path):
    from medkge.optim import default_lr, rows_per_step

    rows = rows_per_step(1024, 64)
    assert default_lr("adam", 104, rows) == default_lr("adam", 10**6, rows) == 0.01  # Adam's does not depend on it
    assert default_lr("row_adagrad", 40_943, rows) == 0.1  # WN18RR: 1.65 rows per entity, PyTorch-BigGraph's 0.1
    assert default_lr("row_adagrad", 2_000_000, rows) == 0.1
    assert default_lr("row_adagrad", 135, rows) == 0.03  # UMLS: 500 touches a step
    assert default_lr("row_adagrad", 104, rows) == 0.028  # Kinships: 650
    rates = [default_lr("row_adagrad", n, rows) for n in (14, 104, 1000, 10_000, 16_896, 40_943)]
    assert rates == sorted(rates) and rates[0] < rates[-1]
    # one process resolves it in the pre-flight, a Trainer built directly the same way; the run records it
    run = train_tiny(tmp_path / "run", dims=[4, 8], epochs=1, eval_every=0, **{"train.optimizer": "row_adagrad"})
    cfg = run.config.train
    expected = default_lr("row_adagrad", 14, rows_per_step(cfg.batch_size, cfg.negatives, cfg.shared_negatives))
    assert expected < 0.1 and run.results()["lr"] == cfg.lr == expected


def test_sparse_adam_trains_the_model_dense_adam_trains_when_every_step_touches_every_row(tmp_path):
    """Nations has 14 entities: each batch reads all of them, so lazy and dense Adam make the same updates."""
    options = {"dims": [4, 8], "epochs": 2, "eval_every": 0, "train.threads": 1}
    dense = train_tiny(tmp_path / "dense", **options, **{"train.optimizer": "adam"})
    sparse = train_tiny(tmp_path / "sparse", **options, **{"train.optimizer": "sparse_adam"})
    assert sparse.results()["optimizer"] == "sparse_adam" and dense.results()["optimizer"] == "adam"
    torch.testing.assert_close(sparse.model.entity, dense.model.entity, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sparse.model.relation, dense.model.relation, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sparse_adam", "row_adagrad"])
@pytest.mark.parametrize("shared", [0, 16])
def test_row_optimisers_and_shared_negatives_learn(tmp_path, optimizer, shared):
    lr = 0.1 if optimizer == "row_adagrad" else 0.01
    run = medkge.train(
        dataset="kinships",
        dims=[8, 32],
        epochs=8,
        lr=lr,
        batch_size=512,
        negatives=16,
        eval_every=0,
        out=tmp_path / "run",
        progress=False,
        **{"train.optimizer": optimizer, "train.shared_negatives": shared, "train.threads": 1},
    )
    mrr = run.metrics("test")[32]["mrr"]
    assert mrr > 5 / 104  # random ranking among 104 entities gives about 0.05
    assert run.config.train.optimizer == optimizer


# ---- shared negatives ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "p"), MODELS)
def test_shared_negatives_score_as_each_triple_scored_alone(name, p):
    g = torch.Generator().manual_seed(3)
    model = CroppableModel(name, 20, 4, [2, 6, 8], p=p, gamma=3.0, generator=g).double()
    anchor, relation, true = (torch.randint(20 if i != 1 else 4, (7,), generator=g) for i in range(3))
    shared = torch.randint(20, (3, 5), generator=g)  # chunks of 3 anchors: 3 + 3 + 1 (padded)
    weights = torch.randn(7, 6, 3, generator=g, dtype=torch.float64)
    for side in ("tail", "head"):
        model.zero_grad()
        fast = model.score_groups([Group(side, anchor, relation, true.unsqueeze(1), shared, chunk=3)])
        (fast * weights).sum().backward()
        grads = model.entity.grad.clone(), model.relation.grad.clone()
        own = torch.cat([true.unsqueeze(1), shared[torch.arange(7) // 3]], dim=1)  # [7, 1 + 5]
        model.zero_grad()
        slow = model.score_groups([Group(side, anchor, relation, own)])
        (slow * weights).sum().backward()
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grads[0], model.entity.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grads[1], model.relation.grad, rtol=1e-10, atol=1e-12)


def test_shared_negatives_are_drawn_per_chunk_and_side():
    from medkge.sampling import NegativeSampler

    ds = random_dataset(30, 3, (100, 10, 10))
    sampler = NegativeSampler(ds.train, 30, 3, negatives=7)
    positives = ds.train[:50].long()
    heads = int(sampler.sides(positives, step=0).sum())
    batch = sampler.batch(positives, step=0, chunk=8)
    shapes = {g.side: tuple(g.shared.shape) for g in batch.groups}
    assert shapes == {"tail": (math.ceil((50 - heads) / 8), 7), "head": (math.ceil(heads / 8), 7)}
    # a process training positions 20..49 shares the chunks that began before it (offset into the first)
    part = sampler.batch(positives, step=0, lo=20, hi=50, chunk=8)
    for g in part.groups:
        whole = next(w for w in batch.groups if w.side == g.side)
        first = whole.shared.shape[0] - g.shared.shape[0]
        assert torch.equal(g.shared, whole.shared[first:]) and 0 <= g.offset < 8
    with pytest.raises(MedkgeError, match="cannot filter shared negatives"):
        medkge.Config().with_overrides({"train.shared_negatives": 8, "train.filter_negatives": True})


# ---- the sampled protocol -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "p"), [("transe", 1), ("rotate", 1), ("distmult", 1), ("pairre", 1)])
@pytest.mark.parametrize("ties", ["realistic", "optimistic", "pessimistic"])
def test_sampled_evaluation_equals_a_brute_force_loop_over_the_same_candidates(name, p, ties):
    from medkge.evaluation import SampledCandidates, unique_triples

    ds = random_dataset(15, 3, (80, 20, 20), seed=4)
    model = CroppableModel(name, 15, 3, [2, 4], p=p, gamma=2.0, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # ties, to check the tie rules: round the tables
        model.entity.copy_((model.entity * 2).round() / 2)
    metrics = evaluate(
        model, ds, "test", ties=ties, protocol="sampled", sampled_candidates=12, sampled_seed=3, progress=False
    )
    known = {tuple(t) for t in unique_triples(ds.known_triples()).tolist()}
    ranks = []
    for side, index in (("head", 0), ("tail", 1)):
        draw = SampledCandidates(15, 12, 3 * 2 + index)
        cands = draw.for_queries(0, len(ds.test))
        for i, (h, r, t) in enumerate(ds.test.tolist()):
            true = model.score_hrt(torch.tensor([[h, r, t]]))[0]
            higher, equal = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
            for c in cands[i].tolist():
                triple = (c, r, t) if side == "head" else (h, r, c)
                if triple in known:
                    continue
                s = model.score_hrt(torch.tensor([triple]))[0]
                higher += (s > true).double()
                equal += (s == true).double()
            offset = {"realistic": equal / 2, "optimistic": 0, "pessimistic": equal}[ties]
            ranks.append(1 + higher + offset)
    ranks = torch.stack(ranks)
    assert metrics.protocol == "sampled (12 candidates per side, seed 3)"
    for j, d in enumerate([2, 4]):
        assert metrics[d]["mrr"] == pytest.approx(float((1 / ranks[:, j]).mean()), rel=1e-9)
        assert metrics[d]["mr"] == pytest.approx(float(ranks[:, j].mean()), rel=1e-9)


def test_the_sampled_candidates_do_not_depend_on_blocking_and_the_protocol_is_recorded(tmp_path, capsys):
    from medkge.evaluation import SampledCandidates

    draw = SampledCandidates(1000, 7, 1)
    whole = draw.for_queries(0, 600)
    assert torch.equal(torch.cat([draw.for_queries(0, 250), draw.for_queries(250, 600)]), whole)
    run = train_tiny(tmp_path / "run", dims=[4], epochs=1, **{"eval.protocol": "sampled", "eval.sampled_candidates": 5})
    assert run.metrics("valid").protocol == run.metrics("test").protocol == "sampled (5 candidates per side, seed 0)"
    assert main(["evaluate", str(run.path), "--protocol", "sampled", "--sampled-candidates", "3", "--quiet"]) == 0
    assert "sampled (3 candidates per side, seed 0)" in capsys.readouterr().out
    assert main(["evaluate", str(run.path), "--protocol", "full", "--quiet"]) == 0
    assert "(filtered, realistic ranks) of" in capsys.readouterr().out
    assert main(["info", str(run.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_protocol"] == "sampled (5 candidates per side, seed 0)"


def test_validations_can_use_the_sampled_protocol_while_the_test_stays_full(tmp_path):
    options = {"eval.valid_protocol": "sampled", "eval.sampled_candidates": 6, "eval.test": True}
    run = train_tiny(tmp_path / "run", dims=[2, 4], epochs=2, **options)
    assert run.metrics("valid").protocol == "sampled (6 candidates per side, seed 0)"
    assert run.metrics("test").protocol == "full"
    # the recorded validation is the kept model's, under the sampled protocol; the test is the full ranking
    kept = run.model
    sampled = evaluate(kept, run.dataset(), "valid", protocol="sampled", sampled_candidates=6, progress=False)
    assert sampled.to_dict() == run.metrics("valid").to_dict()
    assert evaluate(kept, run.dataset(), "test", progress=False).to_dict() == run.metrics("test").to_dict()
    with pytest.raises(MedkgeError, match="valid_protocol"):
        medkge.Config().with_overrides({"eval.valid_protocol": "half"})


@pytest.mark.parametrize(("size", "count"), [(50, 30), (10_000, 400)])  # a large share of the pool, a small one
def test_the_sampled_candidates_of_a_query_are_distinct(size, count):
    from medkge.evaluation import SampledCandidates

    ids = SampledCandidates(size, count, 2).for_queries(0, 600)
    assert ids.shape == (600, count) and ids.min() >= 0 and ids.max() < size
    assert all(len(set(row)) == count for row in ids.tolist())  # drawn with replacement, rows repeated ids
    assert len(torch.unique(ids)) > size / 2  # spread over the pool
    pool = torch.arange(100, 100 + size)  # candidate ids: the draws index them
    assert torch.equal(SampledCandidates(pool, count, 2).for_queries(0, 600), pool[ids])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_sampled_rank_is_never_above_the_full_rank_so_sampled_mrr_is_never_below(tmp_path, seed):
    run = train_tiny(tmp_path / "run", dims=[4, 8], epochs=2, seed=seed, **{"eval.test": False})
    dataset = run.dataset()
    for ties in ("realistic", "pessimistic"):
        full = evaluate(run.model, dataset, "test", ties=ties, progress=False)
        for count in (3, 7, 13):  # of Nations' 14 entities
            for sampled_seed in range(3):
                options = {"sampled_candidates": count, "sampled_seed": sampled_seed, "ties": ties}
                sampled = evaluate(run.model, dataset, "test", protocol="sampled", progress=False, **options)
                assert sampled.protocol.startswith("sampled")
                for side in full.ranks:
                    assert (sampled.ranks[side] <= full.ranks[side]).all()
                for d in full.dims:
                    assert sampled[d]["mrr"] >= full[d]["mrr"]


def test_sampled_candidates_that_would_cover_the_graph_rank_against_all_of_it_and_say_so(tmp_path, capsys):
    from medkge.errors import MedkgeWarning

    run = train_tiny(tmp_path / "run", dims=[4], epochs=1, **{"eval.test": False})
    full = evaluate(run.model, run.dataset(), "test", progress=False)
    with pytest.warns(MedkgeWarning, match="1,000 candidates per side would cover all 14 candidates: test ranked"):
        covered = evaluate(run.model, run.dataset(), "test", protocol="sampled", progress=False)
    assert covered.protocol == "full (the 1,000 sampled candidates per side would cover all 14 candidates)"
    assert covered[4] == full[4]  # before: MRR 0.16 against 0.37, MR 254 with 14 entities
    assert main(["evaluate", str(run.path), "--protocol", "sampled", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "would cover all 14 candidates" in out and "medkge: warning: the sampled protocol's 1,000" in err
    # Countries ranks tails among its 5 regions: 5 sampled candidates cover them, 3 do not
    countries = medkge.load_dataset("countries_s1")
    model = CroppableModel("transe", countries.num_entities, countries.num_relations, [4])
    full = evaluate(model, countries, "test", progress=False)
    with pytest.warns(MedkgeWarning, match="cover all 5 candidates"):
        assert evaluate(model, countries, "test", protocol="sampled", sampled_candidates=5, progress=False) == full
    sampled = evaluate(model, countries, "test", protocol="sampled", sampled_candidates=3, progress=False)
    assert (sampled.ranks["tail"] <= full.ranks["tail"]).all() and sampled.protocol.startswith("sampled")


# ---- memory -------------------------------------------------------------------------------------


def test_an_impossible_run_is_refused_at_once_naming_what_to_change(tmp_path, capsys):
    code = main(["train", "--dataset", "wn18rr", "--dims", "8,65536", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("medkge: error: this run needs about ")
    assert "lower the widest dim" in err and not (tmp_path / "run").exists()
    code = main(
        ["train", "--dataset", "wn18rr", "--set", "train.memory_budget=1000000000", "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "of 954 MiB (train.memory_budget)" in err and "share negatives" in err


def test_the_estimate_grows_with_what_it_counts():
    from medkge.memory import estimate

    ds = medkge.load_dataset("wn18rr")
    cfg = medkge.Config().with_overrides({"dataset": "wn18rr", "model.dims": "10:640:10"})
    dense, lazy, rows = (estimate(cfg, ds, o) for o in ("adam", "sparse_adam", "row_adagrad"))
    table = 40943 * 2 * 640 * 4
    assert dense["entity table"] == table
    assert dense["optimizer state"] > lazy["optimizer state"] > rows["optimizer state"]
    shared = estimate(cfg.with_overrides({"train.shared_negatives": 64}), ds, "row_adagrad")
    assert shared["step buffers"] < rows["step buffers"]


def test_flushing_denormals_reaches_the_worker_threads():
    from medkge import runtime

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # other tests may have set one thread
    try:
        assert runtime.flush_denormals()
        tiny = torch.full((1 << 22,), 1e-39)  # subnormal in float32; parallel work splits it across threads
        assert int((tiny * 1.0).count_nonzero()) == 0
    finally:
        torch.set_num_threads(threads)


# ---- validation on a subset of the triples ---------------------------------------------------------------


def test_a_subset_ranks_the_same_triples_each_call_as_the_whole_split_ranks_them(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", dims=[4, 8], epochs=1, **{"eval.test": False})
    dataset, model = run.dataset(), run.model
    whole = evaluate(model, dataset, "test", progress=False)
    total = len(dataset.test)
    part = evaluate(model, dataset, "test", subset=50, sampled_seed=3, progress=False)
    again = evaluate(model, dataset, "test", subset=50, sampled_seed=3, progress=False)
    assert part.to_dict() == again.to_dict()
    assert part.protocol == f"full, 50 of {total:,} triples (seed 3)" and part[4]["queries"] == 100
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(3))[:50].sort().values
    for side in whole.ranks:  # each chosen triple keeps the rank it has among all of them
        assert torch.equal(part.ranks[side], whole.ranks[side][chosen])
    other = evaluate(model, dataset, "test", subset=50, sampled_seed=4, progress=False)
    assert not all(torch.equal(other.ranks[s], part.ranks[s]) for s in whole.ranks)
    assert evaluate(model, dataset, "test", subset=total, progress=False).to_dict() == whole.to_dict()
    sampled = evaluate(model, dataset, "test", subset=50, protocol="sampled", sampled_candidates=5, progress=False)
    assert sampled.protocol == f"sampled (5 candidates per side, seed 0), 50 of {total:,} triples (seed 0)"
    with pytest.raises(MedkgeError, match="subset must be at least 1"):
        evaluate(model, dataset, "test", subset=0, progress=False)
    assert main(["evaluate", str(run.path), "--subset", "40", "--quiet"]) == 0
    assert f"full, 40 of {total:,} triples (seed 0)" in capsys.readouterr().out
    assert main(["evaluate", str(run.path), "--subset", "0", "--quiet"]) == 2
    assert "--subset must be a positive number" in capsys.readouterr().err
    for extra, message in ((["--funnel", "4:5"], "--funnel ranks every triple"), (["--recommend"], "not --subset")):
        assert main(["evaluate", str(run.path), "--subset", "40", "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err


def test_validations_can_rank_a_subset_while_the_test_ranks_every_triple(tmp_path):
    run = train_tiny(tmp_path / "run", dims=[2, 4], epochs=2, **{"eval.valid_triples": 30, "eval.test": True})
    total = len(run.dataset().valid)
    assert run.metrics("valid").protocol == f"full, 30 of {total:,} triples (seed 0)"
    assert run.metrics("test").protocol == "full"
    kept = run.model
    part = evaluate(kept, run.dataset(), "valid", subset=30, progress=False)
    assert part.to_dict() == run.metrics("valid").to_dict()
    with pytest.raises(MedkgeError, match="valid_triples"):
        medkge.Config().with_overrides({"eval.valid_triples": 0})


def test_every_reader_of_recorded_validation_says_it_was_a_subset(tmp_path, capsys):
    from medkge.curves import valid_protocol

    part = train_tiny(tmp_path / "part", dims=[2, 4], **{"eval.valid_triples": 30})
    whole = train_tiny(tmp_path / "whole", dims=[2, 4], seed=1)
    protocol = f"full, 30 of {len(part.dataset().valid):,} triples (seed 0)"
    assert valid_protocol(part.path) == protocol and valid_protocol(whole.path) == "full"
    # a subset as large as the split is the whole split: logged as the full protocol
    every = train_tiny(tmp_path / "every", dims=[2], epochs=1, **{"eval.valid_triples": 10_000})
    assert valid_protocol(every.path) == every.metrics("valid").protocol == "full"

    capsys.readouterr()
    assert main(["compare", str(part.path), "--split", "valid", "--out", str(tmp_path / "cmp")]) == 0
    assert f"Protocol: {protocol}." in capsys.readouterr().out
    assert (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()[1].endswith(f'"{protocol}"')
    assert main(["compare", str(part.path), str(whole.path), "--split", "valid", "--labels", "a,b"]) == 0
    assert f"not comparable**: a: {protocol}; b: full." in capsys.readouterr().out
    assert main(["compare", str(part.path), str(whole.path), "--split", "valid", "--labels", "a,a"]) == 0
    assert f"not comparable**: a, 2 seeds: {protocol} / full." in capsys.readouterr().out  # the seeds differ
    assert main(["compare", str(part.path), "--split", "test"]) == 0
    assert "Protocol" not in capsys.readouterr().out  # the test ranked every triple
    # a log from before validations logged their protocol: the recorded validation says it
    log = part.path / "metrics.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "protocol"}) + "\n" for r in lines))
    assert valid_protocol(part.path) == protocol

    assert main(["select", str(part.path), "--max-drop", "0.9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"] == protocol
    assert main(["select", str(part.path), "--max-drop", "0.9"]) == 0
    assert capsys.readouterr().out.startswith(f"valid MRR ({protocol}) by dim")
    assert medkge.load(part.path).select(max_drop=0.9, dims=[2, 4]).protocol == "full"  # evaluated now, in full

    assert main(["crop", str(part.path), "--dim", "4", "--out", str(tmp_path / "crop")]) == 0
    assert (
        capsys.readouterr().out.rstrip().endswith(f"validation MRR {part.metrics('valid')[4]['mrr']:.4f} ({protocol})")
    )
    assert main(["crop", str(tmp_path / "crop"), "--dim", "3", "--out", str(tmp_path / "again")]) == 0
    for folder in ("crop", "again"):
        card = (tmp_path / folder / "README.md").read_text()
        assert f"as recorded at the end of training; validation: {protocol}." in card
    assert main(["crop", str(whole.path), "--dim", "4", "--out", str(tmp_path / "full")]) == 0
    assert "as recorded at the end of training.\n" in (tmp_path / "full" / "README.md").read_text()
    # a folder cropped before the protocol was recorded: its crops' cards say it is not known
    info = json.loads((tmp_path / "crop" / "model.json").read_text())
    del info["training"]["protocols"]
    (tmp_path / "crop" / "model.json").write_text(json.dumps(info))
    assert main(["crop", str(tmp_path / "crop"), "--dim", "2", "--out", str(tmp_path / "old")]) == 0
    assert "was not recorded)." in (tmp_path / "old" / "README.md").read_text()


def test_a_sampled_ranking_that_covers_every_candidate_counts_as_the_full_protocol():
    from medkge.evaluation import describe_protocol, is_full

    assert is_full("full") and is_full(describe_protocol("sampled", 1000, 0, covered=104))
    assert not is_full(describe_protocol("sampled", 1000, 0)) and not is_full("full, 30 of 199 triples (seed 0)")
