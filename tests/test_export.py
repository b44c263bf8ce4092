"""Exports: the npy layout computes the documented scores, tsv suits embedding projectors, and the ONNX graph
scores exactly what medkge scores."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

import medkge
from medkge import MedkgeError
from medkge.cli import main
from medkge.export import export
from medkge.files import sha256_file

from .conftest import train_tiny
from .test_deploy import labelled
from .test_scoring import CONFIGS, make_model


def float_model(name: str, p: int = 1, num_entities: int = 30) -> medkge.LabelledModel:
    """A float32 model with dims (3, 5, 8, 12), as deployed models are."""
    return labelled(make_model(name, p, num_entities=num_entities, num_relations=5).float())


def mirror_scores(name: str, p: int, gamma: float, e: np.ndarray, r: np.ndarray, hrt: np.ndarray) -> np.ndarray:
    """MED.md's score formulas written against the documented npy layout (complex parts as two planes)."""
    h, rel, t = e[hrt[:, 0]].astype(np.float64), r[hrt[:, 1]].astype(np.float64), e[hrt[:, 2]].astype(np.float64)
    if name == "transe":
        return gamma - np.linalg.norm(h[:, 0] + rel[:, 0] - t[:, 0], ord=p, axis=-1)
    if name == "distmult":
        return (h[:, 0] * rel[:, 0] * t[:, 0]).sum(-1)
    if name == "complex":
        hc, rc, tc = (x[:, 0] + 1j * x[:, 1] for x in (h, rel, t))
        return (hc * rc * tc.conj()).sum(-1).real
    if name == "rotate":
        hc, tc = h[:, 0] + 1j * h[:, 1], t[:, 0] + 1j * t[:, 1]
        return gamma - np.abs(hc * np.exp(1j * rel[:, 0]) - tc).sum(-1)
    if name == "simple":
        return 0.5 * ((h[:, 0] * rel[:, 0] * t[:, 1]).sum(-1) + (t[:, 0] * rel[:, 1] * h[:, 1]).sum(-1))
    assert name == "pairre"
    return gamma - np.abs(h[:, 0] * rel[:, 0] - t[:, 0] * rel[:, 1]).sum(-1)


@pytest.mark.parametrize(("name", "p"), CONFIGS)
@pytest.mark.parametrize("d", [5, 7])
def test_npy_layout_computes_the_documented_scores(tmp_path, name, p, d):
    model = float_model(name, p)
    folder = export(model, "npy", tmp_path / "npy", dim=d)
    e, r = np.load(folder / "entity.npy"), np.load(folder / "relation.npy")
    parts = {"complex": (2, 2), "rotate": (2, 1), "simple": (2, 2), "pairre": (1, 2)}.get(name, (1, 1))
    assert e.dtype == np.float32 and e.shape == (30, parts[0], d) and r.shape == (5, parts[1], d)
    info = json.loads((folder / "model.json").read_text())
    assert info["layout"]["entity"]["shape"] == list(e.shape) and info["dim"] == d
    assert (folder / "entities.tsv").read_text().splitlines()[3] == "3\te3"
    hrt = torch.cartesian_prod(torch.arange(30), torch.arange(5), torch.arange(0, 30, 7))
    expected = model.model_for(d).score_hrt(hrt)[:, 0].double().numpy()
    np.testing.assert_allclose(mirror_scores(name, p, info["gamma"], e, r, hrt.numpy()), expected, atol=1e-5)


def test_tsv_export_is_what_embedding_projectors_load(tmp_path):
    model = float_model("rotate")
    folder = export(model, "tsv", tmp_path / "tsv", dim=8)
    vectors = np.loadtxt(folder / "entity_vectors.tsv", delimiter="\t", ndmin=2)
    assert vectors.shape == (30, 2 * 8)  # real parts, then imaginary parts
    table = model.model_for(8).entity_table().detach().numpy()
    np.testing.assert_allclose(vectors, table.reshape(30, -1), rtol=1e-6, atol=1e-7)
    assert (folder / "entity_metadata.tsv").read_text().splitlines() == model.entities
    assert np.loadtxt(folder / "relation_vectors.tsv", delimiter="\t", ndmin=2).shape == (5, 8)
    assert (folder / "relation_metadata.tsv").read_text().splitlines() == model.relations


