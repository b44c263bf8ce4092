"""Optimisers: PyTorch's fused dense Adam, and row-wise updates of the entity table for large graphs.

A training step touches only the entity rows of its batch (about B * (1 + K) of them), but a dense
optimiser reads and writes the whole table, its gradient and its state: O(entities) per step. On graphs
of millions of entities medkge updates only the touched rows instead:

- ``sparse_adam``: Adam with per-row moments, updated only for the rows a step touches ("lazy" Adam, the
  update of ``torch.optim.SparseAdam``): a touched row gets exactly the dense Adam update of its gradient,
  an untouched row and its moments stay as they are; bias correction counts the steps of the run.
- ``row_adagrad``: row-wise Adagrad, PyTorch-BigGraph's choice and fbgemm's EXACT_ROWWISE_ADAGRAD: one
  accumulator per row, ``state[row] += mean(g_row ** 2)``, ``row -= lr * g_row / (sqrt(state[row]) + eps)``.
  Its state is one float per row instead of Adam's two per coordinate, so it fits where Adam does not.

The relation table and the objective's few parameters are small and stay dense: Adam with
``sparse_adam``, Adagrad (element-wise, as PyTorch-BigGraph) with ``row_adagrad``.
:func:`choose` picks the optimiser for ``train.optimizer: auto`` (the rule and its measurements are in
benchmarks/README.md, scale.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

OPTIMIZERS = ("auto", "adam", "sparse_adam", "row_adagrad")
SPARSE = ("sparse_adam", "row_adagrad")
# ``auto`` keeps dense Adam while the table has at most this many rows per row a step gathers: below it a
# step touches a large share of the table anyway and one fused pass over everything is faster. Measured
# (benchmarks/scale.py steps, RotatE 10..640, 67,584 rows a step): dense Adam faster at 150k and 300k
# entities (2.2 and 4.4 rows per gathered row), lazy Adam faster at 500k (7.4); 6 lies between.
DENSE_ROWS_PER_TOUCHED_ROW = 6


def adam(params: list[dict[str, Any]] | list[Tensor], lr: float, fused: bool = True) -> torch.optim.Adam:
    """Adam, fused into one kernel where PyTorch has one for the device (CPU, CUDA) unless ``fused`` is False.

    The same update as the default implementation (to float rounding) in one pass over each table
    instead of about ten (benchmarks/gradients.py measures the difference on a whole update).
    """
    params = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]  # no generators
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = fused and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


# The learning rate each entity optimiser gets where train.lr is not set (docs/optimizers.md). Adam's and lazy
# Adam's: the best mean validation MRR of `benchmarks/optimizers.py grid` on Kinships and UMLS (MED RotatE, 50
# epochs); the paper's 0.001 fits its 3000-epoch budget, not tens of epochs (0.643 against 0.741 on Kinships).
# Row-wise Adagrad's depends on the graph: see default_lr.
DEFAULT_LR = {"adam": 0.01, "sparse_adam": 0.01, "row_adagrad": 0.1}
# Row-wise Adagrad's rate falls as the fourth root of how often a step touches each row, from 0.1 (PyTorch-
# BigGraph's) where a step touches a row at most ROW_ADAGRAD_TOUCHES times on average.
ROW_ADAGRAD_TOUCHES = 4.0


def default_lr(optimizer: str, num_entities: int, rows_per_step: int) -> float:
    """The learning rate of entity optimiser ``optimizer`` where ``train.lr`` is unset.

    Adam's step moves a coordinate by about lr whatever its gradient's scale; Adagrad's by lr / sqrt(sum of the
    row's squared gradients), so it depends on how clean a row's gradient is. On a small dense graph a step sums
    hundreds of triples into each row (Kinships: 650 gathered rows per entity), its gradient is clean, and 0.1 is
    too large (-0.16 MRR at 10 dims against 0.03); on a sparse one a step touches a row once or twice (WN18RR:
    1.65), most of it is negative-sample noise, and 0.03 is far too small (-0.14 at 10 dims against 0.1). The
    rule 0.1 * min(1, (4 / touches) ** 0.25) gives 0.028 on Kinships, 0.030 on UMLS, 0.1 on WN18RR and
    FB15k-237 and on the large graphs row-wise Adagrad is for (docs/optimizers.md has the measurements)."""
    if optimizer != "row_adagrad":
        return DEFAULT_LR[optimizer]
    touches = rows_per_step / max(num_entities, 1)
    rate = DEFAULT_LR[optimizer] * min(1.0, (ROW_ADAGRAD_TOUCHES / touches) ** 0.25)
    return float(f"{rate:.2g}")  # two significant digits: the rate a run folder records reads as one


def rows_per_step(batch_size: int, negatives: int, shared_negatives: int = 0) -> int:
    """Entity rows one training step gathers, with repeats: each positive's head and tail, and its own
    negatives or its side's shared chunks (the last chunk of each side padded)."""
    if shared_negatives:
        chunks = 2 * math.ceil(batch_size / 2 / shared_negatives) + 2
        return 2 * batch_size + chunks * negatives
    return batch_size * (2 + negatives)


