"""Deploying: a cropped model is sub-model d, loads alone, predicts like a brute-force ranking, and
damaged or foreign model files are refused with one clear line, never executed."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import medkge
from medkge import LabelledModel, MedkgeError
from medkge.cli import main
from medkge.deploy import Table
from medkge.files import check_model_file

from .conftest import random_dataset, train_tiny
from .reference import reference_scores
from .test_scoring import CONFIGS, all_triples, make_model

TRAINED = (4, 8, 16)


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "run"
    train_tiny(out, model="rotate", dims=list(TRAINED))
    return out


@pytest.fixture(scope="module")
def run(run_path) -> medkge.Run:
    return medkge.Run.open(run_path)


def labelled(model: medkge.CroppableModel, dataset=None) -> LabelledModel:
    """A model with labels "e0", "e1", ... and "r0", ... (those of conftest's random datasets)."""
    entities = [f"e{i}" for i in range(model.num_entities)]
    relations = [f"r{i}" for i in range(model.num_relations)]
    return LabelledModel(model, entities, relations, dataset=dataset)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- cropping -----------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [*TRAINED, 1, 6, 13])
def test_a_cropped_model_folder_scores_like_the_runs_sub_model(run_path, run, tmp_path, d):
    model = medkge.load(run_path)
    folder = model.crop(d).save(tmp_path / "crop")
    files = ["README.md", "entities.tsv", "model.json", "model.safetensors", "relations.tsv"]
    assert sorted(p.name for p in folder.iterdir()) == files
    loaded = medkge.load(folder)
    info = json.loads((folder / "model.json").read_text())
    assert loaded.dims == [d] and info["dim"] == d and info["model"] == "rotate"
    assert info["trained_sub_model"] == (d in TRAINED) == loaded.is_trained(d)
    assert info["source"]["run"] == run_path.name and info["source"]["dims"] == list(TRAINED)
    assert info["source"]["data_sha256"] == run.dataset().fingerprint()
    hrt = torch.cat([run.dataset().test, run.dataset().valid])
    scores = torch.tensor(loaded.score_triples(hrt).column("score"))
    expected = run.model.score_hrt(hrt, dim=d) if d in TRAINED else reference_scores(run.model, hrt, d)
    torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "p"), CONFIGS)
def test_every_model_type_survives_crop_save_and_load(tmp_path, name, p):
    model = make_model(name, p)  # float64, sqrt margins, dims (3, 5, 8, 12)
    hrt = all_triples(model)
    source = labelled(model)
    for d in (5, 7):
        loaded = medkge.load(source.crop(d).save(tmp_path / f"d{d}"))
        scores = loaded.model_for().score_hrt(hrt)[:, 0]
        torch.testing.assert_close(scores, reference_scores(model, hrt, d), rtol=1e-12, atol=1e-12)
        if d in model.dims:
            torch.testing.assert_close(scores, model.score_hrt(hrt, dim=d), rtol=1e-12, atol=1e-12)
    # a cropped model can be cropped again: still sub-model d, margin included
    again = medkge.load(tmp_path / "d7").crop(3).model_for()
    torch.testing.assert_close(again.score_hrt(hrt)[:, 0], model.score_hrt(hrt, dim=3), rtol=1e-12, atol=1e-12)


def test_crop_accepts_any_dim_up_to_the_widest_only(run_path):
    model = medkge.load(run_path)
    assert model.crop(1).dims == [1] and model.crop(16).dims == [16]
    for bad in (0, 17, -3):
        with pytest.raises(MedkgeError, match="between 1 and 16"):
            model.crop(bad)
    with pytest.raises(MedkgeError, match="positive integer"):
        model.crop(2.5)


def test_a_dt_run_offers_only_its_trained_dims(tmp_path):
    out = tmp_path / "dt"
    train_tiny(out, model="transe", method="dt", dims=[4, 8], epochs=1)
    run = medkge.Run.open(out)
    model = medkge.load(out)
    assert model.dims == [4, 8] and not model.croppable
    hrt = run.dataset().test
    for d in (4, 8):
        scores = torch.tensor(model.crop(d).score_triples(hrt).column("score"))
        torch.testing.assert_close(scores, run.model_for(d).score_hrt(hrt)[:, 0])
    with pytest.raises(MedkgeError, match=r"dt run has no 6-d model: it trained only dims \[4, 8\]"):
        model.crop(6)
    assert model.select(max_drop=0.99).dim == 4
    # a saved DT model crops like its own model (margin included), not like the widest one
    small = medkge.load(model.crop(4).save(tmp_path / "dt4")).crop(3).model_for()
    torch.testing.assert_close(small.score_hrt(hrt)[:, 0], run.model_for(4).crop(3).score_hrt(hrt)[:, 0])


