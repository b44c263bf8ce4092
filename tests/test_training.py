"""Training: reproducible for a seed, resumable after SIGKILL to the same end, early stopping, sampling."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import medkge
from medkge.files import read_jsonl
from medkge.sampling import NegativeSampler

from .conftest import random_dataset

TINY = {
    "dataset": "kinships",
    "model": "rotate",
    "dims": [4, 8],
    "epochs": 3,
    "batch_size": 512,
    "negatives": 8,
    "eval_every": 1,
}


def tables(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(folder / name)


def test_same_seed_same_model_other_seed_other_model(tmp_path):
    a = medkge.train(**TINY, out=tmp_path / "a", progress=False)
    b = medkge.train(**TINY, out=tmp_path / "b", progress=False)
    c = medkge.train(**TINY, seed=1, out=tmp_path / "c", progress=False)
    ta, tb, tc = (tables(r.path) for r in (a, b, c))
    for key in ta:
        assert torch.equal(ta[key], tb[key])
    assert not torch.equal(ta["entity"], tc["entity"])
    assert a.metrics().to_dict() == b.metrics().to_dict()


def test_run_folder_holds_everything_to_reproduce(tmp_path):
    run = medkge.train(**TINY, out=tmp_path / "run", progress=False)
    names = {p.name for p in run.path.iterdir()}
    assert {
        "config.yaml",
        "model.safetensors",
        "entities.tsv",
        "relations.tsv",
        "metrics.jsonl",
        "results.json",
        "checkpoint.safetensors",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    reopened = medkge.Run.open(run.path)
    assert reopened.config == run.config
    again = reopened.evaluate("test", progress=False)
    assert again.to_dict() == run.metrics("test").to_dict()
    results = run.results()
    assert results["train_seconds"] > 0 and results["device"].startswith("cpu")
    records = list(read_jsonl(run.path / "metrics.jsonl"))
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]
    assert [r["epoch"] for r in records if r["type"] == "valid"] == [1, 2, 3]


def test_best_model_is_kept_and_patience_stops_early(tmp_path):
    # a huge learning rate makes validation worse after the first epochs
    run = medkge.train(
        **(TINY | {"epochs": 30, "lr": 1.0}),
        patience=2,
        out=tmp_path / "run",
        progress=False,
        **{"train.lr_schedule": "constant"},
    )
    results = run.results()
    valid = [r for r in run.log() if r["type"] == "valid"]
    assert results["stopped_early"] and results["epochs"] < 30
    best = max(valid, key=lambda r: r["value"])
    assert results["best_epoch"] == best["epoch"]
    assert results["valid"]["dims"]["4"]["mrr"] == pytest.approx(best["dims"]["4"]["mrr"])


def test_validating_some_sub_models_stops_on_them_and_records_every_one(tmp_path):
    """eval.valid_dims: the validations during training rank only those sub-models, early stopping and the
    kept model follow them, and the kept model's validation of every sub-model is recorded once at the end."""
    options = TINY | {"dims": "4:16:4", "epochs": 30, "lr": 1.0, "patience": 2}
    run = medkge.train(
        **options,
        out=tmp_path / "run",
        progress=False,
        **{"train.lr_schedule": "constant", "eval.valid_dims": "16,4"},
    )
    results, valid = run.results(), [r for r in run.log() if r["type"] == "valid"]
    assert run.config.eval.valid_dims == [4, 16] and all(sorted(r["dims"]) == ["16", "4"] for r in valid)
    best = max(valid, key=lambda r: r["value"])
    assert results["stopped_early"] and results["best_epoch"] == best["epoch"]
    assert best["value"] == pytest.approx((best["dims"]["4"]["mrr"] + best["dims"]["16"]["mrr"]) / 2)
    assert sorted(results["valid"]["dims"], key=int) == ["4", "8", "12", "16"]
    for dim in ("4", "16"):  # the record's validation is the kept model's
        assert results["valid"]["dims"][dim]["mrr"] == pytest.approx(best["dims"][dim]["mrr"])
    assert run.evaluate("valid", dims=[8])[8]["mrr"] == pytest.approx(results["valid"]["dims"]["8"]["mrr"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10,30", r"eval.valid_dims: \[30\] not among model.dims"),
        ([], r"eval.valid_dims is empty"),
        ("a,b", r"eval.valid_dims: cannot read 'a,b' as dims"),
    ],
)
def test_valid_dims_must_be_sub_models(value, message):
    with pytest.raises(medkge.MedkgeError, match=message):
        medkge.Config.from_dict({"model": {"dims": "10,20,40"}, "eval": {"valid_dims": value}})
    metric = {"model.dims": "10,20,40", "eval.valid_dims": "10,40", "eval.metric": "mrr@20"}
    with pytest.raises(medkge.MedkgeError, match=r"eval.metric 'mrr@20' reads a dim eval.valid_dims leaves out"):
        medkge.Config().with_overrides(metric)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medkge", *args]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--set", "train.optimizer=sparse_adam"],
        ["--set", "train.optimizer=row_adagrad", "--set", "train.shared_negatives=16"],
    ],
    ids=["adam", "sparse_adam", "row_adagrad-shared"],
)
def test_resume_after_sigkill_ends_where_an_uninterrupted_run_ends(tmp_path, extra):
    options = [
        "--dataset",
        "kinships",
        "--dims",
        "4,8",
        "--epochs",
        "6",
        "--batch-size",
        "64",
        "--negatives",
        "4",
        "--eval-every",
        "2",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.threads=1",
        "--quiet",
        *extra,
    ]
    reference = tmp_path / "reference"
    subprocess.run(cli("train", *options, "--out", str(reference)), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli("train", *options, "--out", str(killed)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        epochs = [r for r in read_jsonl(log) if r["type"] == "epoch"] if log.exists() else []
        if len(epochs) >= 3:
            break
        time.sleep(0.01)
    time.sleep(epochs[-1]["seconds"] / 2)  # into the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    shutil.copytree(killed, tmp_path / "on-two-ranks")
    done = subprocess.run(cli("train", "--resume", str(killed), "--quiet"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = tables(reference, name), tables(killed, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"

    def strip(records):
        return [{k: v for k, v in r.items() if k not in ("seconds", "triples_per_s")} for r in records]

    assert strip(read_jsonl(killed / "metrics.jsonl")) == strip(read_jsonl(reference / "metrics.jsonl"))
    if extra:  # the checkpoint of one process (and its kept model) resumes on two torchrun ranks
        from .test_distributed import run as torchrun

        torchrun(2, "train", "--resume", str(tmp_path / "on-two-ranks"), "--quiet")
        a, b = tables(reference), tables(tmp_path / "on-two-ranks")
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_train_refuses_to_overwrite_a_run(tmp_path):
    medkge.train(**(TINY | {"epochs": 1}), out=tmp_path / "run", progress=False)
    with pytest.raises(medkge.MedkgeError, match="already holds a run"):
        medkge.train(**(TINY | {"epochs": 1}), out=tmp_path / "run", progress=False)


def test_bernoulli_sampling_and_filtering():
    train = torch.tensor([[0, 0, 1], [0, 0, 2], [0, 0, 3], [1, 1, 0], [2, 1, 0], [3, 1, 0]])
    sampler = NegativeSampler(train, 5, 2, negatives=50, corruption="bernoulli", filter_known=True)
    # relation 0 is one-to-many (tph 3, hpt 1): heads are corrupted with probability 3/4
    assert sampler.head_probability.tolist() == pytest.approx([0.75, 0.25])
    batch = train.repeat(200, 1)
    corrupt_head = sampler.sides(batch, step=0)
    negatives = sampler.own(batch, corrupt_head, 0, len(batch), step=0)
    known = {tuple(x) for x in train.tolist()}
    for b in range(len(batch)):
        h, r, t = batch[b].tolist()
        for e in negatives[b].tolist():
            assert ((e, r, t) if corrupt_head[b] else (h, r, e)) not in known
    rate = corrupt_head[batch[:, 1] == 0].double().mean().item()
    assert rate == pytest.approx(0.75, abs=0.05)


@pytest.mark.parametrize("filter_known", [False, True])
def test_any_share_of_a_batch_draws_the_negatives_the_whole_batch_draws(filter_known):
    """What a process training positions [lo, hi) of a batch draws is what one process draws for them."""
    from medkge.sampling import NegativeSampler

    ds = random_dataset(40, 3, (300, 10, 10))
    sampler = NegativeSampler(ds.train, 40, 3, negatives=9, filter_known=filter_known, seed=5)
    batch = ds.train[:300].long()
    whole = sampler.batch(batch, step=7)
    for lo, hi in [(0, 100), (100, 257), (257, 300), (128, 128)]:
        part = sampler.batch(batch, step=7, lo=lo, hi=hi)
        assert torch.equal(part.positives, batch[lo:hi])
        for side in ("tail", "head"):
            full = next(g for g in whole.groups if g.side == side)
            mask = sampler.sides(batch, 7)[lo:hi] if side == "head" else ~sampler.sides(batch, 7)[lo:hi]
            before = int((sampler.sides(batch, 7) if side == "head" else ~sampler.sides(batch, 7))[:lo].sum())
            mine = [g for g in part.groups if g.side == side]
            expected = full.candidates[before : before + int(mask.sum())]
            assert torch.equal(mine[0].candidates, expected) if mine else not len(expected)
    assert not torch.equal(sampler.batch(batch, step=8).groups[0].candidates, whole.groups[0].candidates)


def test_the_trainers_adam_is_fused_on_the_cpu_and_matches_the_unfused_update():
    from medkge.optim import adam

    g = torch.Generator().manual_seed(0)
    start = torch.randn(50, 8, generator=g)
    fused_param, plain_param = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    fused = adam([{"params": [fused_param]}], 0.01)
    plain = torch.optim.Adam([plain_param], lr=0.01, foreach=False)
    assert fused.defaults["fused"]
    for _ in range(5):
        grad = torch.randn(50, 8, generator=g)
        fused_param.grad, plain_param.grad = grad.clone(), grad.clone()
        fused.step()
        plain.step()
    assert not torch.equal(fused_param, start)
    torch.testing.assert_close(fused_param, plain_param, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["rotate", "distmult"])
def test_fused_kernels_train_the_same_model_as_the_plain_reference(tmp_path, model):
    """train.fused_kernels: false runs the autograd reference; both end at the same model, to rounding."""
    from .conftest import train_tiny

    options = {"model": model, "dims": [4, 8, 16], "epochs": 1, "eval_every": 0, "train.threads": 1}
    fused = train_tiny(tmp_path / "fused", **options)
    plain = train_tiny(tmp_path / "plain", **options, **{"train.fused_kernels": False})
    assert fused.config.train.fused_kernels and not plain.config.train.fused_kernels
    a, b = fused.model, plain.model
    assert not torch.equal(a.entity, b.entity)  # two code paths ran: float rounding differs
    torch.testing.assert_close(a.entity, b.entity, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.relation, b.relation, rtol=1e-4, atol=1e-5)


def test_a_resumed_run_takes_the_thread_count_it_is_given_and_keeps_its_saved_config(tmp_path, monkeypatch):
    from medkge.cli import main
    from medkge.config import Config

    from .conftest import train_tiny

    run = train_tiny(tmp_path / "run", dims=[4], epochs=1, **{"train.threads": 1})
    (run.path / "results.json").unlink()  # as if killed during its test evaluation
    saved = (run.path / "config.yaml").read_text()
    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)  # record, leave this process's threads alone
    assert main(["train", "--resume", str(run.path), "--set", "train.threads=2", "--quiet"]) == 0
    assert asked[:1] == [2] and (run.path / "results.json").is_file()
    assert (run.path / "config.yaml").read_text() == saved and Config.from_run_folder(run.path).train.threads == 1
    with pytest.raises(medkge.MedkgeError, match="at least 1"):
        medkge.resume(run.path, progress=False, threads=0)


def bare_trainer(cfg, dataset, folder: Path):
    """A Trainer of ``cfg``'s model with a stand-in objective (the sum of the scores), files in ``folder``."""
    from medkge.training import Trainer, build_model

    return Trainer(
        cfg,
        dataset,
        build_model(cfg, dataset),
        lambda scores, batch: (scores.sum(), {}),
        model_path=folder / "model.safetensors",
        checkpoint_path=folder / "checkpoint.safetensors",
        log_path=folder / "log.jsonl",
        progress=False,
    )


def test_a_resumed_optimiser_runs_as_this_runs_config_says_not_as_the_checkpoint_did(tmp_path):
    from medkge.config import Config
    from medkge.training import Trainer

    dataset = medkge.load_dataset("nations")

    def trainer(fused: bool) -> Trainer:
        cfg = Config().with_overrides({"dataset": "nations", "model.dims": [4, 8], "train.fused_kernels": fused})
        return bare_trainer(cfg, dataset, tmp_path)

    old = trainer(fused=False)
    assert not old.optimizer.param_groups[0]["fused"]
    assert not old.store.updater.optimizer.param_groups[0]["fused"]  # the entity table's own Adam
    for p in old.model.parameters():
        p.grad = torch.ones_like(p)
    old.optimizer.step()
    old.store.update(lr=1e-3)
    old.save_checkpoint()
    new = trainer(fused=True)
    new.load_checkpoint()
    assert new.optimizer.param_groups[0]["fused"] and new.store.updater.optimizer.param_groups[0]["fused"]
    assert int(new.optimizer.state[new.model.relation]["step"]) == 1
    assert int(new.store.updater.state_tensors()["step"]) == 1
    torch.testing.assert_close(new.model.entity, old.model.entity)
    for p in new.model.parameters():
        p.grad = torch.ones_like(p)
    new.optimizer.step()  # the loaded state works with the fused implementation
    new.store.update(lr=1e-3)


@pytest.mark.parametrize("width", [10, 640])
def test_rotate_phases_start_over_the_circle_and_step_at_the_same_rate_at_any_width(width):
    # RotatE's code scales phases by pi / init_scale, which grows with the width: with Adam a step then
    # moved a 640-d model's phases by ~0.9 rad at lr 0.005 and MED's small sub-models did not learn on
    # FB15k-237 (docs/choices.md). The default keeps one phase step, lr * phase_scale, at every width.
    from medkge.config import Config
    from medkge.training import build_model

    dataset = medkge.load_dataset("nations")
    cfg = Config().with_overrides({"dataset": "nations", "model.name": "rotate", "model.dims": [width]})
    model = build_model(cfg, dataset)
    assert cfg.model.phase_scale is not None and 1.0 <= cfg.model.phase_scale <= 30.0
    assert model.phase_scale == cfg.model.phase_scale  # the same at every width
    phases = model.relation_table()
    assert phases.abs().max() <= torch.pi + 1e-6
    assert phases.max() > 2.5 and phases.min() < -2.5  # uniform over the circle, as RotatE starts them
    # one Adam step moves each phase by lr * phase_scale
    opt = torch.optim.Adam([model.relation], lr=0.005)
    model.relation_table().sum().backward()
    opt.step()
    torch.testing.assert_close(
        model.relation_table() - phases.detach(), torch.full_like(phases, -0.005 * model.phase_scale)
    )


def test_phase_scale_null_is_rotate_codes_parametrisation_and_a_run_keeps_its_phase_scale(tmp_path):
    from medkge.config import Config
    from medkge.model import CroppableModel
    from medkge.training import build_model

    dataset = medkge.load_dataset("nations")
    cfg = Config().with_overrides({"dataset": "nations", "model.dims": [8, 16], "model.phase_scale": None})
    model = build_model(cfg, dataset)
    assert model.phase_scale == pytest.approx(torch.pi / model.init_scale)
    assert model.relation.abs().max() <= model.init_scale  # the stored values start in the entities' range
    run = medkge.train(**TINY, **{"model.phase_scale": 2.0}, out=tmp_path / "run", progress=False)
    assert run.model.phase_scale == 2.0  # read back from the saved model's spec
    assert medkge.resume(run.path, progress=False).model.phase_scale == 2.0
    assert CroppableModel.from_spec(run.model.spec()).phase_scale == 2.0


def test_a_run_folder_from_before_phase_and_gamma_scaling_resumes_with_what_it_trained_with(tmp_path, monkeypatch):
    import yaml

    from medkge.config import Config
    from medkge.training import Trainer

    # RotatE's code's phase scale pi / init_scale: 2 pi at dims [4, 16] (init_scale (6 + 2) / 16); linear margins
    options = {**TINY, "dims": [4, 16], "epochs": 2, "model.phase_scale": "null", "train.checkpoint_every": 1}
    options["model.gamma_scaling"] = "linear"
    reference = medkge.train(**options, out=tmp_path / "reference", progress=False)
    assert reference.model.phase_scale == pytest.approx(2 * torch.pi)

    class Killed(Exception):
        pass

    save = Trainer.save_checkpoint

    def save_then_die(self: Trainer, final: bool = False) -> None:
        save(self, final)
        raise Killed  # right after the first checkpoint, as a SIGKILL would leave the folder

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        medkge.train(**options, out=tmp_path / "old", progress=False)
    monkeypatch.undo()
    folder = tmp_path / "old"
    assert not (folder / "results.json").exists()
    path = folder / "config.yaml"
    data = yaml.safe_load(path.read_text())
    del data["model"]["phase_scale"], data["model"]["gamma_scaling"]  # as written before the options existed
    del data["loss"]["reg_angles"], data["eval"]["valid_triples"]
    path.write_text(yaml.safe_dump(data))
    between = {**data, "eval": {**data["eval"], "valid_triples": None}}  # written after efc8df1, before reg_angles
    (tmp_path / "between").mkdir()
    (tmp_path / "between" / "config.yaml").write_text(yaml.safe_dump(between))
    assert not Config.from_run_folder(tmp_path / "between").loss.reg_angles
    resumed = medkge.resume(folder, progress=False)
    assert resumed.config.model.phase_scale is None and resumed.config.model.gamma_scaling == "linear"
    assert resumed.config.loss.reg_angles  # N3 / L2 took RotatE's angles in then
    torch.testing.assert_close(resumed.model.margins(), torch.tensor([6.0 * 4 / 16, 6.0]))
    assert resumed.model.phase_scale == pytest.approx(2 * torch.pi)
    torch.testing.assert_close(resumed.model.relation_table(), reference.model.relation_table())
    assert resumed.results()["test"] == reference.results()["test"]


@pytest.mark.parametrize(
    ("model", "reg_angles", "penalises_relations"),
    [("rotate", False, False), ("rotate", True, True), ("complex", False, True), ("transe", False, True)],
)
def test_the_regulariser_penalises_entities_and_relations_that_have_a_size(
    tmp_path, model, reg_angles, penalises_relations
):
    """N3 / L2 on a batch's rows; RotatE's relation rows are angles (a rotation's modulus is one), left out
    unless ``loss.reg_angles`` (how runs before 2026-12-07 trained, kept for their resumption)."""
    from medkge.config import Config
    from medkge.losses import regularization

    dataset = medkge.load_dataset("nations")
    cfg = Config().with_overrides(
        {
            "dataset": "nations",
            "model.name": model,
            "model.dims": [4, 8],
            "loss.regularizer": "n3",
            "loss.reg_angles": reg_angles,
        }
    )
    trainer = bare_trainer(cfg, dataset, tmp_path)
    m = trainer.model
    positives = dataset.train[:5]
    penalty = trainer.regularizer(positives, m.entity_rows)
    complex_entities = model != "transe"
    entities = regularization(
        "n3", [m.entity_rows(positives[:, 0]), m.entity_rows(positives[:, 2])], [complex_entities] * 2
    )
    assert float(penalty.detach()) > 0
    assert (float(penalty.detach()) > float(entities.detach()) + 1e-6) == penalises_relations
    penalty.backward()
    relation_grad = m.relation.grad
    assert (relation_grad is not None and bool(relation_grad.abs().sum() > 0)) == penalises_relations
