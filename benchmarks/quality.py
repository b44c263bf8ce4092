"""Quality benchmark: MED against DT, BKD and DualDE (and MED's ablations) at equal epochs, per dim.

Every method trains the same model (RotatE unless ``--model``) with the same epochs, batch, negatives,
loss, learning rate and seeds. MED trains one model with 64 sub-models (10, 20, ..., 640); DT trains one
independent model per dim of a shorter list (all 64 would cost DT 32x one 640-d model per epoch); BKD and
DualDE distil DT's 640-d model of the same seed (their recorded training time includes it) into a student
per dim of that list. Each dataset's runs are compared with ``medkge compare`` (mean and standard deviation
over the seeds): the table and plot land in ``--results`` (docs/results/ by default).

    python benchmarks/quality.py --threads 1 --seeds 3 --datasets kinships,umls   # the committed results
    python benchmarks/quality.py --datasets kinships --methods med,dt --epochs 20 --ablations ''   # a quick look
    python benchmarks/quality.py --datasets wn18rr --methods med,dt --dt-dims 10,40,160,640 --epochs 100 \\
        --eval-every 10 --patience 3 --ablations med-no-ml,med-no-dlw,med-base-loss-only \\
        --out runs/converged --results docs/results/converged --threads 1    # to early stopping

Kinships and WN18RR train MED, DT, BKD and DualDE, UMLS and FB15k-237 MED and DT; each dataset also the
ablations SETTINGS lists for it (Kinships all of them). Runs are folders ``<dataset>-<model>-<method or
ablation>-seed<seed>`` under ``--out``; runs already finished there are reused and interrupted ones resumed,
so the script can be re-run (and stopped at any time). Each finished run's record (``config.yaml``,
``results.json``, ``metrics.jsonl``: no weights) is copied to ``runs/`` in its dataset's results folder, and
a run whose folder is gone is read from there: a committed comparison can gain seeds, methods or ablations
later without training again what it already holds. ``--records-only`` trains nothing: it builds the tables
from what is finished (runs made on a GPU machine and brought back as records, a seed cut short) and names
the runs it left out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import medkge
from medkge.compare import MethodSummary, compare, method_label, method_settings, summarize
from medkge.config import Config
from medkge.layout import CONFIG_FILE, LOG_FILE, RESULTS_FILE
from medkge.methods import make_config, optimizer_lr, recorded_dataset

DIMS = [10, 20, 40, 80, 160, 320, 640]
# Per dataset: the options every method shares, the dims DT and the distillations train, the methods and
# MED's ablations (tags of ABLATIONS) trained by default.
SETTINGS = {
    "kinships": {
        "options": {"epochs": 50, "gamma": 6.0, "lr": 0.01},
        "methods": "med,dt,bkd,dualde",
        "ablations": "med-base-loss-only,med-no-ml,med-no-dlw,med-paper-ei,med-4-sub-models",
    },
    "umls": {  # MED against DT only (issue 3)
        "options": {"epochs": 50, "gamma": 6.0, "lr": 0.01},
        "methods": "med,dt",
        "ablations": "med-base-loss-only",
    },
    "wn18rr": {
        "options": {"epochs": 8, "gamma": 6.0, "lr": 0.005, "loss.alpha": 0.5},
        "methods": "med,dt,bkd,dualde",
        "ablations": "med-base-loss-only",
    },
    "fb15k237": {  # RotatE's published gamma (9) and alpha (1) for FB15k-237
        "options": {"epochs": 50, "gamma": 9.0, "lr": 0.005},
        "methods": "med,dt",
        "ablations": "med-base-loss-only",
    },
}
MED_DIMS = list(range(10, 641, 10))
# MED's ablations (MED.md section 3): each switches one part off, or trains only 4 sub-models
ABLATIONS = {
    "med-base-loss-only": {"med.mutual_learning": False, "med.dynamic_weights": False, "med.evolutionary": False},
    "med-no-ml": {"med.mutual_learning": False},
    "med-no-dlw": {"med.dynamic_weights": False},
    "med-no-ei": {"med.evolutionary": False},
    # EI as the paper states it (MED.md section 3)
    "med-paper-ei": {
        "med.evolutionary": True,
        "med.ei_positives": "paper-literal",
        "med.ei_negatives": "paper-literal",
    },
    # EI read as RotatE's self-adversarial weights of the smaller neighbour, bounded positive weights
    "med-ei-error-raw": {"med.evolutionary": True, "med.ei_positives": "error", "med.ei_negatives": "raw"},
    # raw-score negatives, positive weights proportional to 1 / q (mean one)
    "med-ei-power-raw": {"med.evolutionary": True, "med.ei_positives": "power", "med.ei_negatives": "raw"},
    # error/raw with the temperature of the base loss where loss.alpha is 0.5 (WN18RR)
    "med-ei-error-raw-w2-half": {
        "med.evolutionary": True,
        "med.ei_positives": "error",
        "med.ei_negatives": "raw",
        "med.w2": 0.5,
    },
    # the two other readings at that temperature: 1 / q positives, and uniform positives (EI's negatives alone)
    "med-ei-power-raw-w2-half": {
        "med.evolutionary": True,
        "med.ei_positives": "power",
        "med.ei_negatives": "raw",
        "med.w2": 0.5,
    },
    "med-ei-uniform-raw-w2-half": {
        "med.evolutionary": True,
        "med.ei_positives": "uniform",
        "med.ei_negatives": "raw",
        "med.w2": 0.5,
    },
    "med-4-sub-models": {"dims": [10, 40, 160, 640]},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="kinships,wn18rr,umls")
    p.add_argument("--model", default="rotate")
    p.add_argument(
        "--methods", help="methods to train (default: per dataset, else med,dt,bkd,dualde; DT is the teacher; '' none)"
    )
    p.add_argument(
        "--ablations", help=f"ablations to train on every dataset, of {', '.join(ABLATIONS)} (default: per dataset)"
    )
    p.add_argument("--epochs", type=int, help="epochs for every dataset (default: per dataset, see SETTINGS)")
    p.add_argument("--eval-every", type=int, help="epochs between validations (default: once, at the end)")
    p.add_argument("--patience", type=int, default=0, help="validations without improvement before stopping")
    p.add_argument("--dt-dims", help=f"dims of DT, BKD, DualDE and the table's rows (default {DIMS})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an option for every run")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="runs/quality", help="folder for the run folders")
    p.add_argument("--results", default="docs/results", help="folder for each dataset's comparison")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method: seed, seed + 1, ...")
    p.add_argument(
        "--records-only",
        action="store_true",
        help="train nothing: the tables from the finished runs and records there, the others left out and named "
        "(runs made on another machine, a seed cut short)",
    )
    return p.parse_args()


RECORD_FILES = (CONFIG_FILE, RESULTS_FILE, LOG_FILE)


def train_or_reuse(folder: Path, record: Path, **options) -> Path:
    """Train the run in ``folder``, resume it, or reuse it (finished there, or only its record left);
    returns ``record``, the copy of the finished run's files that the comparison reads."""
    if not folder.exists() and (record / RESULTS_FILE).is_file():
        check_settings(record, options)
        return record  # trained by an earlier invocation, weights gone: its record is what a comparison needs
    if (folder / CONFIG_FILE).is_file():
        check_settings(folder, options)
    if not (folder / RESULTS_FILE).is_file():
        if (folder / CONFIG_FILE).is_file():
            medkge.resume(folder, progress=False, threads=options.get("train.threads"))  # this invocation's
        else:
            teacher = options.get("distill.teacher")
            if teacher and not (Path(teacher) / RESULTS_FILE).is_file():
                raise SystemExit(
                    f"{folder.name} distils DT's trained run {teacher}, which is not there (a record "
                    "holds no weights): remove DT's record under runs/ in the results to train it again"
                )
            print(f"training {folder}", flush=True)
            medkge.train(**options, out=folder, progress=False)  # progress: the run's metrics.jsonl
    record.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, record / name)
    return record


