"""BKD and DualDE: their losses equal the formulas of MED.md section 6, the teacher stays frozen when it
must, and both baselines train end to end through the command line."""

from __future__ import annotations

import json

import pytest
import torch

from medkge.cli import main
from medkge.config import LossConfig
from medkge.files import load_model
from medkge.losses import DualDELoss, bkd_loss
from tests.test_losses import huber, log_sigmoid, loop_base, sigmoid, softmax


def scores(seed: int, b: int = 3, k: int = 4) -> torch.Tensor:
    return torch.randn(b, 1 + k, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def test_bkd_loss_is_base_loss_plus_weighted_huber():
    student, teacher = scores(0), scores(1)
    got = bkd_loss(student, teacher, LossConfig(alpha=0.5), soft_weight=0.7)
    s, t = student[..., 0].tolist(), teacher[..., 0].tolist()
    soft = [huber(sigmoid(x), sigmoid(y)) for rs, rt in zip(s, t, strict=True) for x, y in zip(rs, rt, strict=True)]
    expected = loop_base(s, 0.5) + 0.7 * sum(soft) / len(soft)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_dualde_loss_mixes_soft_and_hard_by_a_learnable_sigmoid_of_the_other_score():
    own, other = scores(2), scores(3)
    loss = DualDELoss(LossConfig(alpha=1.0)).double()
    with torch.no_grad():
        loss.a.fill_(1.5)
        loss.b.fill_(-0.3)
    got = loss(own, other)
    expected = 0.0
    for row_s, row_t in zip(own[..., 0].tolist(), other[..., 0].tolist(), strict=True):
        trust = [sigmoid(1.5 * (x - 0.3)) for x in row_t]
        soft = [huber(sigmoid(x), sigmoid(y)) for x, y in zip(row_s, row_t, strict=True)]
        expected += trust[0] * soft[0] - (1 - trust[0]) * log_sigmoid(row_s[0])
        p = softmax(row_s[1:])
        for pk, x, tr, so in zip(p, row_s[1:], trust[1:], soft[1:], strict=True):
            expected += pk * ((1 - tr) * so - tr * log_sigmoid(-x))
    assert got.item() == pytest.approx(expected / len(own), rel=1e-10)
    got.backward()
    assert loss.a.grad is not None and loss.b.grad is not None  # the weighting is learned


def train_cli(tmp_path, method: str, *extra: str) -> dict:
    out = tmp_path / method
    args = ["train", "--dataset", "nations", "--model", "rotate", "--method", method, "--dims", "4,8"]
    args += ["--epochs", "4", "--batch-size", "512", "--negatives", "4", "--gamma", "6", "--out", str(out), "--quiet"]
    args += ["--set", "eval.every=2", *extra]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("method", ["bkd", "dualde"])
def test_baselines_train_end_to_end_and_count_the_teacher(tmp_path, method, capsys):
    results = train_cli(tmp_path, method)
    assert sorted(results["test"]["dims"], key=int) == ["4", "8"]
    teacher = results["teacher"]
    assert teacher["source"] == "trained in this run" and teacher["train_seconds"] > 0
    assert results["train_seconds"] == pytest.approx(results["students_train_seconds"] + teacher["train_seconds"])
    assert sum(m["epochs"] for m in results["per_dim"].values()) == 8  # the same epochs as DT per dim
    capsys.readouterr()


def test_dt_teacher_from_another_run_is_its_largest_model_and_its_time_counts(tmp_path, capsys):
    dt = train_cli(tmp_path, "dt")
    bkd = train_cli(tmp_path, "bkd", "--set", f"distill.teacher={tmp_path / 'dt'}")
    assert bkd["teacher"]["train_seconds"] == dt["per_dim"]["8"]["train_seconds"]
    # trained in the run, the teacher is DT's largest model: same seed, same data
    own = train_cli(tmp_path / "own", "bkd")
    assert torch.equal(
        load_model(tmp_path / "own" / "bkd" / "teacher.safetensors").entity,
        load_model(tmp_path / "dt" / "models" / "dim_8.safetensors").entity,
    )
    assert own["teacher"]["train_seconds"] > 0
    capsys.readouterr()


def test_teacher_stays_frozen_in_stage_one_and_learns_in_stage_two(tmp_path, monkeypatch, capsys):
    import medkge.methods as methods

    seen = []
    original = methods._per_dim_trainer

    def spy(*args, stage="", **options):
        trainer = original(*args, stage=stage, **options)
        fit = trainer.fit
        objective = trainer.objective

        def checked_fit():
            teacher = next(c for c in objective.__closure__ if hasattr(c.cell_contents, "entity")).cell_contents
            before = teacher.entity.detach().clone()
            state = fit()
            seen.append((stage, torch.equal(before, teacher.entity.detach())))
            return state

        trainer.fit = checked_fit
        return trainer

    monkeypatch.setattr(methods, "_per_dim_trainer", spy)
    train_cli(tmp_path, "dualde")
    assert seen == [("stage1", True), ("stage2", False)] * 2
    capsys.readouterr()


def test_dualde_refuses_a_margin_loss_and_an_unfinished_teacher(tmp_path, capsys):
    assert main(["train", "--method", "dualde", "--set", "loss.kind=margin", "--out", str(tmp_path / "x")]) == 2
    assert "loss.kind cannot be margin" in capsys.readouterr().err
    (tmp_path / "dt").mkdir()
    (tmp_path / "dt" / "config.yaml").write_text("dataset: nations\nmethod: dt\n")
    args = ["train", "--method", "bkd", "--dataset", "nations", "--set", f"distill.teacher={tmp_path / 'dt'}"]
    assert main([*args, "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "distill.teacher" in capsys.readouterr().err
