"""Filtered ranking of every sub-model matches a brute-force loop over candidates."""

from __future__ import annotations

import pytest
import torch

from medkge import CroppableModel, MedkgeError, evaluate

from .conftest import random_dataset
from .reference import brute_force_ranks, reference_scores
from .test_scoring import CONFIGS, make_model


def brute_force(model, dataset, split, ties="realistic", dims=None):
    known = {tuple(x) for x in dataset.known_triples().tolist()}
    triples = dataset.split(split)
    out = {}
    for d in dims or model.dims:
        fn = lambda batch, d=d: reference_scores(model, batch, d)  # noqa: E731
        out[d] = {
            side: brute_force_ranks(fn, triples, known, dataset.num_entities, side, ties) for side in dataset.directions
        }
    return out


@pytest.mark.parametrize(("name", "p"), CONFIGS)
def test_filtered_ranks_match_brute_force(name, p):
    dataset = random_dataset(num_entities=12, num_relations=4)
    model = make_model(name, p, num_entities=12, num_relations=4)
    metrics = evaluate(model, dataset, "test", progress=False, memory_budget=2000)  # many small blocks
    expected = brute_force(model, dataset, "test")
    for i, d in enumerate(model.dims):
        for side in ("head", "tail"):
            torch.testing.assert_close(metrics.ranks[side][:, i], expected[d][side])


@pytest.mark.parametrize("ties", ["realistic", "optimistic", "pessimistic"])
def test_ties_are_counted_as_asked(ties):
    # integer embeddings make exact ties (every product and sum is exact in float64)
    dataset = random_dataset(num_entities=10, num_relations=3, sizes=(40, 20, 20), seed=3)
    model = make_model("distmult", dims=(2, 4), num_entities=10, num_relations=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.entity.copy_(torch.randint(-1, 2, model.entity.shape, generator=g).double())
        model.relation.copy_(torch.randint(-1, 2, model.relation.shape, generator=g).double())
    metrics = evaluate(model, dataset, "valid", ties=ties, progress=False)
    expected = brute_force(model, dataset, "valid", ties=ties)
    equal_scores = 0
    for i, d in enumerate(model.dims):
        for side in ("head", "tail"):
            torch.testing.assert_close(metrics.ranks[side][:, i], expected[d][side])
            equal_scores += int((expected[d][side] % 1 != 0).sum()) if ties == "realistic" else 0
    if ties == "realistic":
        assert equal_scores > 0, "the test should contain ties"


def test_filter_removes_other_known_answers_but_raw_does_not():
    dataset = random_dataset(num_entities=12, num_relations=2, sizes=(80, 10, 10), seed=5)
    model = make_model("transe", dims=(4, 8), num_entities=12, num_relations=2)
    filtered = evaluate(model, dataset, "test", progress=False)
    raw = evaluate(model, dataset, "test", filtered=False, progress=False)
    for side in ("head", "tail"):
        assert (raw.ranks[side] >= filtered.ranks[side]).all()
    assert any((raw.ranks[s] > filtered.ranks[s]).any() for s in ("head", "tail"))


def test_metrics_are_computed_from_the_ranks():
    dataset = random_dataset()
    model = make_model("rotate", num_entities=12, num_relations=3)
    metrics = evaluate(model, dataset, "test", progress=False)
    ranks = torch.cat([metrics.ranks["head"], metrics.ranks["tail"]])
    for i, d in enumerate(model.dims):
        r = ranks[:, i]
        assert metrics[d]["mrr"] == pytest.approx((1 / r).mean().item())
        assert metrics[d]["mr"] == pytest.approx(r.mean().item())
        assert metrics[d]["hits@10"] == pytest.approx((r <= 10).double().mean().item())
        assert metrics[d]["tail.mrr"] == pytest.approx((1 / metrics.ranks["tail"][:, i]).mean().item())
        assert metrics[d]["queries"] == 2 * len(dataset.test)


def test_any_prefix_can_be_evaluated_and_equals_the_cropped_model():
    dataset = random_dataset()
    model = make_model("complex", dims=(4, 8, 12), num_entities=12, num_relations=3)
    metrics = evaluate(model, dataset, "test", dims=[5, 12], progress=False)
    cropped = evaluate(model.crop(5), dataset, "test", progress=False)
    assert metrics[5]["mrr"] == pytest.approx(cropped[5]["mrr"])
    with pytest.raises(MedkgeError):
        evaluate(model, dataset, "test", dims=[13], progress=False)


def test_candidate_restriction_ranks_among_candidates_only():
    dataset = random_dataset(num_entities=12, num_relations=3)
    candidates = torch.unique(torch.cat([dataset.test[:, 2], torch.tensor([0, 1])]))
    dataset.tail_candidates = candidates
    dataset.directions = ("tail",)
    model = make_model("distmult", num_entities=12, num_relations=3)
    metrics = evaluate(model, dataset, "test", progress=False)
    assert set(metrics.ranks) == {"tail"}
    assert (metrics.ranks["tail"] <= len(candidates)).all()
    known = {tuple(x) for x in dataset.known_triples().tolist()}
    for i, (h, r, t) in enumerate(dataset.test.tolist()):
        scores = reference_scores(model, torch.tensor([[h, r, c] for c in candidates.tolist()]), model.dims[-1])
        s_true = reference_scores(model, torch.tensor([[h, r, t]]), model.dims[-1])[0]
        others = [s for c, s in zip(candidates.tolist(), scores.tolist(), strict=True) if (h, r, c) not in known]
        expected = 1 + sum(s > s_true for s in others) + 0.5 * sum(s == s_true for s in others)
        assert metrics.ranks["tail"][i, -1].item() == pytest.approx(expected)


def test_model_and_dataset_must_match():
    dataset = random_dataset()
    with pytest.raises(MedkgeError, match="entities"):
        evaluate(CroppableModel("transe", 5, 3, [4]), dataset, progress=False)


def test_nan_scores_rank_last():
    dataset = random_dataset()
    model = make_model("distmult", num_entities=12, num_relations=3)
    with torch.no_grad():
        model.entity[dataset.test[0, 2]] = float("nan")
    with pytest.warns(UserWarning, match="NaN"):
        metrics = evaluate(model, dataset, "test", progress=False)
    assert metrics.ranks["tail"][0, 0] > 1