def choose(name: str, num_entities: int, rows_per_step: int, adam_fits: bool) -> str:
    """The entity optimiser for ``train.optimizer`` ``name``: ``auto`` gives dense Adam on tables of at most
    DENSE_ROWS_PER_TOUCHED_ROW rows per gathered row, lazy Adam above, row-wise Adagrad where Adam's two
    moments per coordinate do not fit in memory (``adam_fits``). A named optimiser is never replaced."""
    if name != "auto":
        return name
    if num_entities <= DENSE_ROWS_PER_TOUCHED_ROW * rows_per_step:
        return "adam"
    return "sparse_adam" if adam_fits else "row_adagrad"


class RowOptimizer:
    """Updates the rows ``rows`` (distinct ids) of one table from their gradient ``grad [len(rows), ...]``.

    Its state is row-indexed tensors (one row per table row: a process holding rows [lo, hi) of a sharded
    table holds their state) and 0-d counters that every process keeps equal, so a checkpoint can be cut
    into row ranges and resumed on another number of processes.
    """

    def __init__(self, table: Tensor):
        self.table = table

    def step(self, rows: Tensor, grad: Tensor, lr: float) -> None:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Tensor]:
        """The state to checkpoint: row-indexed tensors and 0-d counters."""
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        state = self.state_tensors()
        with torch.no_grad():
            for key, value in state.items():
                value.copy_(tensors[key])


