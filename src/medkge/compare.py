"""Compare finished runs: one table (markdown and CSV) and one plot of quality against dimension.

``medkge compare RUN1 RUN2 ... --out DIR`` reads each run's ``results.json`` and ``config.yaml`` (no model
is loaded): MRR and Hits@10 per dim per method, the training time each run recorded and its ratio to
MED's, and a PNG with MRR (and Hits@10) against dimension on a log-scale x axis. Runs whose configs differ
only in the seed (or in settings that do not change what is trained: threads, device, checkpoints, the
teacher's folder) are one method trained with several seeds: the table gives their mean and sample
standard deviation, the CSV both in columns, the plot the mean with error bars.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, MedConfig
from .errors import MedkgeError
from .evaluation import is_full
from .files import atomic_write, read_json
from .layout import CONFIG_FILE, RESULTS_FILE
from .model import DEFAULT_DIMS

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
    seed: int = 0
    key: str = ""  # the config without the seed: runs with the same key are seeds of one method
    protocol: str = "full"  # how the figures were made: "full", "full, N of M triples (seed S)", "sampled (...)"


# settings that do not change what a run trains: runs differing only in these (and the seed) are grouped
_NOT_THE_METHOD = {
    "train": ("seed", "threads", "device", "checkpoint_every", "tune_malloc"),
    "eval": ("memory_budget",),
    "distill": ("teacher",),  # each seed distils its own seed's teacher
}


def method_settings(cfg: Config) -> dict[str, Any]:
    """The config as dotted keys (``train.lr``), without the seed and the settings that do not change what
    is trained."""
    data = cfg.to_dict()
    for section, keys in _NOT_THE_METHOD.items():
        for key in keys:
            data[section].pop(key, None)
    loss = data["loss"]
    if loss["regularizer"] == "none" or not loss["reg_weight"]:
        # no regularizer: its weight and whether it reaches the angles change nothing (run folders from before
        # loss.reg_angles was turned off record it on, and are the same method as today's without a regularizer)
        loss.update(regularizer="none", reg_weight=0.0, reg_angles=False)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            flat[key] = value
    return flat


def method_key(cfg: Config) -> str:
    """The config as JSON without the seed and the settings that do not change what is trained."""
    return json.dumps(method_settings(cfg), sort_keys=True)


def method_label(cfg: Config) -> str:
    """A label from the config: the method, and for MED the parts switched from their default (with EI's
    reading and weights where they differ from the defaults) and the number of sub-models when it is not
    the default 64. ML, EI and DLW all off reads "base loss only"."""
    label = METHOD_NAMES.get(cfg.method, cfg.method)
    if cfg.method != "med":
        return label
    med, defaults, changes = cfg.med, MedConfig(), []
    ei = "EI"
    if med.evolutionary:  # EI's reading and weights, where they are not the defaults
        readings = [getattr(med, k) for k in ("ei_positives", "ei_negatives")]
        if readings != [defaults.ei_positives, defaults.ei_negatives]:
            ei += " " + "/".join(readings)
        for key, name in (("w1", "w1"), ("w2", "w2"), ("pos_temperature", "T")):
            if getattr(med, key) != getattr(defaults, key):
                ei += f", {name} {getattr(med, key):g}"
    if not (med.mutual_learning or med.evolutionary or med.dynamic_weights):
        changes.append("base loss only")
    else:
        for key, name in (("mutual_learning", "ML"), ("evolutionary", ei), ("dynamic_weights", "DLW")):
            if getattr(med, key) != getattr(defaults, key):
                changes.append(f"with {name}" if getattr(med, key) else f"no {name}")
        if med.evolutionary and defaults.evolutionary and ei != "EI":
            changes.append(ei)
    if cfg.model.dims != list(DEFAULT_DIMS):
        changes.append(f"{len(cfg.model.dims)} sub-models")
    return f"{label} ({', '.join(changes)})" if changes else label


@dataclass
class MethodSummary:
    """One method: the runs of its seeds, with the mean and sample standard deviation of each metric."""

    label: str
    runs: list[RunSummary] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.runs[0].method

    @property
    def dims(self) -> list[int]:
        """The dims every seed has."""
        return sorted(set.intersection(*(set(r.dims) for r in self.runs)))

    @property
    def train_seconds(self) -> float:
        return statistics.fmean(r.train_seconds for r in self.runs)

    @property
    def device(self) -> str:
        return ", ".join(dict.fromkeys(r.device for r in self.runs))

    def values(self, dim: int, key: str) -> list[float]:
        return [r.metrics[dim][key] for r in self.runs if key in r.metrics.get(dim, {})]

    def mean(self, dim: int, key: str) -> float | None:
        values = self.values(dim, key)
        return statistics.fmean(values) if len(values) == len(self.runs) else None

    def std(self, dim: int, key: str) -> float | None:
        """Sample standard deviation over the seeds (None for one seed)."""
        values = self.values(dim, key)
        return statistics.stdev(values) if len(values) == len(self.runs) > 1 else None


def load_summary(path: str | Path, split: str = "test") -> RunSummary:
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise MedkgeError(f"{folder}: not a medkge run folder (no {CONFIG_FILE})")
    if not (folder / RESULTS_FILE).is_file():
        raise MedkgeError(
            f"{folder}: not finished (no {RESULTS_FILE}); finish it with `medkge train --resume {folder}`"
        )
    cfg = Config.from_run_folder(folder)
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
        cfg.train.seed,
        method_key(cfg),
        str(results[split].get("protocol", "full")),
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

    Runs of one method with several seeds (configs equal but for the seed; with ``labels``, runs given the
    same label) are reported as one: mean and sample standard deviation over the seeds. Rows are ``dims``
    (default: the dims every run has, or all if they share none); times are each run's recorded training
    time, summed over its models (and teacher), averaged over seeds, with the ratio to the first MED
    method (or the first method when there is no MED run).
    """
    methods = summarize(paths, split, labels)
    if dims is None:
        shared = set.intersection(*(set(m.dims) for m in methods))
        dims = sorted(shared) if shared else sorted(set().union(*(m.dims for m in methods)))
    reference = next((m for m in methods if m.method == "med"), methods[0])
    markdown = _markdown(methods, dims, reference, split)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "comparison.md", markdown)
        atomic_write(folder / "comparison.csv", _csv(methods, dims, reference))
        plot(methods, folder / "comparison.png", split)
    return markdown