def finished(folder: Path, record: Path) -> bool:
    """Whether ``train_or_reuse`` would return without training: the run finished in ``folder``, or only its
    record is left."""
    return (folder / RESULTS_FILE).is_file() or (not folder.exists() and (record / RESULTS_FILE).is_file())


def check_settings(folder: Path, options: dict[str, Any]) -> None:
    """Refuse to reuse or resume a run trained with other settings than this invocation's: a committed
    record of an older default (RotatE's phase scale, say) must not enter a table as today's."""
    have = Config.from_run_folder(folder)
    wanted = make_config(**options)
    wanted.dataset = recorded_dataset(wanted.dataset)  # a folder given relative to here is recorded absolute
    if wanted.train.optimizer == "auto":  # a run folder records the optimiser auto chose
        wanted.train.optimizer = have.train.optimizer
    if wanted.train.lr is None:  # and the learning rate an unset train.lr resolved to
        wanted.train.lr = optimizer_lr(wanted, medkge.load_dataset(wanted.dataset), wanted.train.optimizer)
    old, new = method_settings(have), method_settings(wanted)
    old["train.seed"], new["train.seed"] = have.train.seed, wanted.train.seed
    changed = [
        f"{k}: {old.get(k)!r} there, {new.get(k)!r} asked"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]
    if changed:
        raise SystemExit(
            f"{folder} was trained with other settings ({'; '.join(changed)}): give another --out or "
            "--results, or remove it to train it again"
        )


