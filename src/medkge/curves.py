"""Learning curves: validation quality (and training loss) against epoch, per dim, from runs' ``metrics.jsonl``.

``medkge curves RUN [RUN ...] --out DIR`` reads only the log (no model is loaded), so it works on a run still
training and on the records committed under docs/results. A run logs one validation record per ``eval.every``
epochs holding every validated dim (MED: all sub-models; DT, BKD, DualDE: one model per record, tagged
``dim_<d>``); the table and the plot show a few dims (by default 10, 40, 160, 640 of MED's 64: each width 4x
the last) so that a curve that peaks early and falls, or one still rising, is seen at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .compare import pyplot, save_png
from .config import Config
from .errors import MedkgeError
from .evaluation import is_full
from .files import atomic_write, read_json, read_jsonl
from .layout import CONFIG_FILE, LOG_FILE, RESULTS_FILE


@dataclass
class Curve:
    """One model's validation metric and training loss per epoch."""

    label: str
    dim: int
    valid: dict[int, float] = field(default_factory=dict)  # epoch -> metric
    loss: dict[int, float] = field(default_factory=dict)  # epoch -> mean training loss


def spaced_dims(dims: list[int], factor: int = 4) -> list[int]:
    """A few of ``dims``: the smallest, then each first one at least ``factor`` times the last kept, and the
    largest (10, 40, 160, 640 of 10, 20, ..., 640)."""
    dims = sorted(set(dims))
    if len(dims) <= 6:
        return dims
    kept = [dims[0]]
    for d in dims[1:]:
        if d >= kept[-1] * factor:
            kept.append(d)
    return kept if kept[-1] == dims[-1] else [*kept, dims[-1]]


def _series_label(tag: str, dim: int) -> str:
    """``dim_40`` -> "40", ``dim_40/student`` -> "40 student", ``teacher`` at 640 -> "640 teacher", "" -> "40"."""
    own = f"dim_{dim}"
    if tag == own or not tag:
        return str(dim)
    if tag.startswith(own + "/"):
        return f"{dim} {tag[len(own) + 1 :]}"
    return f"{dim} {tag}"


def load_curves(folder: str | Path, dims: list[int] | None = None, metric: str = "mrr") -> list[Curve]:
    """The curves of one run folder (or a record folder with its ``metrics.jsonl``), one per model and dim,
    ordered by dim. ``dims``: those to keep (default: ``spaced_dims`` of the validated ones). A record logged
    again (a resumed run) replaces the earlier one of its epoch."""
    path = Path(folder) / LOG_FILE
    if not path.is_file():
        raise MedkgeError(f"{folder}: no {LOG_FILE} (not a run folder, or a run that has not started)")
    curves: dict[tuple[str, int], Curve] = {}
    losses: dict[str, dict[int, float]] = {}
    for record in read_jsonl(path):
        tag, epoch = str(record.get("model", "")), record.get("epoch")
        if record.get("type") == "epoch" and "loss" in record:
            losses.setdefault(tag, {})[int(epoch)] = float(record["loss"])
        elif record.get("type") == "valid":
            for dim, values in record.get("dims", {}).items():
                if metric not in values:
                    known = ", ".join(sorted(values))
                    raise MedkgeError(f"{path}: no validation metric {metric!r} (logged: {known})")
                key = (tag, int(dim))
                if key not in curves:  # a model's curves share its one loss per epoch
                    curves[key] = Curve(_series_label(tag, int(dim)), int(dim), loss=losses.setdefault(tag, {}))
                curves[key].valid[int(epoch)] = float(values[metric])
    if not curves:
        raise MedkgeError(f"{path}: no validation logged yet (set eval.every to validate during training)")
    wanted = set(dims) if dims else set(spaced_dims([d for _, d in curves]))
    missing = sorted(wanted - {d for _, d in curves})
    if missing:
        validated = sorted({d for _, d in curves})
        raise MedkgeError(f"{folder}: no validation of dims {missing} (validated: {validated})")
    return sorted((c for (_, d), c in curves.items() if d in wanted), key=lambda c: (c.dim, c.label))


