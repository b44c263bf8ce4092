"""``medkge curves``: the table's numbers are the validations the runs logged (every epoch, every shown dim,
per-dim models of DT included), and the plot is a real PNG."""

from __future__ import annotations

import json

from medkge.cli import main
from medkge.curves import load_curves, spaced_dims

from .conftest import train_tiny


def logged_validations(folder) -> dict[tuple[str, int], dict[int, float]]:
    out: dict[tuple[str, int], dict[int, float]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "valid":
            for dim, values in record["dims"].items():
                out.setdefault((record.get("model", ""), int(dim)), {})[record["epoch"]] = values["mrr"]
    return out


def test_curves_show_every_validation_of_med_and_of_dts_models(tmp_path, capsys):
    med = train_tiny(tmp_path / "med", model="transe", dims="4,8,16", epochs=3).path
    dt = train_tiny(tmp_path / "dt", model="transe", method="dt", dims="4,16", epochs=3).path
    logged = logged_validations(med) | logged_validations(dt)
    assert sorted(logged) == [("", 4), ("", 8), ("", 16), ("dim_16", 16), ("dim_4", 4)]

    assert main(["curves", str(med), str(dt), "--labels", "med,dt", "--out", str(tmp_path / "cv")]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| epoch")]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 3"]  # one row per validated epoch
    header = next(line for line in table.splitlines() if line.startswith("| epoch"))
    assert header == "| epoch | med: 4 | med: 8 | med: 16 | dt: 4 | dt: 16 |"
    columns = [("", 4), ("", 8), ("", 16), ("dim_4", 4), ("dim_16", 16)]
    for epoch, row in enumerate(rows, start=1):
        cells = [float(c) for c in row.strip("| ").split(" | ")[1:]]
        assert cells == [round(logged[key][epoch], 3) for key in columns]
    best = max(logged[("dim_16", 16)].values())
    assert "dt (full validation): best 4: " in table and f"16: {best:.3f}" in table
    assert (tmp_path / "cv" / "curves.md").read_text() == table
    png = (tmp_path / "cv" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    # the training loss comes with each curve: MED's one loss for all its sub-models, DT's per model
    curves = load_curves(med, dims=[4, 16])
    assert curves[0].loss is curves[1].loss and sorted(curves[0].loss) == [1, 2, 3]
    dt_curves = load_curves(dt)
    assert dt_curves[0].loss is not dt_curves[1].loss


def test_a_resumed_runs_record_replaces_the_earlier_one_of_its_epoch(tmp_path):
    run = train_tiny(tmp_path / "run", model="transe", dims="4,8", epochs=2).path
    log = run / "metrics.jsonl"
    again = {
        "type": "valid",
        "epoch": 2,
        "metric": "mean_mrr",
        "value": 0.5,
        "dims": {"4": {"mrr": 0.25}, "8": {"mrr": 0.75}},
    }
    log.write_text(log.read_text() + json.dumps(again) + "\n")
    curves = load_curves(run)
    assert [c.valid[2] for c in curves] == [0.25, 0.75]
    assert sorted(curves[0].valid) == [1, 2]


def test_spaced_dims_keep_each_width_four_times_the_last():
    assert spaced_dims(list(range(10, 641, 10))) == [10, 40, 160, 640]
    assert spaced_dims([10, 20, 40, 80, 160, 320, 640]) == [10, 40, 160, 640]
    assert spaced_dims(list(range(1, 101))) == [1, 4, 16, 64, 100]
    assert spaced_dims([4, 8, 16]) == [4, 8, 16]  # few dims: all of them


def test_curves_errors_are_one_line(tmp_path, capsys):
    assert main(["curves", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    run = train_tiny(tmp_path / "run", model="transe", dims="4,8", epochs=1).path
    assert main(["curves", str(run), "--dims", "16"]) == 2
    assert "no validation of dims [16] (validated: [4, 8])" in capsys.readouterr().err
    assert main(["curves", str(run), "--metric", "auc"]) == 2
    assert "no validation metric 'auc' (logged: " in capsys.readouterr().err
    assert main(["curves", str(run), str(run)]) == 2
    assert "two runs have the same name" in capsys.readouterr().err
    silent = train_tiny(tmp_path / "silent", model="transe", dims="4,8", epochs=1, eval_every=0).path
    assert main(["curves", str(silent)]) == 2
    assert "no validation logged" in capsys.readouterr().err


def test_a_curves_label_names_its_dim_and_any_stage_or_teacher():
    from medkge.curves import _series_label

    assert [_series_label(tag, dim) for tag, dim in [("", 10), ("dim_40", 40), ("dim_4", 4)]] == ["10", "40", "4"]
    assert _series_label("dim_40/stage2", 40) == "40 stage2" and _series_label("teacher", 640) == "640 teacher"