def gap_table(med: MethodSummary, base: MethodSummary, dims: list[int]) -> str:
    """MED's test MRR minus base-loss-only's per dim, beside each one's standard deviation over the seeds:
    does MED's objective (ML, EI if on, DLW) beat all prefixes trained jointly on the base loss alone?"""
    lines = [
        f"MED against base loss only, test MRR ({len(med.runs)} and {len(base.runs)} seeds; std: sample standard "
        "deviation over the seeds)",
        "",
        "| dim | MED | base loss only | MED - base | std MED | std base | beyond one std of both |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for d in dims:
        a, b = med.mean(d, "mrr"), base.mean(d, "mrr")
        if a is None or b is None:
            continue
        sa, sb = med.std(d, "mrr"), base.std(d, "mrr")
        std = "" if sa is None or sb is None else ("yes" if a - b > max(sa, sb) else "no")
        cells = [f"{x:.3f}" if x is not None else "" for x in (a, b, a - b, sa, sb)]
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {std} |")
    return "\n".join(lines) + "\n"


def ei_shares(folder: Path) -> str:
    """EI's effective shares of weighted positives and negatives (``ess_pos`` / ``ess_neg``, docs/choices.md)
    averaged over the run's epochs, with the first and last epoch's; empty for a run without EI."""
    log = folder / LOG_FILE
    records = map(json.loads, log.read_text().splitlines()) if log.is_file() else []
    epochs = [r for r in records if r.get("type") == "epoch"]
    cells = []
    for key in ("ess_pos", "ess_neg"):
        values = [r[key] for r in epochs if key in r]
        if values:
            cells.append(f"{key} {sum(values) / len(values):.2f} ({values[0]:.2f} to {values[-1]:.2f})")
    return "; ".join(cells)


def budget_table(folders: dict[str, list[Path]]) -> str:
    """Per run: epochs reached (the kept model's epoch), whether it stopped early, its recorded times and, for
    runs with EI, the effective shares of its weights."""
    lines = [
        "Epochs reached (epoch of the kept model) and recorded times: training, validations during training, "
        "test; for EI, the mean effective share of weighted positives and negatives over the epochs (first to last)",
        "",
        "| run | epochs (kept) | stopped early | training | validation | test | total | EI weights |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for runs in folders.values():
        for folder in runs:
            r = json.loads((folder / RESULTS_FILE).read_text())
            parts = [(d, m) for d, m in r.get("per_dim", {}).items()] or [("", r)]
            epochs = ", ".join(f"{d + ': ' if d else ''}{m['epochs']} ({m['best_epoch']})" for d, m in parts)
            early = ", ".join(str(bool(m.get("stopped_early"))).lower() for _, m in parts)
            times = [r["train_seconds"], r.get("eval_seconds", 0.0), r.get("test_eval_seconds", 0.0)]
            cells = [f"{t / 60:.1f} min" for t in [*times, sum(times)]]
            lines.append(f"| {folder.name} | {epochs} | {early} | " + " | ".join(cells) + f" | {ei_shares(folder)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    seeds = range(args.seed, args.seed + args.seeds)
    dims = [int(d) for d in args.dt_dims.split(",")] if args.dt_dims else DIMS
    extra_options = dict(item.split("=", 1) for item in args.set)
    for name in args.datasets.split(","):
        settings = SETTINGS.get(name, {"options": {"epochs": 50}})
        options = dict(settings["options"])
        if args.epochs:
            options["epochs"] = args.epochs
        common = {"dataset": name, "model": args.model, **options, **extra_options}
        common |= {"eval_every": args.eval_every or options["epochs"], "patience": args.patience}
        if args.threads:
            common["train.threads"] = args.threads
        methods = settings.get("methods", "med,dt,bkd,dualde") if args.methods is None else args.methods
        ablations = settings.get("ablations", "") if args.ablations is None else args.ablations
        tags = [*filter(None, methods.split(",")), *filter(None, ablations.split(","))]
        results = Path(args.results) / (name if args.model == "rotate" else f"{name}-{args.model}")
        folders: dict[str, list[Path]] = {}  # per tag, one record per seed
        for tag in tags:
            for seed in seeds:
                folder = out / f"{name}-{args.model}-{tag}-seed{seed}"
                run_options = {**common, "seed": seed}
                if tag in ABLATIONS:
                    run_options |= {"method": "med", "dims": MED_DIMS, **ABLATIONS[tag]}
                else:
                    run_options |= {"method": tag, "dims": MED_DIMS if tag == "med" else dims}
                if tag in ("bkd", "dualde"):
                    run_options["distill.teacher"] = str(out / f"{name}-{args.model}-dt-seed{seed}")
                record = results / "runs" / folder.name
                if args.records_only and not finished(folder, record):
                    print(f"left out (not finished, --records-only): {folder.name}", flush=True)
                    continue
                folders.setdefault(tag, []).append(train_or_reuse(folder, record, **run_options))
        if not folders:
            print(f"\n### {name}: no finished run or record under {out} or {results / 'runs'}")
            continue
        # one method per tag, whatever the configs: an ablation equal to the default stays its own row
        by_tag = {tag: summarize(runs, labels=[tag] * len(runs))[0] for tag, runs in folders.items()}
        labels = {tag: method_label(Config.from_run_folder(runs[0])) for tag, runs in folders.items()}
        repeated = {label for label in labels.values() if list(labels.values()).count(label) > 1}
        labels = {tag: f"{label} [{tag}]" if label in repeated else label for tag, label in labels.items()}
        paths = [f for runs in folders.values() for f in runs]
        per_run = [labels[tag] for tag, runs in folders.items() for _ in runs]
        table = compare(paths, results, dims=dims, labels=per_run)  # the rows: DT's dims
        if "med" in by_tag and "med-base-loss-only" in by_tag:
            gap = gap_table(by_tag["med"], by_tag["med-base-loss-only"], dims)
            (results / "gap.md").write_text(gap)
            table += "\n" + gap
        (results / "budget.md").write_text(budget_table(folders))
        recorded = {k: v for k, v in common.items() if k != "dataset"} | {"seeds": list(seeds)}
        settings_text = json.dumps(recorded)
        (results / "settings.json").write_text(settings_text + "\n")
        print(f"\n### {name}: {args.model}, {options['epochs']} epochs for every method\nsettings: {settings_text}")
        print(table, flush=True)


if __name__ == "__main__":
    main()