def valid_protocol(folder: str | Path) -> str:
    """How a run validated, as its validations logged it ("full", "full, 1,000 of 3,034 triples (seed 0)",
    "sampled (...)"; "A, then B" where a resumed run changed it); for logs written before the protocol was
    logged, as its recorded validation says, or its config ("full" or "sampled", "on up to N triples" where it
    asked for a subset); "" where none is at hand."""
    folder = Path(folder)
    log = folder / LOG_FILE
    records = read_jsonl(log) if log.is_file() else []
    logged = dict.fromkeys(str(r["protocol"]) for r in records if r.get("type") == "valid" and "protocol" in r)
    if logged:
        return ", then ".join("full" if is_full(p) else p for p in logged)
    results = read_json(folder / RESULTS_FILE) if (folder / RESULTS_FILE).is_file() else {}
    if "protocol" in (results.get("valid") or {}):
        protocol = str(results["valid"]["protocol"])
        return "full" if is_full(protocol) else protocol
    if not (folder / CONFIG_FILE).is_file():
        return ""
    ev = Config.from_run_folder(folder).eval
    protocol = ev.protocol if ev.valid_protocol == "same" else ev.valid_protocol
    return protocol + (f" on up to {ev.valid_triples:,} triples" if ev.valid_triples else "")


def curves_table(runs: dict[str, list[Curve]], metric: str = "mrr", protocols: dict[str, str] | None = None) -> str:
    """A markdown table: one row per validated epoch, one column per run and dim; below it, each run's best
    validation per dim and the protocol of its validation."""
    columns = [(name, c) for name, curves in runs.items() for c in curves]
    prefix = len(runs) > 1
    header = ["epoch", *[f"{name}: {c.label}" if prefix else c.label for name, c in columns]]
    epochs = sorted({e for _, c in columns for e in c.valid})
    lines = [
        f"Validation {metric} per epoch (columns: dims)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
    ]
    for epoch in epochs:
        cells = [f"{c.valid[epoch]:.3f}" if epoch in c.valid else "" for _, c in columns]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    for name, curves in runs.items():
        best = ", ".join(f"{c.label}: {max(c.valid.values()):.3f} at {max(c.valid, key=c.valid.get)}" for c in curves)
        protocol = (protocols or {}).get(name)
        lines += ["", f"{name}{f' ({protocol} validation)' if protocol else ''}: best {best}"]
    return "\n".join(lines) + "\n"


def plot_curves(
    runs: dict[str, list[Curve]], path: Path, metric: str = "mrr", protocols: dict[str, str] | None = None
) -> None:
    """Validation ``metric`` (left) and the mean training loss (right, log scale) against epoch; the
    validation's protocol above, where it is not the full one."""
    plt = pyplot("curves")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    prefix = len(runs) > 1
    # several runs: a colour per dim and a line style per run, so the same size reads the same across runs
    colours = {
        label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(c.label for cs in runs.values() for c in cs))
    }
    for index, (name, curves) in enumerate(runs.items()):
        style = ("-", "--", ":", "-.")[index % 4]
        # a MED run logs one loss for all its sub-models (one dict shared by its curves): drawn once
        shared = len({id(c.loss) for c in curves}) == 1
        drawn: set[int] = set()
        for c in curves:
            label = f"{name}: {c.label}" if prefix else c.label
            epochs = sorted(c.valid)
            colour = colours[c.label]
            left.plot(epochs, [c.valid[e] for e in epochs], style, color=colour, marker="o", ms=3, label=label)
            if c.loss and id(c.loss) not in drawn:
                drawn.add(id(c.loss))
                loss = sorted(c.loss.items())
                right.plot(
                    [e for e, _ in loss],
                    [v for _, v in loss],
                    style,
                    color="0.2" if shared and prefix else colour,
                    label=name if shared else label,
                )
    other = {name: p for name, p in (protocols or {}).items() if p and p != "full"}
    if other:
        left.set_title("; ".join(f"{name}: {p}" if prefix else p for name, p in other.items()), fontsize=8)
    left.set_xlabel("epoch")
    left.set_ylabel(f"validation {metric}")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    right.set_xlabel("epoch")
    right.set_ylabel("training loss (epoch mean)")
    right.set_yscale("log")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    save_png(fig, path)


def curves(
    folders: list[str | Path],
    out: str | Path | None = None,
    *,
    dims: list[int] | None = None,
    metric: str = "mrr",
    labels: list[str] | None = None,
) -> str:
    """The curves table of ``folders``; with ``out``, also written there as curves.md and curves.png."""
    if labels is not None and len(labels) != len(folders):
        raise MedkgeError(f"curves: {len(labels)} labels for {len(folders)} runs")
    names = labels or [Path(f).resolve().name for f in folders]
    if len(set(names)) != len(names):
        raise MedkgeError("curves: two runs have the same name: give --labels")
    runs = {name: load_curves(f, dims, metric) for name, f in zip(names, folders, strict=True)}
    protocols = {name: valid_protocol(f) for name, f in zip(names, folders, strict=True)}
    table = curves_table(runs, metric, protocols)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "curves.md", table.encode())
        plot_curves(runs, out / "curves.png", metric, protocols)
    return table
