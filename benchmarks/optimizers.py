"""Quality of every training path: each entity optimiser, one process against torchrun ranks.

    python benchmarks/optimizers.py grid --datasets kinships,umls            # validation MRR per optimiser and lr
    python benchmarks/optimizers.py compare --datasets kinships,umls,wn18rr --seeds 2   # each at its default lr
    python benchmarks/optimizers.py ranks --datasets kinships,wn18rr         # torchrun, 2 ranks, against 1 process
    python benchmarks/optimizers.py compare --datasets wn18rr --dims 10:160:10 --seeds 0   # a cheaper WN18RR

MED RotatE, sub-models 10, 20, ..., 640, every run with the same options but the one compared: the settings of
``SETTINGS`` per dataset (the docs/results budgets: Kinships and UMLS 50 epochs at Adam's lr 0.01, WN18RR
30 epochs), one validation at the end, the test at the end. ``grid`` trains each optimiser at each rate of
``GRID`` (seed 0; sub-models 10..160, ``--dims``, to keep it cheap) and prints validation MRR: how the
optimisers' default rates (optim.default_lr) were chosen. ``compare`` leaves ``train.lr`` unset, so that each
optimiser runs at its own default, and prints test MRR at 10 / 40 / 160 / 640 (mean over the seeds) beside
dense Adam's. ``ranks`` trains the same options in one process and on 2 torchrun ranks (gloo, 127.0.0.1, one
thread each) and prints both (``RANKS``: the setting per dataset; ``--optimizers adam,row_adagrad:0.1`` names
the optimisers, each at the dataset's rate or at the one given). ``--dims`` and ``--epochs`` replace a
dataset's sub-models and budget (a narrower model: a cheaper run; its name says so).

Runs go to ``runs/optimizers/<dataset>-<what>-seed<s>``; finished ones are reused, interrupted ones resumed, and
each run's record (config.yaml, results.json, metrics.jsonl) is copied to ``--results`` (docs/results/optimizers),
from which ``--records-only`` prints the tables again without training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import medkge
from medkge.methods import make_config, optimizer_lr

# linear margins: the default when docs/results/optimizers was measured (the comparison is between optimisers)
SETTINGS: dict[str, dict[str, Any]] = {
    "kinships": {"epochs": 50, "lr": 0.01, "gamma": 6.0, "model.gamma_scaling": "linear"},
    "umls": {"epochs": 50, "lr": 0.01, "gamma": 6.0, "model.gamma_scaling": "linear"},
    "wn18rr": {"epochs": 30, "lr": 0.005, "gamma": 6.0, "loss.alpha": 0.5, "model.gamma_scaling": "linear"},
}
OPTIMIZERS = ("adam", "sparse_adam", "row_adagrad")
GRID = {"adam": (0.001, 0.003, 0.01, 0.03), "sparse_adam": (0.003, 0.01, 0.03), "row_adagrad": (0.03, 0.1, 0.3, 1.0)}
SHOWN = (10, 40, 160, 640)
RECORD_FILES = ("config.yaml", "results.json", "metrics.jsonl")


def options(dataset: str, seed: int, threads: int, dims: str = "10:640:10", **changes: Any) -> dict[str, Any]:
    base = {
        "dataset": dataset,
        "model": "rotate",
        "dims": dims,
        "seed": seed,
        "train.threads": threads,
        **SETTINGS[dataset],
    }
    base |= {"eval_every": base["epochs"], "patience": 0}
    return base | changes


def train(
    name: str, opts: dict[str, Any], args: argparse.Namespace, ranks: int = 0, lr: float | None = None
) -> dict[str, Any] | None:
    """The results of run ``name`` (trained, resumed or reused); None with --records-only and no record. ``lr``:
    the rate the run must have been trained at (an optimiser's default), so that a record made at an older
    default is trained again rather than shown as today's."""
    folder, record = args.out / name, args.results / name
    for done in (folder / "results.json", record / "results.json"):
        stale = lr is not None and not args.records_only and done.is_file()
        if stale and json.loads(done.read_text())["lr"] != lr:
            print(f"{done.parent} was trained at another rate than today's default {lr:g}: training it again")
            shutil.rmtree(done.parent)
    if args.records_only or (not folder.exists() and (record / "results.json").is_file()):
        return json.loads((record / "results.json").read_text()) if (record / "results.json").is_file() else None
    if not (folder / "results.json").is_file():
        print(f"training {folder}", flush=True)
        if ranks:
            torchrun(ranks, opts, folder)
        elif (folder / "config.yaml").is_file():
            medkge.resume(folder, progress=False)
        else:
            medkge.train(**{k: v for k, v in opts.items() if v is not None}, out=folder, progress=False)
    record.mkdir(parents=True, exist_ok=True)
    for file in RECORD_FILES:
        shutil.copyfile(folder / file, record / file)
    return json.loads((folder / "results.json").read_text())


def torchrun(ranks: int, opts: dict[str, Any], folder: Path) -> None:
    """``medkge train`` (or ``--resume``) on ``ranks`` torchrun processes, one thread each, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if (folder / "config.yaml").is_file():
        command = ["train", "--resume", str(folder), "--quiet"]
    else:
        command = ["train", "--out", str(folder), "--quiet"]
        for key, value in opts.items():
            if value is not None:
                command += ["--set", f"{medkge.config.ALIASES.get(key, key)}={value}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--master-addr=127.0.0.1"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, f"--master-port={port}", "-m", "medkge", *command], env=env, check=True)


def default_rate(opts: dict[str, Any], optimizer: str, dataset: medkge.Dataset) -> float:
    """The learning rate ``optimizer`` gets on the run of ``opts`` (on ``dataset``) where train.lr is unset."""
    return optimizer_lr(make_config(**{k: v for k, v in opts.items() if v is not None}), dataset, optimizer)


def mrr(results: dict[str, Any] | None, split: str, dim: int) -> float | None:
    return None if results is None else results[split]["dims"][str(dim)]["mrr"]


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


def cell(value: float | None, reference: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if reference is None else f"{value:.3f} ({value - reference:+.3f})"


def grid(args: argparse.Namespace) -> None:
    for dataset in args.datasets:
        dims = expand(args.dims or "10:160:10")
        shown, width = [d for d in SHOWN if d in dims], dims[-1]
        print(f"\n### {dataset}: validation MRR at {' / '.join(map(str, shown))} and the mean over dims {dims[-1]}\n")
        print(
            "| optimizer | lr | " + " | ".join(map(str, shown)) + " | mean |\n|---|---:|" + "---:|" * (len(shown) + 1)
        )
        for optimizer in OPTIMIZERS:
            for lr in GRID[optimizer]:
                opts = options(
                    dataset, 0, args.threads, args.dims or "10:160:10", **{"train.optimizer": optimizer, "lr": lr}
                )
                r = train(f"{dataset}-{optimizer}-lr{lr:g}-width{width}-seed0", opts, args)
                if r is None:
                    continue
                dims = r["valid"]["dims"]
                overall = sum(v["mrr"] for v in dims.values()) / len(dims)
                values = " | ".join(cell(mrr(r, "valid", d)) for d in shown)
                print(f"| {optimizer} | {lr:g} | {values} | {overall:.3f} |", flush=True)


def compare(args: argparse.Namespace) -> None:
    for dataset in args.datasets:
        dims = expand(args.dims or "10:640:10")
        shown = [d for d in SHOWN if d in dims]
        epochs = args.epochs or SETTINGS[dataset]["epochs"]
        width = "" if dims[-1] == 640 else f"-width{dims[-1]}"
        length = "" if epochs == SETTINGS[dataset]["epochs"] else f"-{epochs}epochs"
        data = medkge.load_dataset(dataset)  # the default rates depend on its entity count
        print(f"\n### {dataset}: test MRR at {' / '.join(map(str, shown))}, {epochs} epochs, seeds {args.seeds}\n")
        print("| optimizer | lr | " + " | ".join(map(str, shown)) + " |\n|---|---:|" + "---:|" * len(shown))
        reference: list[float | None] = [None] * len(shown)
        for optimizer in OPTIMIZERS:
            runs = []
            for seed in args.seeds:
                change = {"train.optimizer": optimizer, "lr": None, "epochs": epochs, "eval_every": epochs}
                opts = options(dataset, seed, args.threads, args.dims or "10:640:10", **change)
                lr = default_rate(opts, optimizer, data)
                runs.append(train(f"{dataset}-{optimizer}-default{width}{length}-seed{seed}", opts, args, lr=lr))
            values = [mean([mrr(r, "test", d) for r in runs]) for d in shown]
            if optimizer == "adam":
                reference = values
            row = " | ".join(
                cell(v, None if optimizer == "adam" else ref) for v, ref in zip(values, reference, strict=True)
            )
            print(f"| {optimizer} | {lr:g} (default) | {row} |", flush=True)


# The issue's own comparison on Kinships (issue 31): dims 10, 20, 40, 60 epochs, lr 0.01, seed 3. WN18RR: the
# sub-models up to 160 for 10 epochs (a 2-core machine's budget; --dims and --epochs change it)
RANKS: dict[str, dict[str, Any]] = {
    "kinships": {"dims": "10,20,40", "epochs": 60, "seed": 3},
    "wn18rr": {"dims": "10:160:10", "epochs": 10, "seed": 0},
}


def expand(dims: str) -> list[int]:
    return medkge.Config().with_overrides({"model.dims": dims}).model.dims


def ranks(args: argparse.Namespace) -> None:
    for dataset in args.datasets:
        changes = dict(RANKS.get(dataset, {}))
        seed = changes.pop("seed", 0)
        changes["dims"] = args.dims or changes.get("dims", "10:640:10")
        changes["epochs"] = args.epochs or changes.get("epochs", SETTINGS[dataset]["epochs"])
        changes["eval_every"] = changes["epochs"]
        dims = expand(changes["dims"])
        shown = dims if len(dims) <= 4 else [d for d in SHOWN if d in dims]
        print(
            f"\n### {dataset}: test MRR at {' / '.join(map(str, shown))}, dims {changes['dims']}, "
            f"{changes['epochs']} epochs, seed {seed}, one process and 2 ranks\n"
        )
        print(
            "| optimizer | lr | processes | "
            + " | ".join(map(str, shown))
            + " |\n|---|---:|---|"
            + "---:|" * len(shown)
        )
        for spec in args.optimizers:  # NAME or NAME:LR (another rate than the dataset's)
            optimizer, _, rate = spec.partition(":")
            lr_change = {"lr": float(rate)} if rate else {}
            opts = options(dataset, seed, 1, **{"train.optimizer": optimizer, **changes, **lr_change})
            tag = f"{dataset}-{optimizer}{'-lr' + rate if rate else ''}-width{dims[-1]}-{changes['epochs']}epochs"
            one = train(f"{tag}-1process-seed{seed}", opts, args)
            two = train(f"{tag}-2ranks-seed{seed}", opts, args, ranks=2)
            lr = opts["lr"]
            print(f"| {optimizer} | {lr:g} | 1 | " + " | ".join(cell(mrr(one, "test", d)) for d in shown) + " |")
            values = [cell(mrr(two, "test", d), mrr(one, "test", d)) for d in shown]
            print(f"| {optimizer} | {lr:g} | 2 ranks | " + " | ".join(values) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("grid", "compare", "ranks"))
    p.add_argument("--datasets", type=lambda s: s.split(","), default=["kinships", "umls", "wn18rr"])
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1], help="e.g. 0,1")
    p.add_argument(
        "--optimizers",
        type=lambda s: s.split(","),
        default=["adam"],
        help="ranks: which optimisers, each NAME or NAME:LR",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of a one-process run")
    p.add_argument("--dims", help="the sub-models (default: grid 10:160:10, compare 10:640:10, ranks per dataset)")
    p.add_argument("--epochs", type=int, help="instead of the dataset's budget (compare, ranks)")
    p.add_argument("--out", type=Path, default=Path("runs/optimizers"))
    p.add_argument("--results", type=Path, default=Path("docs/results/optimizers"))
    p.add_argument("--records-only", action="store_true", help="print the tables from the records, train nothing")
    args = p.parse_args()
    {"grid": grid, "compare": compare, "ranks": ranks}[args.what](args)


if __name__ == "__main__":
    main()
