"""Recommendation evaluation: ndcg@k and recall@k of multi-answer queries over a candidate set equal a
brute-force loop that sorts every candidate; the candidate sets and their errors; the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

import medkge
from medkge import Dataset, MedkgeError
from medkge.cli import main
from medkge.recommend import Candidates, evaluate_recommendation, ranking_metrics, restrict

from .conftest import train_tiny
from .reference import reference_scores
from .test_scoring import make_model

USERS, ITEMS, ATTRIBUTES = 8, 14, 4


def user_item_dataset(seed: int = 0) -> Dataset:
    """Users 0-7 interact (relation 0) with items 8-21, several per user and split; items have an
    attribute (relation 1, entities 22-25) in train; users also follow users (relation 2, not ranked)."""
    g = torch.Generator().manual_seed(seed)
    items = torch.arange(USERS, USERS + ITEMS)
    interactions = []
    for u in range(USERS):
        chosen = items[torch.randperm(ITEMS, generator=g)[:9]]
        interactions += [(u, 0, int(i)) for i in chosen]
    interactions = torch.tensor(interactions)[torch.randperm(USERS * 9, generator=g)]
    attribute = torch.randint(USERS + ITEMS, USERS + ITEMS + ATTRIBUTES, (ITEMS,), generator=g)
    attributes = torch.stack([items, torch.ones_like(items), attribute], 1)
    follows = torch.tensor([(u, 2, (u + 1) % USERS) for u in range(USERS)])
    train, valid, test = interactions[:36], interactions[36:48], interactions[48:]
    test = torch.cat([test, follows[:3]])  # test triples that are not interactions
    labels = [f"user{i}" for i in range(USERS)] + [f"item{i}" for i in range(ITEMS)]
    labels += [f"colour{i}" for i in range(ATTRIBUTES)]
    return Dataset(
        "user-item",
        labels,
        ["interact", "has_colour", "follows"],
        torch.cat([train, attributes, follows[3:]]),
        valid,
        test,
    )


def brute_force(model, dataset, split, candidates, ks, recall):
    """Per dim: ndcg@k, recall@k by sorting every candidate of every (head, relation) query."""
    triples = torch.unique(dataset.split(split), dim=0)
    triples = triples[torch.isin(triples[:, 1], torch.tensor(candidates.relations))]
    others = [s for s in ("train", "valid", "test") if s != split]
    seen = {tuple(x) for s in others for x in dataset.split(s).tolist()}
    queries = sorted({(h, r) for h, r, _ in triples.tolist()})
    out = {}
    for d in model.dims:
        values = {f"{m}@{k}": 0.0 for m in ("ndcg", "recall") for k in ks}
        for h, r in queries:
            relevant = {t for hh, rr, t in triples.tolist() if (hh, rr) == (h, r)}
            listed = [e for e in candidates.entities.tolist() if e in relevant or (h, r, e) not in seen]
            batch = torch.tensor([(h, r, e) for e in listed])
            scores = reference_scores(model, batch, d).tolist()
            ranking = [e for _, e in sorted(zip(scores, listed, strict=True), reverse=True)]
            for k in ks:
                dcg = sum(1 / math.log2(p + 2) for p, e in enumerate(ranking[:k]) if e in relevant)
                idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(relevant))))
                found = sum(e in relevant for e in ranking[:k])
                values[f"ndcg@{k}"] += dcg / idcg / len(queries)
                norm = len(relevant) if recall == "relevant" else min(k, len(relevant))
                values[f"recall@{k}"] += found / norm / len(queries)
        out[d] = values | {"lists": len(queries)}
    return out


@pytest.mark.parametrize("name", ["rotate", "distmult", "pairre"])
@pytest.mark.parametrize("recall", ["relevant", "min"])
def test_ndcg_and_recall_match_a_brute_force_loop(name, recall):
    dataset = user_item_dataset()
    model = make_model(name, num_entities=dataset.num_entities, num_relations=dataset.num_relations)
    candidates = Candidates.tails_of(dataset, ["interact"])
    ks = (1, 3, 5, 20)  # 20: more than the candidates left after filtering for some users
    for split in ("test", "valid"):
        metrics = evaluate_recommendation(
            model, dataset, split, candidates=candidates, ks=ks, recall=recall, progress=False, memory_budget=3000
        )
        expected = brute_force(model, dataset, split, candidates, ks, recall)
        for d in model.dims:
            for key, value in expected[d].items():
                assert metrics[d][key] == pytest.approx(value, abs=1e-12), (split, d, key)


def test_a_hand_computed_list():
    # one query, relevant answers at places 1 and 3 of its list; a second query with its one answer at 6
    triples = torch.tensor([[0, 0, 5], [0, 0, 6], [1, 0, 7]])
    ranks = torch.tensor([[1.0], [2.0], [6.0]])  # filtered: the other relevant answer is not counted
    scores = torch.tensor([[3.0], [1.0], [0.0]])  # answer 5 above answer 6: 6 is third in its list
    values = ranking_metrics(triples, ranks, scores, ks=(2, 5), recall="relevant")
    ndcg5 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert values["ndcg@5"].item() == pytest.approx((ndcg5 + 0) / 2)
    assert values["ndcg@2"].item() == pytest.approx((1 / (1 + 1 / math.log2(3)) + 0) / 2)
    assert values["recall@5"].item() == pytest.approx((1.0 + 0) / 2)
    assert values["recall@2"].item() == pytest.approx((0.5 + 0) / 2)
    minimum = ranking_metrics(triples, ranks, scores, ks=(1,), recall="min")
    assert minimum["recall@1"].item() == pytest.approx((1.0 + 0) / 2)  # 1 hit of min(1, 2) answers


def test_candidate_ranks_equal_a_brute_force_rank_among_the_candidates():
    dataset = user_item_dataset(seed=1)
    model = make_model("transe", num_entities=dataset.num_entities, num_relations=dataset.num_relations)
    candidates = Candidates.tails_of(dataset, ["interact"])
    metrics = evaluate_recommendation(model, dataset, candidates=candidates, ks=(5,), progress=False)
    subset = restrict(dataset, "test", candidates)
    known = {tuple(x) for x in dataset.known_triples().tolist()}
    for i, d in enumerate(model.dims):
        expected = []
        for h, r, t in subset.test.tolist():
            others = [e for e in candidates.entities.tolist() if e != t and (h, r, e) not in known]
            scores = reference_scores(model, torch.tensor([(h, r, e) for e in [t, *others]]), d)
            expected.append(1 + (scores[1:] > scores[0]).sum().item())
        torch.testing.assert_close(metrics.ranks["tail"][:, i], torch.tensor(expected, dtype=torch.float64))
        assert metrics[d]["mrr"] == pytest.approx(sum(1 / x for x in expected) / len(expected))
    assert set(metrics.ranks) == {"tail"}  # a user is not an item: heads are not ranked among items


def test_candidate_sets_and_their_errors(tmp_path):
    dataset = user_item_dataset()
    items = Candidates.tails_of(dataset, ["interact"])
    assert items.relations == (0,) and set(items.entities.tolist()) <= set(range(USERS, USERS + ITEMS))
    listed = tmp_path / "items.txt"
    listed.write_text("# the items\n" + "\n".join(dataset.entities[i] for i in items.entities.tolist()) + "\n\n")
    from_file = Candidates.parse(str(listed), dataset, ["interact"])
    assert torch.equal(from_file.entities, items.entities) and from_file.relations == (0,)
    assert Candidates.parse("tails:interact", dataset).relations == (0,)
    # a file without relations ranks every test triple: the "follows" triples have users as tails
    with pytest.raises(MedkgeError, match=r"3 test triples have a tail that is not a candidate, e\.g\. \(user"):
        restrict(dataset, "test", Candidates.parse(str(listed), dataset))
    listed.write_text("item1\nitme2\n")
    with pytest.raises(MedkgeError, match=r"items\.txt:2: unknown entity 'itme2'; closest: 'item2'"):
        Candidates.from_file(listed, dataset)
    with pytest.raises(MedkgeError, match="unknown relation 'interacts'; closest: 'interact'"):
        Candidates.parse("tails:interacts", dataset)
    with pytest.raises(MedkgeError, match="no such file"):
        Candidates.parse(str(tmp_path / "missing.txt"), dataset)
    with pytest.raises(MedkgeError, match="k must be positive"):
        evaluate_recommendation(make_model("rotate", num_entities=26, num_relations=3), dataset, ks=(0, 5))
    with pytest.raises(MedkgeError, match="candidates must be a non-empty set of entity ids"):
        medkge.evaluate(make_model("rotate", num_entities=26, num_relations=3), dataset, candidates=torch.tensor([99]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A MED and a DT run on Nations (tiny)."""
    base = tmp_path_factory.mktemp("recommend")
    med = train_tiny(base / "med", dims=[4, 8], epochs=1, eval_every=0)
    dt = train_tiny(base / "dt", method="dt", dims=[4, 8], epochs=1, eval_every=0)
    return med, dt


