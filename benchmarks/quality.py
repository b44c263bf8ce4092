"""Quality benchmark: MED against DT at equal epochs, per dim.

MED trains one RotatE model with 64 sub-models (10, 20, ..., 640); DT trains independent models at a
subset of those dims (10, 20, 40, ..., 640 by default: all 64 would cost DT 32x one 640-d model per epoch).
Both get the same epochs, batch, negatives, loss and learning rate. The test MRR of every DT dim is put
next to MED's sub-model of that dim.

    python benchmarks/quality.py                                  # kinships, umls, wn18rr (about 1 hour)
    python benchmarks/quality.py --datasets kinships --epochs 50  # one dataset, a shorter budget
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import medkge

# Per dataset: epochs and options that fit the budget on 2 CPU cores (see benchmarks/README.md).
SETTINGS = {
    "kinships": {"epochs": 200, "gamma": 6.0, "lr": 0.01},
    "umls": {"epochs": 200, "gamma": 6.0, "lr": 0.01},
    "wn18rr": {"epochs": 10, "gamma": 6.0, "lr": 0.005, "train.batch_size": 1024, "loss.alpha": 0.5},
}
DT_DIMS = [10, 20, 40, 80, 160, 320, 640]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="kinships,umls,wn18rr")
    p.add_argument("--epochs", type=int, help="epochs for every dataset (default: per dataset, see SETTINGS)")
    p.add_argument("--out", default="runs/quality", help="folder for the runs and quality.json")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    report: dict[str, dict] = {}
    for name in args.datasets.split(","):
        settings = dict(SETTINGS.get(name, {"epochs": 100}))
        if args.epochs:
            settings["epochs"] = args.epochs
        common = {
            "dataset": name,
            "model": "rotate",
            "seed": args.seed,
            "eval_every": settings["epochs"],
            "patience": 0,
            **settings,
        }
        runs = {}
        for method, dims in (("med", list(range(10, 641, 10))), ("dt", DT_DIMS)):
            folder = out / f"{name}-{method}"
            started = time.perf_counter()
            run = (
                medkge.train(**common, method=method, dims=dims, out=folder)
                if not (folder / "results.json").exists()
                else medkge.Run.open(folder)
            )
            results = run.results()
            runs[method] = {
                "test": {d: v for d, v in results["test"]["dims"].items()},
                "train_seconds": results["train_seconds"],
                "wall_seconds": time.perf_counter() - started,
            }
        report[name] = {"settings": common, **runs}
        print_table(name, common, runs)
    (out / "quality.json").write_text(json.dumps(report, indent=2))


def print_table(name: str, settings: dict, runs: dict) -> None:
    med, dt = runs["med"], runs["dt"]
    print(f"\n### {name}: RotatE, {settings['epochs']} epochs each, test split, filtered")
    print(f"settings: {json.dumps(settings)}")
    print("| dim | MED MRR | DT MRR | MED H@10 | DT H@10 |")
    print("|---:|---:|---:|---:|---:|")
    for d in DT_DIMS:
        m, t = med["test"][str(d)], dt["test"][str(d)]
        print(f"| {d} | {m['mrr']:.3f} | {t['mrr']:.3f} | {m['hits@10']:.3f} | {t['hits@10']:.3f} |")
    print(
        f"training time: MED {med['train_seconds']:.0f} s (64 sub-models), DT {dt['train_seconds']:.0f} s "
        f"({len(DT_DIMS)} models)"
    )


if __name__ == "__main__":
    main()