class TableAdam(RowOptimizer):
    """Dense Adam over the whole table (PyTorch's, fused where it can be): every row moves every step, by its
    momentum where the step did not touch it. ``step(rows, grad)`` spreads the touched rows' gradient into a
    table-sized one (the sharded path); the one-process path fills ``table.grad`` by autograd and calls
    :meth:`step_dense`."""

    def __init__(self, table: Tensor, fused: bool = True):
        super().__init__(table)
        self.param = table if isinstance(table, torch.nn.Parameter) else torch.nn.Parameter(table, requires_grad=False)
        self.optimizer = adam([self.param], 1e-3, fused=fused)
        # the state exists from the start (a checkpoint before the first step holds it, zeroed)
        on = self.param.device if any(g.get("fused") for g in self.optimizer.param_groups) else "cpu"
        self.optimizer.state[self.param] = {
            "step": torch.zeros((), dtype=torch.float32, device=on),
            "exp_avg": torch.zeros_like(table),
            "exp_avg_sq": torch.zeros_like(table),
        }

    def step(self, rows: Tensor, grad: Tensor, lr: float) -> None:
        full = torch.zeros_like(self.table)
        full.index_copy_(0, rows, grad.to(full.dtype))
        self.param.grad = full
        self.step_dense(lr)

    def step_dense(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.param.grad = None

    def state_tensors(self) -> dict[str, Tensor]:
        return self.optimizer.state[self.param]


class LazyAdam(RowOptimizer):
    """Adam on the touched rows only: a touched row's update equals dense Adam's (torch.optim.Adam, no weight
    decay, no amsgrad) for its gradient; untouched rows and their moments are left alone."""

    def __init__(self, table: Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(table)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = torch.zeros_like(table)
        self.exp_avg_sq = torch.zeros_like(table)
        self.steps = torch.zeros((), dtype=torch.int64)  # steps of the run (bias correction)

    @torch.no_grad()
    def step(self, rows: Tensor, grad: Tensor, lr: float) -> None:
        self.steps += 1
        steps = int(self.steps)
        b1, b2 = self.beta1, self.beta2
        m = self.exp_avg.index_select(0, rows).lerp_(grad, 1 - b1)
        v = self.exp_avg_sq.index_select(0, rows).mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.exp_avg.index_copy_(0, rows, m)
        self.exp_avg_sq.index_copy_(0, rows, v)
        bias1 = 1 - b1**steps
        bias2 = 1 - b2**steps
        # dense Adam: p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)
        denom = v.sqrt_().div_(math.sqrt(bias2)).add_(self.eps)
        self.table.index_add_(0, rows, m.div_(denom), alpha=-lr / bias1)

    def state_tensors(self) -> dict[str, Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}


class RowAdagrad(RowOptimizer):
    """Row-wise Adagrad, one accumulator per row and per block of coordinates: ``state[row, b] += mean(g ** 2)``
    over block b's coordinates, ``row -= lr * g / (sqrt(state[row, b]) + eps)``. With one block it is fbgemm's
    EXACT_ROWWISE_ADAGRAD and PyTorch-BigGraph's RowAdagrad; a croppable model uses its sub-models' blocks
    ``[d_(i-1), d_i)``: a prefix takes part in every sub-model's loss, so its gradients are far larger than the
    tail's, and one accumulator for the whole row would starve the tail (docs/optimizers.md)."""

    def __init__(self, table: Tensor, dims: list[int] | None = None, eps: float = 1e-8):
        super().__init__(table)
        self.eps = eps
        width = table.shape[-1]
        sizes = torch.diff(torch.tensor([0, *(dims or [width])]))  # a model's dims end at its width
        self.block_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(table.device)
        self.block_size = sizes.float().to(table.device) * (table[0].numel() // width)  # coordinates per block
        self.state_sum = torch.zeros(table.shape[0], len(sizes), dtype=torch.float32, device=table.device)

    @torch.no_grad()
    def step(self, rows: Tensor, grad: Tensor, lr: float) -> None:
        square = grad.reshape(len(rows), -1, grad.shape[-1]).float().square().sum(1)  # [rows, width]
        blocks = torch.zeros(len(rows), len(self.block_size), device=grad.device).index_add_(1, self.block_of, square)
        state = self.state_sum.index_select(0, rows).add_(blocks / self.block_size)
        self.state_sum.index_copy_(0, rows, state)
        scale = state.sqrt_().add_(self.eps).reciprocal_().mul_(-lr).index_select(1, self.block_of).to(grad.dtype)
        self.table.index_add_(0, rows, grad * scale.view(len(rows), *([1] * (grad.ndim - 2)), -1))

    def state_tensors(self) -> dict[str, Tensor]:
        return {"state_sum": self.state_sum}


def row_optimizer(name: str, table: Tensor, fused: bool = True, dims: list[int] | None = None) -> RowOptimizer:
    """The entity table's optimiser ``name`` (adam, sparse_adam, row_adagrad) over ``table``; ``dims``: the
    sub-models, whose blocks row-wise Adagrad keeps an accumulator for each."""
    if name == "adam":
        return TableAdam(table, fused=fused)
    if name == "sparse_adam":
        return LazyAdam(table)
    if name == "row_adagrad":
        return RowAdagrad(table, dims)
    raise ValueError(f"not a row-wise optimiser: {name!r}")


def dense_optimizer(name: str, params: list[dict[str, Any]], lr: float, fused: bool = True) -> torch.optim.Optimizer:
    """The optimiser of the dense parameters (the relation table, the objective's weights) beside ``name``'s
    entity optimiser: Adam, or Adagrad beside row-wise Adagrad."""
    if name == "row_adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=1e-8)
    return adam(params, lr, fused=fused)
