"""``medkge compare``: the table's numbers are the runs' recorded metrics, and the plot is a real PNG."""

from __future__ import annotations

import csv
import json

from medkge.cli import main


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