def summarize(paths: list[str | Path], split: str = "test", labels: list[str] | None = None) -> list[MethodSummary]:
    """The runs, read and grouped into methods (seeds of one method together) as :func:`compare` reports them."""
    if not paths:
        raise MedkgeError("compare: give at least one run folder")
    runs = [load_summary(p, split) for p in paths]
    for run in runs[1:]:
        if (run.dataset, run.fingerprint) != (runs[0].dataset, runs[0].fingerprint):
            raise MedkgeError(f"compare: {run.path} was trained on other data than {runs[0].path}")
    if labels and len(labels) != len(runs):
        raise MedkgeError(f"compare: {len(labels)} labels for {len(runs)} runs")
    _refuse_duplicates(runs, labels)
    if labels:
        for run, label in zip(runs, labels, strict=True):
            run.label, run.key = label, label
    return _group(runs)


def _refuse_duplicates(runs: list[RunSummary], labels: list[str] | None) -> None:
    """One run given twice, or a copy of it (the same config and seed) among one method's seeds, would count
    as two seeds with no spread between them."""
    folders: dict[Path, RunSummary] = {}
    seeds: dict[tuple[str, str, int], RunSummary] = {}
    for i, run in enumerate(runs):
        folder = run.path.resolve()
        if folder in folders:
            raise MedkgeError(f"compare: {run.path} is given twice (as {folders[folder].path}); give each run once")
        folders[folder] = run
        group = labels[i] if labels else run.key
        earlier = seeds.setdefault((group, run.key, run.seed), run)
        if earlier is not run:
            raise MedkgeError(
                f"compare: {earlier.path} and {run.path} have the same config and seed ({run.seed}): one run twice "
                "would count as two seeds; give runs of other seeds, or tell them apart with --labels"
            )


