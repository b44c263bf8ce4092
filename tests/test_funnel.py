"""Serving what croppable tables allow: the funnel (shortlist with a prefix, rerank at the full dim) equals exact
ranking when the shortlist holds every entity and its filtered metrics equal a brute-force loop; int8 and float16
crops round-trip within their stated bounds at a quarter (a half) of the bytes and are served; the approximate
index finds the exact neighbours; the model card reports the run's own results."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import medkge
from medkge import LabelledModel
from medkge.cli import main
from medkge.evaluation import evaluate
from medkge.files import load_tensors
from medkge.funnel import evaluate_funnel
from medkge.inference import Funnel, Query, default_funnel, default_k
from medkge.quantize import dequantize_rows, quantize_rows

from .conftest import AppClient, random_dataset, train_tiny
from .reference import reference_scores
from .test_scoring import CONFIGS, make_model

E, R = 40, 4


def labelled(name: str = "rotate", p: int = 1, dataset=None) -> LabelledModel:
    model = make_model(name, p, num_entities=E, num_relations=R)  # float64, dims (3, 5, 8, 12)
    return LabelledModel(model, [f"e{i}" for i in range(E)], [f"r{i}" for i in range(R)], dataset=dataset)


# ---- the funnel ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "p"), CONFIGS)
def test_a_funnel_whose_shortlist_holds_every_entity_ranks_exactly(name, p):
    dataset = random_dataset(num_entities=E, num_relations=R, sizes=(150, 30, 30))
    model = labelled(name, p, dataset)
    queries = [Query(side, a, r, 7, 12, x) for side in ("tail", "head") for a, r, x in [(0, 1, False), (5, 3, True)]]
    exact = model.predict(queries)
    funnelled = model.predict(
        [Query(q.side, q.anchor, q.relation, q.k, q.dim, q.exclude_known, Funnel(3, E)) for q in queries]
    )
    for a, b in zip(exact, funnelled, strict=True):
        assert a.column("id") == b.column("id")
        torch.testing.assert_close(torch.tensor(a.column("score")), torch.tensor(b.column("score")))
    full = evaluate(model.models[0], dataset, "test", dims=[5, 12], progress=False)
    shortlisted = evaluate_funnel(model.models[0], dataset, Funnel(3, E), [5, 12], progress=False)
    for side in ("head", "tail"):
        torch.testing.assert_close(shortlisted.ranks[side], full.ranks[side])


def brute_force_funnel(model, dataset, funnel: Funnel, d: int) -> dict[str, list[float]]:
    """Per direction, the funnel's filtered rank of each test triple's answer, one candidate at a time."""
    known = {tuple(t) for t in dataset.known_triples().tolist()}
    out = {}
    for side in ("head", "tail"):
        ranks = []
        for h, r, t in dataset.test.tolist():
            true = t if side == "tail" else h

            def triple(e, h=h, r=r, t=t, side=side):
                return (h, r, e) if side == "tail" else (e, r, t)

            candidates = [e for e in range(E) if e == true or triple(e) not in known]
            hrt = torch.tensor([triple(e) for e in candidates])
            short = dict(zip(candidates, reference_scores(model, hrt, funnel.dim).tolist(), strict=True))
            listed = sorted(candidates, key=lambda e: -short[e])[: funnel.k]
            if true in listed:
                full = dict(
                    zip(
                        listed,
                        reference_scores(model, torch.tensor([triple(e) for e in listed]), d).tolist(),
                        strict=True,
                    )
                )
                ranks.append(1 + sum(full[e] > full[true] for e in listed))
            else:  # after every shortlisted candidate: its rank by the short prefix
                ranks.append(1 + sum(short[e] > short[true] for e in candidates))
        out[side] = ranks
    return out


@pytest.mark.parametrize(("name", "p"), [("rotate", 1), ("distmult", 1), ("pairre", 1)])
@pytest.mark.parametrize("funnel", [Funnel(3, 5), Funnel(5, 12)])
def test_funnel_metrics_equal_a_brute_force_loop(name, p, funnel):
    dataset = random_dataset(num_entities=E, num_relations=R, sizes=(150, 30, 30))
    model = make_model(name, p, num_entities=E, num_relations=R)
    metrics = evaluate_funnel(model, dataset, funnel, [8, 12], progress=False)
    for i, d in enumerate((8, 12)):
        want = brute_force_funnel(model, dataset, funnel, d)
        for side in ("head", "tail"):
            assert metrics.ranks[side][:, i].tolist() == want[side], (side, d)
        ranks = torch.tensor(want["head"] + want["tail"], dtype=torch.float64)
        assert math.isclose(metrics[d]["mrr"], float((1 / ranks).mean()), rel_tol=1e-12)


def test_a_funneled_prediction_reranks_the_prefix_shortlist():
    dataset = random_dataset(num_entities=E, num_relations=R, sizes=(150, 30, 30))
    model = labelled("rotate", dataset=dataset)
    full = model.models[0]
    for exclude in (False, True):
        table = model.predict_tails("e2", "r1", k=4, dim=12, exclude_known=exclude, funnel="3:9")
        known = {t for h, r, t in dataset.known_triples().tolist() if (h, r) == (2, 1)} if exclude else set()
        candidates = [e for e in range(E) if e not in known]
        short = reference_scores(full, torch.tensor([(2, 1, e) for e in candidates]), 3).tolist()
        listed = [e for _, e in sorted(zip(short, candidates, strict=True), reverse=True)][:9]
        best = reference_scores(full, torch.tensor([(2, 1, e) for e in listed]), 12).tolist()
        assert table.column("id") == [e for _, e in sorted(zip(best, listed, strict=True), reverse=True)][:4]
        assert table.meta["funnel"] == Funnel(3, 9)


def test_evaluate_funnel_on_the_command_line(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", model="rotate", dims=[4, 8], epochs=1, eval_every=0)
    assert main(["evaluate", str(run.path), "--funnel", "4:5", "--dims", "8", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["funnel"]["protocol"].startswith("funnel 4:5") and out["exact"]["dims"]["8"]["queries"] > 0
    assert main(["evaluate", str(run.path), "--funnel", "4:14", "--dims", "8", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)  # 14 = every Nations entity: exact
    assert out["funnel"]["dims"]["8"]["mrr"] == pytest.approx(out["exact"]["dims"]["8"]["mrr"], abs=1e-12)
    assert main(["evaluate", str(run.path), "--funnel", "4-5"]) == 2
    assert "--funnel: expected D:K" in capsys.readouterr().err


# ---- quantised crops ------------------------------------------------------------------------------------------
def test_int8_rows_round_trip_within_half_a_step_of_their_scale():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(500, 2, 64, generator=generator) * torch.rand(500, 1, 1, generator=generator) * 3
    table[7] = 0  # an all-zero row stays zero
    q, scale = quantize_rows(table)
    assert q.dtype == torch.int8 and scale.shape == (500,)
    error = (dequantize_rows(q, scale) - table).abs().amax((1, 2))
    # half a step, plus float32 rounding of x / scale and q * scale at |q| up to 127 (~127 ulp of the scale)
    assert (error <= scale * (0.5 + 127 * 2e-7)).all() and error[7] == 0
    peak = table.reshape(500, -1).abs().amax(1)
    torch.testing.assert_close(scale[peak > 0], peak[peak > 0] / 127)


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_a_quantised_crop_scores_as_its_dequantised_tables_and_is_served(tmp_path, dtype, capsys):
    pytest.importorskip("httpx")
    from medkge.server import create_app

    run = train_tiny(tmp_path / "run", model="rotate", dims=[8, 16], epochs=1, eval_every=0)
    assert main(["crop", str(run.path), "--dim", "16", "--out", str(tmp_path / "f32")]) == 0
    assert main(["crop", str(run.path), "--dim", "16", "--out", str(tmp_path / dtype), "--dtype", dtype]) == 0
    capsys.readouterr()
    small, full = medkge.load(tmp_path / dtype), medkge.load(tmp_path / "f32")
    assert small.dtype == dtype and json.loads((tmp_path / dtype / "model.json").read_text())["dtype"] == dtype
    entity = full.model_for().entity
    if dtype == "int8":
        expected = dequantize_rows(*quantize_rows(entity))
        stored, _ = load_tensors(tmp_path / dtype / "model.safetensors")
        per_entity = (stored["entity"].nbytes + stored["entity_scale"].nbytes) / len(entity)
        assert per_entity == 2 * 16 + 4 == entity[0].nbytes / 4 + 4  # a quarter of float32's, plus the scale
    else:
        expected = entity.half().float()
    torch.testing.assert_close(small.model_for().entity, expected, rtol=0, atol=0)
    with AppClient(create_app(small)) as client:
        answer = client.get("/predict", params={"head": "usa", "relation": "embassy", "k": 3}).json()
    assert answer["results"] == medkge.load(tmp_path / dtype).predict_tails("usa", "embassy", k=3).to_records()
    assert (
        main(["export", str(tmp_path / dtype), "--format", "npy", "--out", str(tmp_path / "npy"), "--dtype", dtype])
        == 0
    )


# ---- the approximate index -------------------------------------------------------------------------------------
def test_the_index_finds_the_exact_neighbours_on_a_small_graph():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(30, 2, 16, generator=g)
    rows = centres[torch.randint(30, (3000,), generator=g)] + 0.4 * torch.randn(3000, 2, 16, generator=g)
    model = medkge.CroppableModel("rotate", 3000, 2, [8, 16])
    with torch.no_grad():
        model.entity.copy_(rows)
    labelled = LabelledModel(model, [f"e{i}" for i in range(3000)], ["r0", "r1"])
    exact = [labelled.similar(e, k=10, dim=16).column("id") for e in range(0, 3000, 30)]
    labelled.inference.build_index(16)
    found = [labelled.similar(e, k=10, dim=16) for e in range(0, 3000, 30)]
    assert all(t.meta["method"] == "hnsw" for t in found)
    recall = sum(len(set(a.column("id")) & set(b)) for a, b in zip(found, exact, strict=True)) / (10 * len(exact))
    assert recall >= 0.95
    assert labelled.similar(5, k=10, dim=8).meta["method"] == "exact"  # no index at dim 8
    assert labelled.similar(5, k=10, dim=16, funnel="8:100").meta["method"] == "funnel 8:100"
    # where no index is built, the server's default funnel (from 1M entities up) answers /similar
    assert default_funnel(999_999, [10, 20]) is None
    assert default_funnel(2_000_000, [10, 20, 40, 80]) == Funnel(40, 10_000)
    assert default_funnel(2_000_000, [10, 20]) == Funnel(20, 10_000)  # no sub-model of 40 dims or more: the widest
    assert default_k(40_943) == 205 and default_k(1000) == 200
    labelled.inference.similar_funnel = Funnel(8, 100)
    assert labelled.similar(5, k=10, dim=12).meta["method"] == "funnel 8:100"
    assert labelled.similar(5, k=10, dim=16).meta["method"] == "hnsw"


# ---- the model card -------------------------------------------------------------------------------------------
def test_the_model_card_reports_the_runs_results(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", model="rotate", dims=[4, 8], epochs=2)
    assert main(["crop", str(run.path), "--dim", "8", "--out", str(tmp_path / "crop")]) == 0
    assert main(["crop", str(tmp_path / "crop"), "--dim", "6", "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    valid, test, results = run.metrics("valid"), run.metrics("test"), run.results()
    for folder in (tmp_path / "crop", tmp_path / "again"):
        card = (folder / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: medkge\n") and "datasets:\n- nations\n" in card
        assert "| dataset | nations |" in card and "| trained dims | 4, 8 |" in card
        for d in (4, 8):
            row = re.search(rf"^\| {d}[^|]*\| (\S+) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", card, re.M)
            assert row, card
            values = [float(x) for x in row.groups()]
            want = [valid[d]["mrr"], valid[d]["hits@10"], test[d]["mrr"], test[d]["hits@1"], test[d]["hits@10"]]
            assert values == [round(x, 4) for x in want]
        assert f"- epochs: {results['epochs']}" in card and f"{results['train_seconds']:.0f} s" in card
        assert "nations: none stated" in card and 'medkge.load(".")' in card
    assert "| 8 (this folder) |" in (tmp_path / "crop" / "README.md").read_text()
    assert "Dim 6 was not trained" in (tmp_path / "again" / "README.md").read_text()
