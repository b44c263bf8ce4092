"""Memory known before it is spent: an estimate of what a training run allocates, checked at start.

Before any table is allocated, :func:`plan` estimates the tables, the optimiser's state, one step's
buffers, the dataset and evaluation, compares the total with the memory available (or
``train.memory_budget``) and refuses a run that does not fit with one line naming what to change. It also
resolves ``train.optimizer: auto`` (optim.choose), which depends on whether Adam's state fits.

The per-step buffer terms are calibrated against measured peaks (benchmarks/scale.py prints the estimate
beside the measured peak resident memory of each configuration it runs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config
from .datasets import Dataset
from .errors import MedkgeError
from .optim import choose, rows_per_step
from .scoring import get_interaction

GiB = 1 << 30
_FLOAT = 4
_PROCESS = 400 << 20  # Python, torch and pyarrow themselves
_LABEL = 90  # bytes per label held as a Python string in a list
# live [pairs, parts, width] float buffers of one step at its peak, per kernel (forward terms, the backward
# pass's recomputed difference and its gradient), and [pairs, n] score-sized buffers of the objective
_PAIR_BUFFERS = {"cabs": 2.5, "l1": 2.0, "sq": 2.0, "dot": 2.0}
_SCORE_BUFFERS = 10


@dataclass
class MemoryEstimate:
    """Bytes by part, and the bytes available on the device that holds the tables."""

    parts: dict[str, int]
    optimizer: str
    available: int | None
    limit_source: str  # what ``available`` is: the memory available now, or train.memory_budget
    reason: str = ""  # why train.optimizer auto chose this optimiser

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {_gib(size)}" for name, size in self.parts.items() if size >= 1 << 20)
        where = f" of {_gib(self.available)} {self.limit_source}" if self.available else ""
        return f"about {_gib(self.total)}{where} ({parts}; optimizer {self.optimizer})"


def _gib(size: int | None) -> str:
    size = size or 0
    if size < GiB:
        return f"{size / (1 << 20):.0f} MiB"
    return f"{size / GiB:.2f} GiB" if size < 100 * GiB else f"{size / GiB:,.0f} GiB"


def estimate(cfg: Config, dataset: Dataset, optimizer: str, world: int = 1) -> dict[str, int]:
    """Bytes of the run's peak, by part, for the entity optimiser ``optimizer`` (adam, sparse_adam, row_adagrad);
    with ``world`` > 1, of one rank of a distributed run (its share of the entity table and its state)."""
    tc, it = cfg.train, get_interaction(cfg.model.name, cfg.model.p)
    width, n = cfg.model.dims[-1], len(cfg.model.dims) if cfg.method == "med" else 1
    entities, relations = dataset.num_entities, dataset.num_relations
    row = it.entity_parts * width * _FLOAT
    entity = math.ceil(entities / world) * row
    relation = relations * it.relation_parts * width * _FLOAT
    models = 2 if cfg.method in ("bkd", "dualde") else 1  # a student beside its teacher's tables
    parts = {"entity table": entity * models, "relation table": relation * models}
    if optimizer == "adam":
        # a table-sized gradient and two moments, and a second gradient: small per-step buffers take the
        # first one's freed space, so each step's new gradient lands above it (measured: one table more)
        state = 4 * entity + 3 * relation
    elif optimizer == "sparse_adam":
        state = 2 * entity + 3 * relation
    else:
        state = math.ceil(entities / world) * n * _FLOAT + 2 * relation  # an accumulator per row and sub-model
    if cfg.method == "dualde":  # stage 2 trains the teacher densely too
        state += 3 * (entity + relation)
    parts["optimizer state"] = state
    batch, negatives = tc.batch_size, tc.negatives
    gathered = rows_per_step(batch, negatives, tc.shared_negatives)
    gathered = min(gathered, entities + batch) if optimizer != "adam" else gathered
    pairs = batch * (1 + negatives)
    bilinear_block = it.kernel == "dot" and not it.candidates_depend_on_relation and tc.shared_negatives
    step = 2 * gathered * row  # gathered rows and their gradients
    if optimizer != "adam":
        step += (2 + (2 if optimizer == "sparse_adam" else 0)) * min(gathered, entities) * row  # leaf, moments
    if not bilinear_block:
        step += int(_PAIR_BUFFERS[it.kernel] * pairs * max(it.entity_parts, 1) * width * _FLOAT)
    step += _SCORE_BUFFERS * pairs * n * _FLOAT
    parts["step buffers"] = step * models if cfg.method == "dualde" else step
    triples = sum(len(dataset.split(s)) for s in ("train", "valid", "test"))
    parts["dataset"] = triples * 3 * dataset.train.element_size() + (entities + relations) * _LABEL
    evaluates = cfg.eval.every or cfg.eval.test
    # the filter index and sorted keys; the full protocol also scores against an interleaved copy of the
    # table (element-wise kernels) or, for PairRE, a normalised one
    full = "full" in (cfg.eval.protocol, cfg.eval.valid_protocol)
    copy = entity if full and (it.kernel != "dot" or it.normalizes_entities) else 0
    parts["evaluation"] = triples * 56 + copy if evaluates else 0
    parts["process"] = _PROCESS
    return parts


def available_bytes(device: torch.device) -> int | None:
    """Bytes that can be allocated now: free device memory on a GPU; on the CPU MemAvailable, capped by the
    cgroup's limit where one is set. None where neither can be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    values = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            used = Path("/sys/fs/cgroup", usage).read_text().strip()
            if cap.isdigit() and int(cap) < 1 << 60:
                values.append(int(cap) - int(used))
        except (OSError, ValueError):
            pass
    return min(values) if values else None