def _group(runs: list[RunSummary]) -> list[MethodSummary]:
    """Runs with the same key, in the order their first run was given; labels made unique."""
    groups: dict[str, MethodSummary] = {}
    for run in runs:
        groups.setdefault(run.key, MethodSummary(run.label)).runs.append(run)
    methods = list(groups.values())
    seen: dict[str, int] = {}
    for m in methods:
        seen[m.label] = seen.get(m.label, 0) + 1
    for m in methods:
        if seen[m.label] > 1:
            m.label = f"{m.label} [{m.runs[0].path.name}]"
        if len(m.runs) > 1:
            m.label = f"{m.label}, {len(m.runs)} seeds"
    return methods


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _markdown(methods: list[MethodSummary], dims: list[int], reference: MethodSummary, split: str) -> str:
    ties = ", ".join(sorted({r.ties for m in methods for r in m.runs}))
    dataset = methods[0].runs[0].dataset
    several = any(len(m.runs) > 1 for m in methods)
    lines = [f"Filtered {split} MRR / Hits@10 per dimension on {dataset} ({ties} ties)"]
    if several:
        lines[0] += "; mean ± sample standard deviation over the seeds"
    lines += _protocol_note(methods)
    lines += ["", "| dim | " + " | ".join(m.label for m in methods) + " |", "|---:|" + "---:|" * len(methods)]
    for d in dims:
        cells = []
        for m in methods:
            if d not in m.dims:
                cells.append("–")
                continue
            mrr = _fmt(m.mean(d, "mrr"), m.std(d, "mrr"))
            cells.append(f"{mrr} / {_fmt(m.mean(d, 'hits@10'), m.std(d, 'hits@10'))}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | models | seeds | training time | vs " + reference.label + " | device |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for m in methods:
        ratio = m.train_seconds / reference.train_seconds if reference.train_seconds > 0 else float("nan")
        seeds = ", ".join(str(r.seed) for r in m.runs)
        time = _duration(m.train_seconds) + (" (mean)" if len(m.runs) > 1 else "")
        lines.append(f"| {m.label} | {len(m.dims)} dims | {seeds} | {time} | {ratio:.2f}x | {m.device} |")
    return "\n".join(lines) + "\n"


def _protocols(method: MethodSummary) -> str:
    """The protocols of a method's runs, " / " between them where its seeds differ in it."""
    return " / ".join(dict.fromkeys("full" if is_full(r.protocol) else r.protocol for r in method.runs))


def _protocol_note(methods: list[MethodSummary]) -> list[str]:
    """Lines that say how the figures were made where it is not the full protocol on the whole split (a
    validation on a subset or on sampled candidates), and warn where the runs differ in it."""
    protocols = {m.label: _protocols(m) for m in methods}
    mixed = any(" / " in p for p in protocols.values()) or len(set(protocols.values())) > 1
    if not mixed:
        protocol = next(iter(protocols.values()))
        return [] if protocol == "full" else ["", f"Protocol: {protocol}."]
    each = "; ".join(f"{label}: {protocol}" for label, protocol in protocols.items())
    return ["", f"**The runs were evaluated on different protocols, so their figures are not comparable**: {each}."]


def _csv(methods: list[MethodSummary], dims: list[int], reference: MethodSummary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "method",
            "run",
            "dim",
            "mrr",
            "hits@10",
            "train_seconds",
            "time_vs_reference",
            "seeds",
            "mrr_std",
            "hits@10_std",
            "protocol",
        ]
    )
    for m in methods:
        ratio = m.train_seconds / reference.train_seconds if reference.train_seconds > 0 else ""
        runs = ";".join(str(r.path) for r in m.runs)
        protocol = _protocols(m)
        for d in dims:
            if d in m.dims:
                std = [m.std(d, "mrr"), m.std(d, "hits@10")]
                row = [m.label, runs, d, m.mean(d, "mrr"), m.mean(d, "hits@10"), m.train_seconds, ratio, len(m.runs)]
                writer.writerow(row + ["" if x is None else x for x in std] + [protocol])
    return buffer.getvalue()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plot(methods: list[MethodSummary], path: Path, split: str = "test") -> None:
    """MRR (left) and Hits@10 (right) against dimension, log-scale x axis, one line per method: the mean over
    its seeds, with error bars (a band for many dims) of one standard deviation."""
    plt = pyplot("compare")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # label the dims of the methods with few dims (DT's); MED's 64 sub-models would crowd the axis
    few = [set(m.dims) for m in methods if len(m.dims) <= 12]
    ticks = sorted(set().union(*few)) if few else sorted({m.dims[0] for m in methods} | {m.dims[-1] for m in methods})
    for ax, key, title in zip(axes, ("mrr", "hits@10"), ("MRR", "Hits@10"), strict=True):
        for m in methods:
            xs = [d for d in m.dims if m.mean(d, key) is not None]
            ys = [m.mean(d, key) for d in xs]
            marker = "o" if len(xs) <= 16 else None
            if len(m.runs) == 1:
                ax.plot(xs, ys, marker=marker, ms=4, label=m.label)
                continue
            errors = [m.std(d, key) for d in xs]
            if len(xs) <= 16:
                ax.errorbar(xs, ys, yerr=errors, marker=marker, ms=4, capsize=3, label=m.label)
            else:
                (line,) = ax.plot(xs, ys, label=m.label)
                low = [y - e for y, e in zip(ys, errors, strict=True)]
                high = [y + e for y, e in zip(ys, errors, strict=True)]
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("dimension")
        ax.set_ylabel(f"filtered {split} {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    note = _protocol_note(methods)  # a protocol other than the full one, or runs that differ in it
    if note:
        fig.suptitle(note[-1].replace("**", ""), fontsize=8, wrap=True)
    save_png(fig, path)


def pyplot(command: str) -> Any:
    """matplotlib's pyplot on the file-only backend, or a one-line error naming ``command``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MedkgeError(f"{command}: the plot needs matplotlib (pip install 'medkge[plot]')") from None
    return plt


def save_png(fig: Any, path: Path) -> None:
    """Write a figure as a PNG (atomically) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
