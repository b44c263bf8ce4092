"""Compare finished runs: one table (markdown and CSV) and one plot of quality against dimension.

``medkge compare RUN1 RUN2 ... --out DIR`` reads each run's ``results.json`` and ``config.yaml`` (no model
is loaded): MRR and Hits@10 per dim per method, the training time each run recorded and its ratio to
MED's, and a PNG with MRR (and Hits@10) against dimension on a log-scale x axis.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from .config import Config, MedConfig
from .errors import MedkgeError
from .files import atomic_write
from .model import DEFAULT_DIMS
from .run import CONFIG_FILE, RESULTS_FILE, read_json

METHOD_NAMES = {"med": "MED", "dt": "DT", "bkd": "BKD", "dualde": "DualDE"}


@dataclass
class RunSummary:
    """What a comparison needs from one run folder."""

    path: Path
    label: str
    method: str
    dims: list[int]
    metrics: dict[int, dict[str, float]]  # per dim: "mrr", "hits@10", ...
    train_seconds: float
    device: str
    ties: str
    dataset: str
    fingerprint: str


def method_label(cfg: Config) -> str:
    """A label from the config: the method, and for MED the parts switched from their default and the
    number of sub-models when it is not the default 64."""
    label = METHOD_NAMES.get(cfg.method, cfg.method)
    if cfg.method != "med":
        return label
    defaults, changes = MedConfig(), []
    for key, name in (("mutual_learning", "ML"), ("evolutionary", "EI"), ("dynamic_weights", "DLW")):
        if getattr(cfg.med, key) != getattr(defaults, key):
            changes.append(f"with {name}" if getattr(cfg.med, key) else f"no {name}")
    if cfg.model.dims != list(DEFAULT_DIMS):
        changes.append(f"{len(cfg.model.dims)} sub-models")
    return f"{label} ({', '.join(changes)})" if changes else label


def load_summary(path: str | Path, split: str = "test") -> RunSummary:
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise MedkgeError(f"{folder}: not a medkge run folder (no {CONFIG_FILE})")
    if not (folder / RESULTS_FILE).is_file():
        raise MedkgeError(
            f"{folder}: not finished (no {RESULTS_FILE}); finish it with `medkge train --resume {folder}`"
        )
    cfg = Config.from_yaml(folder / CONFIG_FILE)
    results = read_json(folder / RESULTS_FILE)
    if split not in results:
        raise MedkgeError(f"{folder}: no {split} results recorded")
    metrics = {int(d): m for d, m in results[split]["dims"].items()}
    return RunSummary(
        folder,
        method_label(cfg),
        cfg.method,
        sorted(metrics),
        metrics,
        float(results["train_seconds"]),
        str(results.get("device", "")),
        str(results[split].get("ties", "realistic")),
        str(results.get("dataset", cfg.dataset)),
        str(results.get("dataset_fingerprint", "")),
    )


def compare(
    paths: list[str | Path],
    out: str | Path | None = None,
    *,
    split: str = "test",
    dims: list[int] | None = None,
    labels: list[str] | None = None,
) -> str:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into ``out``; return the markdown.

    Rows are ``dims`` (default: the dims every run has, or all if they share none); times are each run's
    recorded training time, summed over its models (and teacher), with the ratio to the first MED run
    (or the first run when there is no MED run).
    """
    if not paths:
        raise MedkgeError("compare: give at least one run folder")
    runs = [load_summary(p, split) for p in paths]
    for run in runs[1:]:
        if (run.dataset, run.fingerprint) != (runs[0].dataset, runs[0].fingerprint):
            raise MedkgeError(f"compare: {run.path} was trained on other data than {runs[0].path}")
    if labels:
        if len(labels) != len(runs):
            raise MedkgeError(f"compare: {len(labels)} labels for {len(runs)} runs")
        for run, label in zip(runs, labels, strict=True):
            run.label = label
    _unique_labels(runs)
    if dims is None:
        shared = set.intersection(*(set(r.dims) for r in runs))
        dims = sorted(shared) if shared else sorted(set().union(*(r.dims for r in runs)))
    reference = next((r for r in runs if r.method == "med"), runs[0])
    markdown = _markdown(runs, dims, reference, split)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "comparison.md", markdown)
        atomic_write(folder / "comparison.csv", _csv(runs, dims, reference))
        plot(runs, folder / "comparison.png", split)
    return markdown


def _unique_labels(runs: list[RunSummary]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} [{run.path.name}]"


def _value(run: RunSummary, dim: int, key: str) -> float | None:
    return run.metrics.get(dim, {}).get(key)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _markdown(runs: list[RunSummary], dims: list[int], reference: RunSummary, split: str) -> str:
    ties = ", ".join(sorted({r.ties for r in runs}))
    lines = [f"Filtered {split} MRR / Hits@10 per dimension on {runs[0].dataset} ({ties} ties)", ""]
    lines.append("| dim | " + " | ".join(r.label for r in runs) + " |")
    lines.append("|---:|" + "---:|" * len(runs))
    for d in dims:
        cells = [
            f"{_fmt(_value(r, d, 'mrr'))} / {_fmt(_value(r, d, 'hits@10'))}" if d in r.metrics else "–" for r in runs
        ]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | models | training time | vs " + reference.label + " | device |",
        "|---|---:|---:|---:|---|",
    ]
    for r in runs:
        ratio = r.train_seconds / reference.train_seconds if reference.train_seconds > 0 else float("nan")
        lines.append(f"| {r.label} | {len(r.dims)} dims | {_duration(r.train_seconds)} | {ratio:.2f}x | {r.device} |")
    return "\n".join(lines) + "\n"


def _csv(runs: list[RunSummary], dims: list[int], reference: RunSummary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "run", "dim", "mrr", "hits@10", "train_seconds", "time_vs_reference"])
    for r in runs:
        ratio = r.train_seconds / reference.train_seconds if reference.train_seconds > 0 else ""
        for d in dims:
            if d in r.metrics:
                writer.writerow(
                    [r.label, str(r.path), d, r.metrics[d]["mrr"], r.metrics[d]["hits@10"], r.train_seconds, ratio]
                )
    return buffer.getvalue()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plot(runs: list[RunSummary], path: Path, split: str = "test") -> None:
    """MRR (left) and Hits@10 (right) against dimension, log-scale x axis, one line per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MedkgeError("compare: the plot needs matplotlib (pip install 'medkge[plot]')") from None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # label the dims of the runs with few dims (DT's); MED's 64 sub-models would crowd the axis
    few = [set(r.dims) for r in runs if len(r.dims) <= 12]
    ticks = sorted(set().union(*few)) if few else sorted({r.dims[0] for r in runs} | {r.dims[-1] for r in runs})
    for ax, key, title in zip(axes, ("mrr", "hits@10"), ("MRR", "Hits@10"), strict=True):
        for r in runs:
            xs = [d for d in r.dims if key in r.metrics[d]]
            ax.plot(xs, [r.metrics[d][key] for d in xs], marker="o" if len(xs) <= 16 else None, ms=4, label=r.label)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("dimension")
        ax.set_ylabel(f"filtered {split} {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