@pytest.mark.parametrize(("name", "p"), CONFIGS)
@pytest.mark.parametrize("d", [8, 11])  # a trained dim and a crop between trained dims
def test_onnx_scores_equal_medkge_scores(tmp_path, name, p, d):
    ort = pytest.importorskip("onnxruntime")
    model = float_model(name, p)
    folder = export(model, "onnx", tmp_path / "onnx", dim=d)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    heads = np.array([0, 4, 29, 4, 17], dtype=np.int64)
    relations = np.array([0, 1, 4, 3, 2], dtype=np.int64)
    (scores,) = session.run(["scores"], {"head": heads, "relation": relations})
    expected = model.model_for(d).score_t(torch.from_numpy(heads), torch.from_numpy(relations))[..., 0]
    assert scores.shape == (5, 30) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-5)
    top = model.predict_tails(4, 1, k=5, dim=d).column("id")
    assert top == np.argsort(-scores[1], kind="stable")[:5].tolist()


def test_onnx_export_of_a_trained_run_matches_predict(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    train_tiny(run, model="pairre", dims=[4, 8])
    code = main(["export", str(run), "--format", "onnx", "--dim", "6", "--out", str(tmp_path / "onnx")])
    out = capsys.readouterr().out
    assert code == 0 and "exported the 6-d pairre model as onnx" in out and "model.onnx" in out
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = medkge.load(run)
    h, r = model.entity_id("usa"), model.relation_id("embassy")
    (scores,) = session.run(None, {"head": np.array([h]), "relation": np.array([r])})
    table = model.predict_tails("usa", "embassy", k=14, dim=6)
    np.testing.assert_allclose(scores[0, table.column("id")], table.column("score"), rtol=1e-5, atol=1e-5)
    info = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert info["format"] == "medkge-export-onnx" and info["trained_sub_model"] is False


def test_export_without_onnx_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(MedkgeError, match=r"pip install 'medkge\[onnx\]'"):
        export(float_model("transe"), "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_unknown_formats_and_non_empty_folders(tmp_path, capsys):
    model = float_model("distmult")
    with pytest.raises(MedkgeError, match="unknown export format 'csv'"):
        export(model, "csv", tmp_path / "out")
    export(model, "npy", tmp_path / "out")
    with pytest.raises(MedkgeError, match="is not empty"):
        export(model, "npy", tmp_path / "out")
    export(model, "npy", tmp_path / "out", dim=3, overwrite=True)
    assert np.load(tmp_path / "out" / "entity.npy").shape[-1] == 3
    model.save(tmp_path / "saved")
    code = main(["export", str(tmp_path / "saved"), "--format", "npy", "--dim", "20", "--out", str(tmp_path / "x")])
    assert code == 2 and "dim must be between 1 and 12" in capsys.readouterr().err


def test_published_folders_hold_no_local_path_user_or_host_name(tmp_path, capsys):
    import getpass
    import socket

    home = tmp_path / "trainer-home-7f3a"
    run = home / "runs" / "kin"
    train_tiny(run, model="rotate", dims=[4, 8], epochs=1)
    out = tmp_path / "published"
    assert main(["crop", str(run), "--dim", "6", "--out", str(out / "crop")]) == 0
    assert main(["crop", str(out / "crop"), "--dim", "3", "--out", str(out / "crop-again")]) == 0
    for fmt in ("npy", "tsv", "onnx"):
        if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
            continue
        assert main(["export", str(run), "--format", fmt, "--dim", "5", "--out", str(out / fmt)]) == 0
    capsys.readouterr()
    forbidden = [str(home), str(home.resolve()), "trainer-home-7f3a", getpass.getuser(), socket.gethostname()]
    forbidden = [w.encode() for w in forbidden if len(w) >= 4]  # shorter names would match by chance
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) >= 10
    for f in files:
        data = f.read_bytes()
        assert not [w for w in forbidden if w in data], f
    source = json.loads((out / "crop-again" / "model.json").read_text())["source"]
    run_info = medkge.Run.open(run)
    assert source["run"] == "kin" and source["dataset"] == "nations" and "path" not in source
    assert source["data_sha256"] == run_info.dataset().fingerprint()
    assert source["config_sha256"] == sha256_file(run / "config.yaml")


def test_export_or_crop_into_the_models_own_folder_is_refused(tmp_path, capsys):
    model = float_model("distmult")
    folder = model.save(tmp_path / "model")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    for args in (
        ["export", str(folder), "--format", "npy", "--out", str(folder), "--force"],
        ["crop", str(folder), "--dim", "3", "--out", str(folder), "--force"],
    ):
        assert main(args) == 2
        assert "holds the model being written; choose another output folder" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    assert medkge.load(folder).dims == [12]
