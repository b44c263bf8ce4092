"""Validation sweep over configuration options: the measurements behind docs/choices.md.

Trains one MED (or DT) run per grid entry on a dataset, RotatE with dims 10, 20, 40, 80, 160 unless the
entry sets ``dims``, validating twice (half-way and at the end, keeping the better), and prints the
validation MRR of every dim (of 10, 20, 40, ..., 640 when there are more than 8) and their mean, and for
EI runs the effective share of weighted positives (``ess_pos``) and negatives (``ess_neg``) averaged over
the epochs. Each entry is a JSON object of options as ``medkge.train`` takes them. Runs go to
``runs/sweep/<dataset>-<tag>-<i>``; finished ones are reused and interrupted ones resumed.

    python benchmarks/sweep.py kinships 100 '[{"gamma": 6, "lr": 0.01}, {"gamma": 6, "med.evolutionary": true}]' ei
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import medkge
from medkge.evaluation import is_full

SHOWN = (10, 20, 40, 80, 160, 320, 640)


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    dataset, epochs, grid, tag = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    base = {"dataset": dataset, "model": "rotate", "epochs": epochs, "eval_every": max(1, epochs // 2), "patience": 0}
    for i, options in enumerate(grid):
        options = {"dims": [10, 20, 40, 80, 160], **options}
        folder = Path("runs/sweep") / f"{dataset}-{tag}-{i}"
        started = time.perf_counter()
        if (folder / "results.json").is_file():
            run = medkge.Run.open(folder)
        elif (folder / "config.yaml").is_file():
            run = medkge.resume(folder, progress=False)
        else:
            run = medkge.train(**(base | options), out=folder, progress=False)  # an entry may set eval_every
        valid = run.results()["valid"]["dims"]
        shown = [d for d in valid if len(valid) <= 8 or int(d) in SHOWN]  # 64 sub-models: DT's dims
        mrr = " ".join(f"{d}:{valid[d]['mrr']:.3f}" for d in shown)
        mrr += f" mean:{sum(v['mrr'] for v in valid.values()) / len(valid):.3f}"
        protocol = run.results()["valid"].get("protocol", "full")
        mrr += "" if is_full(protocol) else f" ({protocol})"  # eval.valid_protocol / valid_triples
        epochs_logged = [r for r in run.log() if r.get("type") == "epoch"]
        shares = ""
        for key in ("ess_pos", "ess_neg"):
            values = [r[key] for r in epochs_logged if key in r]
            if values:
                shares += f" {key} {sum(values) / len(values):.3f} (last {values[-1]:.3f})"
        print(json.dumps(options), f"{time.perf_counter() - started:5.0f}s", mrr + shares, flush=True)


if __name__ == "__main__":
    main()
