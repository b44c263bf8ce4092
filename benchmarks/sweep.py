"""Validation sweep over configuration options: the measurements behind docs/choices.md.

Trains one MED (or DT) run per grid entry on a dataset, RotatE with dims 10, 20, 40, 80, 160 unless the
entry sets ``dims``, validating twice (half-way and at the end, keeping the better), and prints the
validation MRR of every dim. Each entry is a JSON object of options as ``medkge.train`` takes them.

    python benchmarks/sweep.py kinships 100 '[{"gamma": 6, "lr": 0.01}, {"gamma": 6, "med.evolutionary": true}]' ei
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import medkge


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    dataset, epochs, grid, tag = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    base = {"dataset": dataset, "model": "rotate", "epochs": epochs, "eval_every": max(1, epochs // 2), "patience": 0}
    for i, options in enumerate(grid):
        options = {"dims": [10, 20, 40, 80, 160], **options}
        started = time.perf_counter()
        run = medkge.train(**base, **options, out=Path("runs/sweep") / f"{dataset}-{tag}-{i}", progress=False)
        valid = run.results()["valid"]["dims"]
        mrr = " ".join(f"{d}:{v['mrr']:.3f}" for d, v in valid.items())
        print(json.dumps(options), f"{time.perf_counter() - started:5.0f}s", mrr, flush=True)


if __name__ == "__main__":
    main()