def test_a_cropped_model_loads_in_a_fresh_process_without_the_run(run_path, run, tmp_path):
    copy = shutil.copytree(run_path, tmp_path / "run")
    medkge.load(copy).crop(8).save(tmp_path / "deployed")
    shutil.rmtree(copy)  # neither the run folder nor its checkpoint remain
    script = textwrap.dedent(
        """
        import json, sys
        import medkge
        model = medkge.load(sys.argv[1])
        top = model.predict_tails("brazil", "embassy", k=5)
        triples = model.score_triples([("usa", "embassy", "uk"), ("china", "treaties", "ussr")])
        print(json.dumps({"top": top.to_records(), "scores": triples.column("score")}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "deployed")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    data = json.loads(result.stdout)
    dataset = run.dataset()
    e, r = dataset.entity_ids, dataset.relation_ids
    hrt = torch.tensor([[e["usa"], r["embassy"], e["uk"]], [e["china"], r["treaties"], e["ussr"]]])
    torch.testing.assert_close(torch.tensor(data["scores"]), run.model.score_hrt(hrt, dim=8), rtol=1e-5, atol=1e-5)
    tails = run.model.score_t(torch.tensor([e["brazil"]]), torch.tensor([r["embassy"]]), dim=8)[0]
    assert [row["id"] for row in data["top"]] == tails.argsort(descending=True)[:5].tolist()


# ---- prediction ---------------------------------------------------------------------------------
def brute_force(model: LabelledModel, side: str, anchor: int, r: int, d: int, skip=()) -> list[tuple[int, float]]:
    """Every candidate scored one triple at a time from the reference formulas, best first."""
    full = model.models[-1]
    candidates = [e for e in range(len(model.entities)) if e not in skip]
    hrt = torch.tensor([(anchor, r, e) if side == "tail" else (e, r, anchor) for e in candidates])
    scores = reference_scores(full, hrt, d).tolist()
    return sorted(zip(candidates, scores, strict=True), key=lambda pair: -pair[1])


@pytest.mark.parametrize(("name", "p"), CONFIGS)
@pytest.mark.parametrize("d", [3, 7, 12])
def test_predicted_top_k_equals_a_brute_force_ranking(name, p, d):
    model = labelled(make_model(name, p, num_entities=20))
    for anchor, r in [(0, 1), (7, 3), (19, 0)]:
        for side in ("tail", "head"):
            if side == "tail":
                table = model.predict_tails(f"e{anchor}", f"r{r}", k=6, dim=d)
            else:
                table = model.predict_heads(r, anchor, k=6, dim=d)  # by id
            expected = brute_force(model, side, anchor, r, d)[:6]
            assert table.column("id") == [e for e, _ in expected]
            assert table.column(side) == [f"e{e}" for e, _ in expected]
            assert table.column("rank") == list(range(1, 7))
            torch.testing.assert_close(torch.tensor(table.column("score")), torch.tensor([s for _, s in expected]))


def test_exclude_known_drops_exactly_the_known_answers():
    dataset = random_dataset(num_entities=15, num_relations=3, sizes=(80, 20, 20))
    model = labelled(make_model("rotate", num_entities=15, num_relations=3), dataset=dataset)
    known = {tuple(t) for t in dataset.known_triples().tolist()}
    for h, r, t in dataset.test[:5].tolist():
        skip = {e for e in range(15) if (h, r, e) in known}
        table = model.predict_tails(h, r, k=15, dim=8, exclude_known=True)
        assert table.column("id") == [e for e, _ in brute_force(model, "tail", h, r, 8, skip)]
        skip = {e for e in range(15) if (e, r, t) in known}
        table = model.predict_heads(r, t, k=3, dim=8, exclude_known=True)
        assert table.column("id") == [e for e, _ in brute_force(model, "head", t, r, 8, skip)][:3]


def test_exclude_known_uses_the_run_or_the_recorded_dataset_or_asks_for_one(run_path, tmp_path):
    assert len(medkge.load(run_path).predict_tails("brazil", "embassy", k=3, exclude_known=True)) == 3
    # a crop of the run records its dataset (a bundled name), so it works without the run
    medkge.load(run_path).crop(4).save(tmp_path / "crop")
    assert len(medkge.load(tmp_path / "crop").predict_tails("brazil", "embassy", exclude_known=True)) > 0
    # a model from nowhere needs one
    labelled(make_model("transe", num_entities=12, num_relations=3)).save(tmp_path / "bare")
    bare = medkge.load(tmp_path / "bare")
    with pytest.raises(MedkgeError, match=r"needs the dataset.*--dataset"):
        bare.predict_tails("e0", "r0", exclude_known=True)
    with pytest.raises(MedkgeError, match="does not match the model's vocabularies"):
        medkge.load(tmp_path / "bare", dataset="nations")
    given = medkge.load(tmp_path / "bare", dataset=random_dataset())
    assert len(given.predict_tails("e0", "r0", k=12, exclude_known=True)) <= 12


def test_labels_and_ids_resolve_and_unknown_labels_name_the_closest(run_path):
    model = medkge.load(run_path)
    by_label = model.predict_tails("brazil", "embassy", k=4)
    by_id = model.predict_tails(model.entity_id("brazil"), model.relation_id("embassy"), k=4)
    assert by_label.to_records() == by_id.to_records()
    with pytest.raises(MedkgeError, match=r"unknown entity 'brazl'; closest: 'brazil'"):
        model.predict_tails("brazl", "embassy")
    with pytest.raises(MedkgeError, match=r"unknown relation 'embasy'; closest: 'embassy'"):
        model.predict_heads("embasy", "brazil")
    with pytest.raises(MedkgeError, match="no entity label is close"):
        model.score_triples([("zzzzzzzz", "embassy", "usa")])
    with pytest.raises(MedkgeError, match=r"entity id 14 out of range \(0 to 13\)"):
        model.predict_tails(14, 0)
    with pytest.raises(MedkgeError, match="k must be a positive integer"):
        model.predict_tails("brazil", "embassy", k=0)
    with pytest.raises(MedkgeError, match="a triple is"):
        model.score_triples([("brazil", "embassy")])


def test_results_are_records_with_an_optional_dataframe(run_path, monkeypatch):
    table = medkge.load(run_path).predict_tails("brazil", "embassy", k=3, dim=4)
    assert isinstance(table, Table) and len(table) == 3 and table.columns == ["rank", "tail", "id", "score"]
    assert table[0]["rank"] == 1
    assert table.meta == {"query": ("brazil", "embassy", "?"), "dim": 4, "exclude_known": False}
    assert table.to_text().splitlines()[0].split() == ["rank", "tail", "id", "score"]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pandas", None)  # not installed: a hint, not a traceback
        with pytest.raises(MedkgeError, match="to_pandas needs pandas: pip install pandas"):
            table.to_pandas()
    pd = pytest.importorskip("pandas")
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == table.columns


# ---- choosing a size ----------------------------------------------------------------------------
def test_select_returns_the_smallest_dim_meeting_the_target(run_path, run):
    model = medkge.load(run_path)
    mrr = {d: m["mrr"] for d, m in run.metrics("valid").items()}
    for d in TRAINED:
        chosen = model.select(min_mrr=mrr[d])
        assert chosen.dim == min(x for x in TRAINED if mrr[x] >= mrr[d]) and chosen.mrr == mrr[chosen.dim]
    chosen = model.select(max_drop=0.5)
    assert chosen.target == pytest.approx(0.5 * mrr[16])
    assert chosen.dim == min(x for x in TRAINED if mrr[x] >= 0.5 * mrr[16])
    assert model.select(max_drop=0.0).dim == min(x for x in TRAINED if mrr[x] >= mrr[16])
    # any dims, evaluated now in one pass
    evaluated = model.select(min_mrr=0.0, dims=[2, 6])
    assert evaluated.dim == 2 and sorted(evaluated.mrr_by_dim) == [2, 6]
    with pytest.raises(MedkgeError, match=r"no sub-model reaches valid MRR 1\.0000"):
        model.select(min_mrr=1.0)
    with pytest.raises(MedkgeError, match="exactly one target"):
        model.select(min_mrr=0.1, max_drop=0.1)
    for not_a_run in (model.crop(4), labelled(make_model("transe"))):
        with pytest.raises(MedkgeError, match="needs a run folder"):
            not_a_run.select(min_mrr=0.1)


# ---- damaged and foreign files ------------------------------------------------------------------
def _cropped(tmp_path: Path) -> Path:
    return labelled(make_model("rotate")).crop(5).save(tmp_path / "model")


def _rewrite_header(path: Path, change) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


def _huge_spec(header: dict) -> None:
    meta = json.loads(header["__metadata__"]["medkge"])
    meta["spec"]["num_entities"] = 10**12  # must be refused before anything that size is allocated
    header["__metadata__"]["medkge"] = json.dumps(meta)


def _other_shape(header: dict) -> None:
    header["entity"]["shape"] = [9, 2, 4]


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "four bytes": lambda p: p.write_bytes(p.read_bytes()[:4]),
    "header cut": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "tables cut": lambda p: p.write_bytes(p.read_bytes()[:-16]),
    "header not json": lambda p: p.write_bytes(p.read_bytes()[:8] + b"\xff" * 20 + p.read_bytes()[28:]),
    "spec claims 1e12 entities": lambda p: _rewrite_header(p, _huge_spec),
    "shape differs from spec": lambda p: _rewrite_header(p, _other_shape),
    "no medkge header": lambda p: _rewrite_header(p, lambda h: h.pop("__metadata__")),
    "text file": lambda p: p.write_text("model = 'rotate'\n" * 10),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_model_files_give_a_clear_error(tmp_path, damage):
    folder = _cropped(tmp_path)
    DAMAGE[damage](folder / "model.safetensors")
    info = json.loads((folder / "model.json").read_text())
    info.pop("sha256")  # the file itself must be refused, checksum or not
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(MedkgeError, match=r"model.safetensors: not a valid medkge model file \(") as error:
        medkge.load(folder)
    assert "\n" not in str(error.value)


def test_a_changed_table_value_is_caught_by_the_checksum(tmp_path):
    folder = _cropped(tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0x40  # one float of the relation table, the header intact
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(MedkgeError, match=r"does not match the checksum in model\.json"):
        medkge.load(folder)


def test_damaged_model_files_in_a_run_folder_give_a_clear_error(run_path, tmp_path):
    copy = shutil.copytree(run_path, tmp_path / "run")
    DAMAGE["tables cut"](copy / "model.safetensors")
    with pytest.raises(MedkgeError, match="not a valid medkge model file"):
        medkge.load(copy)


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_posing_as_a_model_file_is_refused_without_being_unpickled(tmp_path, writer):
    folder = _cropped(tmp_path)
    marker = tmp_path / "executed"
    payload = {"entity": _Payload(marker), "relation": torch.zeros(3)}
    if writer == "pickle":
        (folder / "model.safetensors").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, folder / "model.safetensors")
    with pytest.raises(MedkgeError, match="not a valid medkge model file"):
        medkge.load(folder)
    with pytest.raises(MedkgeError, match="not a valid medkge model file"):
        check_model_file(folder / "model.safetensors")
    assert not marker.exists()


def test_model_json_must_describe_the_model_file(tmp_path):
    folder = _cropped(tmp_path)
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(info | {"dim": 6}))
    with pytest.raises(MedkgeError, match=r"does not describe model\.safetensors"):
        medkge.load(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(MedkgeError, match="not valid JSON"):
        medkge.load(folder)
    (folder / "model.json").write_text(json.dumps(info))
    (folder / "entities.tsv").write_text("0\te0\n")
    with pytest.raises(MedkgeError, match=r"entities\.tsv: does not match the checksum in model\.json"):
        medkge.load(folder)
    # a folder written before the vocabularies had checksums: their size is still checked
    (folder / "model.json").write_text(json.dumps({k: v for k, v in info.items() if k != "vocabulary_sha256"}))
    with pytest.raises(MedkgeError, match="the vocabularies 1 and 4"):
        medkge.load(folder)
    with pytest.raises(MedkgeError, match="not a medkge run folder nor a cropped model folder"):
        medkge.load(tmp_path)


# ---- command line -------------------------------------------------------------------------------
def test_crop_predict_select_commands(run_path, run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "crop", run_path, "--dim", 8, "--out", tmp_path / "c8")
    assert code == 0 and "wrote the 8-d rotate model" in out and "dim 8 is a trained sub-model" in out
    code, out, _ = run_cli(capsys, "crop", run_path, "--dim", 6, "--out", tmp_path / "c6")
    assert code == 0 and "dim 6 is not a trained sub-model" in out and "the 8-d sub-model" in out
    code, _, err = run_cli(capsys, "crop", run_path, "--dim", 6, "--out", tmp_path / "c6")
    assert code == 2 and "is not empty" in err
    code, out, _ = run_cli(capsys, "crop", run_path, "--dim", 6, "--out", tmp_path / "c6", "--force", "--json")
    assert code == 0 and json.loads(out)["trained_sub_model"] is False

    code, out, _ = run_cli(capsys, "predict", tmp_path / "c8", "--head", "brazil", "--relation", "embassy", "--json")
    data = json.loads(out)
    expected = medkge.load(run_path).predict_tails("brazil", "embassy", k=10, dim=8)
    assert code == 0 and data["dim"] == 8 and data["query"] == {"head": "brazil", "relation": "embassy", "tail": "?"}
    assert [r["tail"] for r in data["results"]] == expected.column("tail")
    code, out, _ = run_cli(
        capsys, "predict", run_path, "--tail", "usa", "--relation", "embassy", "--top-k", 3, "--exclude-known"
    )
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("heads of (?, embassy, usa) by the 16-d rotate model, known")
    assert len(lines) == 1 + 1 + 3
    code, out, _ = run_cli(capsys, "predict", run_path, "--ids", "--head", 0, "--relation", 0, "--top-k", 2)
    assert code == 0 and "tails of (brazil, " in out

    mrr = run.metrics("valid")
    code, out, _ = run_cli(capsys, "select", run_path, "--min-mrr", mrr[8]["mrr"], "--crop", tmp_path / "sel")
    chosen = min(d for d in TRAINED if mrr[d]["mrr"] >= mrr[8]["mrr"])
    assert code == 0 and f"smallest sub-model meeting the target: dim {chosen} " in out
    assert medkge.load(tmp_path / "sel").dims == [chosen]
    code, out, _ = run_cli(capsys, "select", run_path, "--max-drop", 0.01, "--json")
    assert code == 0 and json.loads(out)["rule"] == "max-drop 0.01 relative to dim 16"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "RUN", "--head", "brazl", "--relation", "embassy"], "unknown entity 'brazl'; closest: 'brazil'"),
        (["predict", "RUN", "--relation", "embassy"], "give --head H to predict tails, or --tail T"),
        (["predict", "RUN", "--head", "brazil", "--relation", "embassy", "--dim", 99], "between 1 and 16"),
        (["predict", "RUN", "--ids", "--head", "x", "--relation", 0], "--ids: --head must be an id"),
        (["predict", "BARE", "--head", "e0", "--relation", "r0", "--exclude-known"], "needs the dataset"),
        (["crop", "RUN", "--dim", 0, "--out", "OUT"], "between 1 and 16"),
        (["crop", "nowhere", "--dim", 4, "--out", "OUT"], "nowhere: no such folder"),
        (["select", "RUN", "--min-mrr", 1.0], "no sub-model reaches valid MRR"),
        (["select", "BARE", "--max-drop", 0.1], "needs a run folder"),
    ],
)
def test_deploy_commands_report_user_errors_in_one_line(run_path, tmp_path, capsys, monkeypatch, args, message):
    bare = labelled(make_model("transe", num_entities=12, num_relations=3)).save(tmp_path / "bare")
    names = {"RUN": str(run_path), "BARE": str(bare), "OUT": str(tmp_path / "out")}
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *[names.get(str(a), a) for a in args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("medkge: error: ") and message in lines[0]
