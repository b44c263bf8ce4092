"""The command line end to end on a tiny dataset, and its one-line errors."""

from __future__ import annotations

import json

import pytest

from medkge.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_evaluate_info(tmp_path, capsys):
    out = str(tmp_path / "run")
    code, stdout, _ = run_cli(
        capsys,
        "train",
        "--dataset",
        "nations",
        "--model",
        "transe",
        "--dims",
        "4,8",
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--negatives",
        "4",
        "--set",
        "eval.every=1",
        "--out",
        out,
        "--quiet",
    )
    assert code == 0
    assert "dim" in stdout and "MRR" in stdout
    code, stdout, _ = run_cli(capsys, "evaluate", out, "--split", "valid", "--json", "--quiet")
    data = json.loads(stdout)
    assert code == 0 and set(data["dims"]) == {"4", "8"} and data["split"] == "valid"
    code, stdout, _ = run_cli(capsys, "evaluate", out, "--dims", "2,6", "--quiet")
    assert code == 0 and "  2 " in stdout and "  6 " in stdout
    code, stdout, _ = run_cli(capsys, "info", out, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["status"] == "finished" and info["dims"] == [4, 8]


def test_datasets_and_config_commands(capsys):
    code, stdout, _ = run_cli(capsys, "datasets", "--json")
    assert code == 0 and {d["name"] for d in json.loads(stdout)} >= {"wn18rr", "kinships"}
    code, stdout, _ = run_cli(capsys, "config")
    assert code == 0 and "train.lr" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "nationz"], "unknown dataset 'nationz'"),
        (["train", "--set", "train.lrr=1"], "unknown key 'train.lrr'"),
        (["train", "--epochs", "-3"], "train.epochs must be at least 1"),
        (["train", "missing.yaml"], "missing.yaml: no such config file"),
        (["train", "--resume", "nowhere"], "nowhere: not a medkge run folder"),
        (["train", "--resume", "r", "--set", "train.lr=1"], "give no other options (but --set train.threads=N)"),
        (["train", "--resume", "r", "--set", "train.threads"], "--set expects KEY=VALUE, got 'train.threads'"),
        (["train", "--resume", "r", "--set", "train.threads=two"], "train.threads must be an integer, got 'two'"),
        (["evaluate", "nowhere"], "nowhere: not a medkge run folder"),
        (["info", "nowhere"], "nowhere: not a medkge run folder"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("medkge: error: ") and message in lines[-1]
    assert "Traceback" not in err


def test_malformed_triple_file_error_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "kg"
    data.mkdir()
    (data / "train.txt").write_text("a\tr\tb\nbroken line\n")
    (data / "valid.txt").write_text("a\tr\tb\n")
    (data / "test.txt").write_text("a\tr\tb\n")
    code, _, err = run_cli(capsys, "train", "--dataset", str(data), "--out", str(tmp_path / "run"))
    assert code == 2
    assert f"{data / 'train.txt'}:2: expected 3 tab-separated fields" in err