def test_runs_of_every_method_are_evaluated_per_dim(runs):
    med, dt = runs
    for run in (med, dt):
        candidates = Candidates.tails_of(run.dataset(), ["ngo"])
        metrics = evaluate_recommendation(run, candidates=candidates, dims=[4, 8], progress=False)
        assert metrics.dims == [4, 8]
        for d in (4, 8):
            assert 0 < metrics[d]["ndcg@5"] <= 1 and 0 < metrics[d]["recall@20"] <= 1
            assert metrics[d]["queries"] == len(restrict(run.dataset(), "test", candidates).test)
        # every entity as a candidate: the tails ranked as the plain evaluation ranks them
        everything = run.evaluate("test", [4, 8], candidates=torch.arange(14), progress=False)
        plain = run.evaluate("test", [4, 8], progress=False)
        assert set(everything.ranks) == {"tail"} and torch.equal(everything.ranks["tail"], plain.ranks["tail"])


def test_the_command_line(runs, capsys):
    med, _ = runs
    code = main(["evaluate", str(med.path), "--candidates", "tails:ngo", "--ks", "5,10", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert set(data["dims"]) == {"4", "8"}
    assert {"ndcg@5", "ndcg@10", "recall@5", "recall@10", "mrr", "lists"} <= set(data["dims"]["4"])
    assert data["candidates"]["relations"] == ["ngo"] and data["recall"] == "relevant"
    code = main(["evaluate", str(med.path), "--recommend", "--recall-norm", "min", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ndcg@5" in out and "recall@20" in out and "hits / min(k, relevant)" in out
    code = main(["evaluate", str(med.path), "--candidates", "tails:ngoo", "--quiet"])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("medkge: error: unknown relation 'ngoo'; closest: 'ngo'")
    code = main(["evaluate", str(med.path), "--relation", "ngo", "--quiet"])
    _, err = capsys.readouterr()
    assert code == 2 and "--relation needs --candidates" in err


@pytest.mark.parametrize("ties", ["realistic", "optimistic", "pessimistic"])
def test_tied_scores_follow_the_tie_rule(ties):
    # Integer embeddings make exact ties. By definition, an answer's place is 1 + the other candidates
    # above it + (0, 1/2 or 1) * those tied with it + the query's relevant answers above it or tied with it
    # and of a smaller id (so that tied relevant answers hold distinct places).
    dataset = user_item_dataset(seed=2)
    model = make_model("distmult", dims=(2, 4), num_entities=dataset.num_entities, num_relations=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.entity.copy_(torch.randint(-1, 2, model.entity.shape, generator=g).double())
        model.relation.copy_(torch.randint(-1, 2, model.relation.shape, generator=g).double())
    candidates = Candidates.tails_of(dataset, ["interact"])
    metrics = evaluate_recommendation(model, dataset, candidates=candidates, ks=(3, 5), ties=ties, progress=False)
    weight = {"realistic": 0.5, "optimistic": 0.0, "pessimistic": 1.0}[ties]
    triples = restrict(dataset, "test", candidates).test.tolist()
    seen = {tuple(x) for s in ("train", "valid") for x in dataset.split(s).tolist()}
    queries = sorted({(h, r) for h, r, _ in triples})
    for d in model.dims:
        ndcg = recall = 0.0
        for h, r in queries:
            relevant = [t for hh, rr, t in triples if (hh, rr) == (h, r)]
            others = [e for e in candidates.entities.tolist() if e not in relevant and (h, r, e) not in seen]
            batch = torch.tensor([(h, r, e) for e in relevant + others])
            score = dict(zip(relevant + others, reference_scores(model, batch, d).tolist(), strict=True))
            places = []
            for t in relevant:
                above = sum(score[e] > score[t] for e in others) + weight * sum(score[e] == score[t] for e in others)
                ahead = sum(score[u] > score[t] or (score[u] == score[t] and u < t) for u in relevant)
                places.append(1 + above + ahead)
            ideal = sum(1 / math.log2(p + 2) for p in range(min(5, len(relevant))))
            ndcg += sum(1 / math.log2(p + 1) for p in places if p <= 5) / ideal / len(queries)
            recall += sum(p <= 3 for p in places) / len(relevant) / len(queries)
        assert metrics[d]["ndcg@5"] == pytest.approx(ndcg, abs=1e-12)
        assert metrics[d]["recall@3"] == pytest.approx(recall, abs=1e-12)
        assert 0 <= metrics[d]["ndcg@5"] <= 1 and 0 <= metrics[d]["ndcg@3"] <= 1
