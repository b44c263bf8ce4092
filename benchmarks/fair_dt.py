"""A fair DT: each dim's model trained at the margin (and learning rate) best for it on validation, then set
beside MED's sub-models of the same width (issue 33).

``benchmarks/quality.py`` gives a DT model of dim d the margin MED's d-dim sub-model has (``model.gamma_scaling``:
gamma * sqrt(d / 640) by default, gamma * d / 640 before 2026-12-07): like for like with MED, but not necessarily
the best margin for a model trained alone. Here every DT model is its own run
(``method: dt``, ``dims: [d]``, ``model.gamma_scaling: none``) for each margin and rate of the grid, validated
at half way and at the end (the better kept, full filtered validation), and the one with the best validation
MRR is that dim's fair DT. Its test MRR is then set beside MED's at that dim, from MED run folders or records
(``--med``; e.g. docs/results/wn18rr-30-epochs-phase10/wn18rr/runs/wn18rr-rotate-med-seed0).

    python benchmarks/fair_dt.py wn18rr --grid '10:0.094,0.375,1.5 40:0.375,1.5,3,6,12 160:3,6,12' \\
        --med docs/results/wn18rr-30-epochs-phase10/wn18rr/runs/wn18rr-rotate-med-seed0

A margin may carry its own rate (``40:3@0.002``); a bare one is tried at each rate of ``--lrs``.

Runs go to ``runs/fair-dt/<dataset>-dt<d>-gamma<g>-lr<lr>-seed<s>`` (finished ones reused, interrupted ones
resumed) and their records (config.yaml, results.json, metrics.jsonl) to ``--results``/runs, from which
``--records-only`` prints the tables again without training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from quality import finished, train_or_reuse

# the budgets of docs/results (quality.py's SETTINGS for 30-epoch WN18RR, FB15k-237's RotatE settings)
SETTINGS: dict[str, dict[str, Any]] = {
    "wn18rr": {"epochs": 30, "loss.alpha": 0.5},
    "fb15k237": {"epochs": 30},
    "kinships": {"epochs": 50},
    "umls": {"epochs": 50},
}


def parse_grid(text: str, lrs: list[float]) -> dict[int, list[tuple[float, float]]]:
    """``'10:0.1,0.4 40:1.5,3,3@0.002'`` -> per dim, (margin, rate) pairs: a bare margin at each of ``lrs``,
    ``margin@lr`` at that rate only."""
    grid: dict[int, list[tuple[float, float]]] = {}
    for item in text.split():
        dim, entries = item.split(":")
        pairs = grid.setdefault(int(dim), [])
        for entry in entries.split(","):
            gamma, _, lr = entry.partition("@")
            pairs += [(float(gamma), float(lr))] if lr else [(float(gamma), rate) for rate in lrs]
    return grid


def run(dataset: str, dim: int, gamma: float, lr: float, args: argparse.Namespace) -> dict[str, Any] | None:
    """The results of one DT model (trained, resumed or reused through quality.py's ``train_or_reuse``, which
    refuses a run made with other settings); None with --records-only and no finished run or record."""
    name = f"{dataset}-dt{dim}-gamma{gamma:g}-lr{lr:g}-seed{args.seed}"
    folder, record = args.out / name, args.results / "runs" / name
    if args.records_only and not finished(folder, record):
        return None
    epochs = args.epochs or SETTINGS.get(dataset, {}).get("epochs", 30)
    options = {
        "dataset": dataset,
        "model": "rotate",
        **SETTINGS.get(dataset, {}),
        "method": "dt",
        "dims": [dim],
        "gamma": gamma,
        "model.gamma_scaling": "none",
        "lr": lr,
        "epochs": epochs,
        "eval_every": max(1, epochs // 2),
        "patience": 0,
        "seed": args.seed,
        "train.threads": args.threads,  # validation: the full filtered protocol (the default)
    }
    return json.loads((train_or_reuse(folder, record, **options) / "results.json").read_text())


def metric(results: dict[str, Any], split: str, dim: int, key: str = "mrr") -> float:
    return results[split]["dims"][str(dim)][key]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("--grid", required=True, help="per dim, the margins to try: '10:0.094,0.375 40:1.5,3,6,3@0.002'")
    p.add_argument("--lrs", default="0.005", help="learning rates to try at every bare margin, e.g. 0.002,0.005")
    p.add_argument("--epochs", type=int, help="instead of the dataset's budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--med", action="append", default=[], help="a MED run folder or record to set beside (repeat)")
    p.add_argument("--out", type=Path, default=Path("runs/fair-dt"))
    p.add_argument("--results", type=Path, default=Path("docs/results/fair-dt"))
    p.add_argument("--records-only", action="store_true", help="print the tables from the records, train nothing")
    args = p.parse_args()
    grid = parse_grid(args.grid, [float(x) for x in args.lrs.split(",")])
    best: dict[int, tuple[float, float, dict[str, Any]]] = {}
    lines = [f"### {args.dataset}: DT RotatE per dim, margin and rate (validation / test MRR, seed {args.seed})", ""]
    lines += ["| dim | gamma | lr | valid MRR | test MRR | test Hits@10 |", "|---:|---:|---:|---:|---:|---:|"]
    for dim, pairs in grid.items():
        for gamma, lr in pairs:
            results = run(args.dataset, dim, gamma, lr, args)
            if results is None:
                continue
            valid = metric(results, "valid", dim)
            if dim not in best or valid > metric(best[dim][2], "valid", dim):
                best[dim] = (gamma, lr, results)
            test, hits = metric(results, "test", dim), metric(results, "test", dim, "hits@10")
            lines.append(f"| {dim} | {gamma:g} | {lr:g} | {valid:.3f} | {test:.3f} | {hits:.3f} |")
    lines += ["", "The fair DT of each dim: the row with the best validation MRR.", ""]
    med = [json.loads((Path(m) / "results.json").read_text()) for m in args.med]
    header = "| dim | fair DT: gamma, lr | fair DT test MRR / Hits@10 |"
    rule = "|---:|---|---|"
    if med:
        header += " MED test MRR / Hits@10 | MED - fair DT |"
        rule += "---|---:|"
    lines += [header, rule]
    for dim, (gamma, lr, results) in best.items():
        dt = metric(results, "test", dim)
        row = f"| {dim} | {gamma:g}, {lr:g} | {dt:.3f} / {metric(results, 'test', dim, 'hits@10'):.3f} |"
        if med:
            mrr = sum(metric(r, "test", dim) for r in med) / len(med)
            hits = sum(metric(r, "test", dim, "hits@10") for r in med) / len(med)
            row += f" {mrr:.3f} / {hits:.3f} | {mrr - dt:+.3f} |"
        lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.dataset}.md").write_text(text)


if __name__ == "__main__":
    main()
