"""Quality benchmark: MED against DT, BKD and DualDE (and MED's ablations) at equal epochs, per dim.

Every method trains RotatE with the same epochs, batch, negatives, loss, learning rate and seed. MED
trains one model with 64 sub-models (10, 20, ..., 640); DT trains one independent model per dim of a
shorter list (all 64 would cost DT 32x one 640-d model per epoch); BKD and DualDE distil DT's 640-d model
(their recorded training time includes it) into a student per dim of that list. Each dataset's runs are
compared with ``medkge compare``: the table and plot land in ``--results`` (docs/results/ by default).

    python benchmarks/quality.py --threads 1       # the committed results (about 2.5 hours on 2 cores)
    python benchmarks/quality.py --datasets kinships --methods med,dt --epochs 20   # a quick look

Kinships and WN18RR train MED, DT, BKD and DualDE, UMLS MED and DT; Kinships also MED's ablations.
With ``--threads 1`` two invocations (say ``--datasets wn18rr`` and ``--datasets kinships,umls``) can run
side by side on 2 cores, as the committed results were made.

Runs already finished in ``--out`` are reused and interrupted ones resumed, so the script can be re-run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import medkge
from medkge.compare import compare

# Per dataset: the options every method shares, and the dims DT and the distillations train.
SETTINGS = {
    "kinships": {
        "options": {"epochs": 50, "gamma": 6.0, "lr": 0.01},
        "dims": [10, 20, 40, 80, 160, 320, 640],
    },
    "umls": {  # MED against DT only (issue 3)
        "options": {"epochs": 50, "gamma": 6.0, "lr": 0.01},
        "dims": [10, 20, 40, 80, 160, 320, 640],
        "methods": "med,dt",
    },
    "wn18rr": {
        "options": {"epochs": 8, "gamma": 6.0, "lr": 0.005, "loss.alpha": 0.5},
        "dims": [10, 20, 40, 80, 160, 320, 640],
    },
}
MED_DIMS = list(range(10, 641, 10))
# MED's ablations (MED.md section 3): each switches one part off, or trains only 4 sub-models
ABLATIONS = {
    "med-no-ml": {"med.mutual_learning": False},
    "med-no-dlw": {"med.dynamic_weights": False},
    "med-paper-ei": {"med.evolutionary": True},  # EI as the paper states it (off by default)
    "med-4-sub-models": {"dims": [10, 40, 160, 640]},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="kinships,wn18rr,umls")
    p.add_argument(
        "--methods", help="methods to train (default: per dataset, else med,dt,bkd,dualde; DT is the teacher)"
    )
    p.add_argument("--ablations", default="kinships", help="datasets that also train MED's ablations ('' for none)")
    p.add_argument("--epochs", type=int, help="epochs for every dataset (default: per dataset, see SETTINGS)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="runs/quality", help="folder for the run folders")
    p.add_argument("--results", default="docs/results", help="folder for each dataset's comparison")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def train_or_reuse(folder: Path, **options) -> medkge.Run:
    if (folder / "results.json").is_file():
        return medkge.Run.open(folder)
    if (folder / "config.yaml").is_file():
        return medkge.resume(folder)
    return medkge.train(**options, out=folder)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    ablate = set(filter(None, args.ablations.split(",")))
    for name in args.datasets.split(","):
        settings = SETTINGS.get(name, {"options": {"epochs": 50}, "dims": [10, 20, 40, 80, 160, 320, 640]})
        options = dict(settings["options"])
        if args.epochs:
            options["epochs"] = args.epochs
        common = {"dataset": name, "model": "rotate", "seed": args.seed, "eval_every": options["epochs"], **options}
        common["patience"] = 0
        if args.threads:
            common["train.threads"] = args.threads
        folders = []
        methods = args.methods or settings.get("methods", "med,dt,bkd,dualde")
        for method in methods.split(","):
            folder = out / f"{name}-{method}"
            extra = {"dims": MED_DIMS} if method == "med" else {"dims": settings["dims"]}
            if method in ("bkd", "dualde"):
                extra["distill.teacher"] = str(out / f"{name}-dt")
            train_or_reuse(folder, **common, **extra, method=method)
            folders.append(folder)
        if name in ablate:
            for tag, switch in ABLATIONS.items():
                folder = out / f"{name}-{tag}"
                train_or_reuse(folder, **{**common, "dims": MED_DIMS, **switch}, method="med")
                folders.append(folder)
        results = Path(args.results) / name
        table = compare(folders, results, dims=settings["dims"])  # the rows: DT's dims
        settings_text = json.dumps({k: v for k, v in common.items() if k != "dataset"})
        (results / "settings.json").write_text(settings_text + "\n")
        print(f"\n### {name}: RotatE, {options['epochs']} epochs for every method\nsettings: {settings_text}\n{table}")


if __name__ == "__main__":
    main()
