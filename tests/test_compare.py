"""``medkge compare``: the table's numbers are the runs' recorded metrics (the mean and standard deviation of
several seeds), and the plot is a real PNG."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from medkge.cli import main
from medkge.compare import method_key, method_label, method_settings
from medkge.config import Config


def test_compare_renders_table_and_plot_from_the_runs(tmp_path, capsys):
    runs = []
    for method, dims in (("med", "4,8,16"), ("dt", "4,16")):
        out = tmp_path / method
        args = ["train", "--dataset", "nations", "--model", "transe", "--method", method, "--dims", dims]
        args += ["--epochs", "2", "--batch-size", "512", "--negatives", "4", "--out", str(out), "--quiet"]
        assert main(args) == 0
        runs.append(out)
    capsys.readouterr()
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    markdown = capsys.readouterr().out
    assert "| dim | MED (3 sub-models) | DT |" in markdown

    png = (tmp_path / "cmp" / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [(r["method"], r["dim"]) for r in rows] == [
        ("MED (3 sub-models)", "4"),
        ("MED (3 sub-models)", "16"),
        ("DT", "4"),
        ("DT", "16"),
    ]  # the dims both runs have
    med_time = json.loads((runs[0] / "results.json").read_text())["train_seconds"]
    for row, run in zip(rows, [runs[0], runs[0], runs[1], runs[1]], strict=True):
        results = json.loads((run / "results.json").read_text())
        recorded = results["test"]["dims"][row["dim"]]
        assert float(row["mrr"]) == recorded["mrr"] and float(row["hits@10"]) == recorded["hits@10"]
        assert float(row["train_seconds"]) == results["train_seconds"]
        assert float(row["time_vs_reference"]) == results["train_seconds"] / med_time
        assert f"{recorded['mrr']:.3f} / {recorded['hits@10']:.3f}" in markdown


def test_compare_errors_are_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a medkge run folder" in capsys.readouterr().err


def test_seeds_of_one_method_are_reported_as_mean_and_std(tmp_path, capsys):
    """Runs equal but for the seed form one method: the cells, CSV columns and plot are the mean and the
    sample standard deviation of the runs' recorded metrics."""
    runs = []
    for name, seed, method in (("med0", 0, "med"), ("dt0", 0, "dt"), ("med1", 1, "med")):
        out = tmp_path / name
        args = ["train", "--dataset", "nations", "--model", "transe", "--method", method, "--dims", "4,8"]
        args += ["--epochs", "2", "--batch-size", "512", "--negatives", "4", "--seed", str(seed), "--out", str(out)]
        assert main([*args, "--quiet", "--set", "train.threads=1"]) == 0
        runs.append(out)
    capsys.readouterr()
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    markdown = capsys.readouterr().out
    assert "| dim | MED (2 sub-models), 2 seeds | DT |" in markdown
    assert "| 0, 1 |" in markdown and "mean ± sample standard deviation" in markdown
    seeds = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("med0", "med1")]
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [(r["method"], r["dim"], r["seeds"]) for r in rows] == [
        ("MED (2 sub-models), 2 seeds", "4", "2"),
        ("MED (2 sub-models), 2 seeds", "8", "2"),
        ("DT", "4", "1"),
        ("DT", "8", "1"),
    ]
    for row in rows[:2]:
        values = [r["test"]["dims"][row["dim"]]["mrr"] for r in seeds]
        assert float(row["mrr"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert float(row["mrr_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} / " in markdown
        times = [r["train_seconds"] for r in seeds]
        assert float(row["train_seconds"]) == pytest.approx(statistics.fmean(times), rel=1e-12)
    assert rows[2]["mrr_std"] == "" and float(rows[2]["time_vs_reference"]) > 0
    assert (tmp_path / "cmp" / "comparison.png").read_bytes().startswith(b"\x89PNG")
    # the same label groups runs explicitly, whatever their configs
    assert main(["compare", *map(str, runs[:2]), "--labels", "A,A"]) == 0
    assert "| dim | A, 2 seeds |" in capsys.readouterr().out


def test_labels_name_the_switched_parts_of_med():
    base = Config().with_overrides({"med.mutual_learning": False, "med.dynamic_weights": False})
    assert method_label(base) == "MED (base loss only)"
    assert method_label(Config().with_overrides({"med.mutual_learning": False})) == "MED (no ML)"
    reading = {"med.evolutionary": True, "med.ei_positives": "power", "med.ei_negatives": "own", "med.w2": 0.5}
    assert "EI power/own, w2 0.5" in method_label(Config().with_overrides(reading))
    assert method_label(Config().with_overrides({"model.dims": [10, 40, 160, 640]})) == "MED (4 sub-models)"
    assert method_key(Config().with_overrides({"train.seed": 3, "train.threads": 1})) == method_key(Config())
    assert method_key(Config().with_overrides({"train.lr": 0.5})) != method_key(Config())
    # a regularizer's settings count only where it is on
    assert method_key(Config().with_overrides({"loss.reg_angles": True, "loss.reg_weight": 0.1})) == method_key(
        Config()
    )
    n3 = {"loss.regularizer": "n3", "loss.reg_weight": 0.1}
    assert method_key(Config().with_overrides(n3)) != method_key(Config())
    assert method_key(Config().with_overrides({**n3, "loss.reg_angles": True})) != method_key(
        Config().with_overrides(n3)
    )
    assert method_key(Config().with_overrides({**n3, "loss.reg_weight": 0.0})) == method_key(Config())
    settings = method_settings(Config().with_overrides({"train.seed": 3}))
    assert settings["train.lr"] == Config().train.lr and "train.seed" not in settings


def _quality_benchmark():
    """benchmarks/quality.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_reassembles_a_comparison_from_its_records(tmp_path, monkeypatch, capsys):
    import shutil
    import sys

    quality = _quality_benchmark()

    def trained() -> int:  # runs the last invocation trained, from its "training FOLDER" lines
        return sum(line.startswith("training /") for line in capsys.readouterr().out.splitlines())

    out, results = tmp_path / "runs", tmp_path / "results"
    argv = ["quality.py", "--datasets", "nations", "--methods", "med,dt", "--ablations", "", "--dt-dims", "10,20"]
    argv += ["--epochs", "1", "--out", str(out), "--results", str(results)]
    monkeypatch.setattr(sys, "argv", argv)
    quality.main()
    assert trained() == 2
    table = (results / "nations" / "comparison.csv").read_text()
    for run in ("nations-rotate-med-seed0", "nations-rotate-dt-seed0"):
        record = results / "nations" / "runs" / run
        assert sorted(p.name for p in record.iterdir()) == ["config.yaml", "metrics.jsonl", "results.json"]
    # the run folders (weights and all) gone: the records alone give the same comparison, nothing retrained
    shutil.rmtree(out)
    quality.main()
    assert trained() == 0
    assert (results / "nations" / "comparison.csv").read_text() == table
    # an ablation added later trains only itself, beside the records of the others
    monkeypatch.setattr(sys, "argv", [*argv[:6], "med-no-ml", *argv[7:]])
    quality.main()
    assert trained() == 1
    assert "MED (no ML)" in (results / "nations" / "comparison.md").read_text()
    monkeypatch.setattr(sys, "argv", [*argv[:4], "med,dt,bkd", *argv[5:]])
    with pytest.raises(SystemExit, match="distils DT's trained run"):
        quality.main()  # BKD needs DT's weights, which a record does not hold
    # a record of other settings is refused, not reused as if it were this invocation's run
    monkeypatch.setattr(sys, "argv", [*argv, "--set", "model.phase_scale=null"])
    with pytest.raises(
        SystemExit, match=r"nations-rotate-med-seed0 was trained with other settings \(model.phase_scale: 10.0"
    ):
        quality.main()
    assert trained() == 0


def test_quality_benchmark_records_only_trains_nothing_and_names_what_it_left_out(tmp_path, monkeypatch, capsys):
    """--records-only builds the tables from the finished runs and records alone: a seed that is missing (or
    unfinished) is left out and named, a method with no finished run at all drops out of the table."""
    import shutil
    import sys

    quality = _quality_benchmark()
    out, results = tmp_path / "runs", tmp_path / "results"
    argv = ["quality.py", "--datasets", "nations", "--methods", "med", "--ablations", "", "--dt-dims", "10,20"]
    argv += ["--epochs", "1", "--out", str(out), "--results", str(results)]
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "2"])
    quality.main()
    shutil.rmtree(out)
    shutil.rmtree(results / "nations" / "runs" / "nations-rotate-med-seed1")  # seed 1 never came back
    (out / "nations-rotate-med-seed1").mkdir(parents=True)  # and its folder holds no finished run
    monkeypatch.setattr(sys, "argv", [*argv[:4], "med,dt", *argv[5:], "--seeds", "2", "--records-only"])
    capsys.readouterr()
    quality.main()
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("training ") for line in lines)
    left_out = [line.split(": ")[-1] for line in lines if line.startswith("left out")]
    assert left_out == ["nations-rotate-med-seed1", "nations-rotate-dt-seed0", "nations-rotate-dt-seed1"]
    table = (results / "nations" / "comparison.md").read_text()
    assert "MED" in table and "DT" not in table
    assert "| nations-rotate-med-seed0 |" in (results / "nations" / "budget.md").read_text()


def test_quality_benchmark_reuses_a_run_of_a_dataset_folder_given_relative(tmp_path, monkeypatch, capsys):
    """A run folder records a user's dataset folder as an absolute path; the same relative folder given
    again must be recognised as the same setting, not refused as another."""
    import shutil
    import sys
    from importlib import resources

    quality = _quality_benchmark()
    monkeypatch.chdir(tmp_path)
    with resources.as_file(resources.files("medkge") / "data" / "nations") as bundled:
        shutil.copytree(bundled, tmp_path / "graph")
    argv = ["quality.py", "--datasets", "graph", "--methods", "med", "--ablations", "", "--dt-dims", "10,20"]
    monkeypatch.setattr(sys, "argv", [*argv, "--epochs", "1", "--out", "runs", "--results", "results"])
    quality.main()
    quality.main()  # reused: the second invocation trains nothing and is not refused
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("training ") for line in lines) == 1
    assert (tmp_path / "results" / "graph" / "comparison.csv").is_file()


def test_quality_benchmark_records_ei_weight_shares(tmp_path):
    """budget.md carries each EI run's mean effective shares of weighted positives and negatives (first to last
    epoch), read from its metrics.jsonl; a run without EI gets an empty cell."""
    import json

    quality = _quality_benchmark()
    ei, plain = tmp_path / "ei", tmp_path / "plain"
    for folder, extra in (
        (ei, [{"ess_pos": 0.25, "ess_neg": 1.0}, {"ess_pos": 0.75, "ess_neg": 0.5}]),
        (plain, [{}, {}]),
    ):
        folder.mkdir()
        lines = [{"type": "epoch", "epoch": i + 1, "loss": 1.0, **e} for i, e in enumerate(extra)]
        lines.append({"type": "valid", "epoch": 2, "ess_pos": 9.0})  # not an epoch: not averaged
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert quality.ei_shares(ei) == "ess_pos 0.50 (0.25 to 0.75); ess_neg 0.75 (1.00 to 0.50)"
    assert quality.ei_shares(plain) == ""
    assert quality.ei_shares(tmp_path / "missing") == ""