def plan(cfg: Config, dataset: Dataset, device: torch.device, world: int = 1) -> MemoryEstimate:
    """Resolve the entity optimiser and check that the run (one rank of ``world``) fits; a one-line error
    naming what to change if not."""
    budget = cfg.train.memory_budget
    available = budget if budget else available_bytes(device)
    source = "(train.memory_budget)" if budget else ("free on the GPU" if device.type == "cuda" else "available")
    tc = cfg.train
    rows = rows_per_step(tc.batch_size, tc.negatives, tc.shared_negatives)
    wanted = tc.optimizer
    if cfg.method == "dualde" and wanted == "auto":
        wanted = "adam"
    adam_fits = available is None or sum(estimate(cfg, dataset, "sparse_adam", world).values()) <= available
    optimizer = choose(wanted, dataset.num_entities, rows, adam_fits)
    reason = ""
    if wanted == "auto":
        per_row = dataset.num_entities / rows
        reason = f"{per_row:.1f} entity rows per row a step gathers"
        if optimizer == "row_adagrad":
            need = sum(estimate(cfg, dataset, "sparse_adam", world).values())
            reason = f"Adam's moments would make the run {_gib(need)}, more than {_gib(available)} {source}"
    result = MemoryEstimate(estimate(cfg, dataset, optimizer, world), optimizer, available, source, reason)
    if available is not None and result.total > available:
        raise MedkgeError(f"this run needs {result.describe()}: {_advice(cfg, result)}")
    return result


def _advice(cfg: Config, result: MemoryEstimate) -> str:
    """What to change, the most effective first."""
    parts, advice = result.parts, []
    tables = parts["entity table"] + parts["relation table"]
    widest = f"lower the widest dim (model.dims ends at {cfg.model.dims[-1]}; every table and buffer grows with it)"
    if result.available is not None and tables > result.available:
        advice.append(f"the tables alone need {_gib(tables)}: {widest}, or train across machines")
    else:
        big = max(("optimizer state", "step buffers"), key=parts.__getitem__)
        if big == "optimizer state" and result.optimizer != "row_adagrad":
            advice.append(
                "use train.optimizer=row_adagrad (a float per entity and sub-model, not Adam's two per coordinate)"
            )
        elif not cfg.train.shared_negatives:
            advice.append("share negatives (train.shared_negatives=64) or lower train.batch_size / train.negatives")
        else:
            advice.append("lower train.batch_size or train.negatives")
        advice.append(widest)
    advice.append("or raise train.memory_budget if more memory is free than reported")
    return "; ".join(advice)


def peak_rss() -> int:
    """The process's peak resident memory in bytes.

    On Linux the high-water mark of this program's own memory (``VmHWM``): ``ru_maxrss`` survives ``exec``
    and so reports the parent's resident memory at the fork when that was larger (a benchmark's children
    would show their launcher's peak).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
