"""Where the entity table lives and how its rows learn, and how processes talk: the Trainer's two strategies.

- A *comm* says how this process talks to the others of its job. :class:`Local` is the one-process case:
  rank 0 of 1, sums and barriers that do nothing. ``distributed.Cluster`` is the same interface over
  torch.distributed (torchrun).
- An *entity store* holds the entity rows this process owns and their optimiser (optim.py). For a step it
  gives the rows the batch reads (:meth:`EntityStore.gather`) and, once the loss is backpropagated, applies
  their update (:meth:`EntityStore.update`). :class:`LocalStore` holds the whole table here; with dense Adam
  the batch scores from the table itself (autograd builds a table-sized gradient, fused Adam applies it), with
  a row optimiser (sparse_adam, row_adagrad) the batch's rows are gathered into a leaf and only they are
  updated. ``distributed.ShardedStore`` holds rows [lo, hi) of a table split across processes and exchanges
  rows and gradients with the others; the same optimisers update its rows.

Everything else (sampling, scoring, the loss, validation, checkpoints, the kept model) is the Trainer's, once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import Tensor

from .errors import MedkgeError
from .evaluation import Metrics, evaluate
from .files import check_model_file, load_tensors, save_model
from .layout import SHARDS_DIR, SHARDS_MANIFEST, rows_file
from .model import CroppableModel
from .optim import RowOptimizer, TableAdam, row_optimizer


class Comm(Protocol):
    """How a process talks to the others of its job."""

    rank: int
    world: int
    device: torch.device

    def all_sum(self, *tensors: Tensor | None) -> tuple[Tensor | None, ...]: ...
    def barrier(self) -> None: ...
    def broadcast_object(self, value: Any) -> Any: ...
    def all_gather_object(self, value: Any) -> list[Any]: ...
    def entity_store(self, model: CroppableModel, optimizer: str, seed: int, fused: bool = True) -> EntityStore: ...


class Local:
    """The comm of a process that trains alone."""

    rank = 0
    world = 1

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def all_sum(self, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
        return tensors

    def barrier(self) -> None:
        pass

    def broadcast_object(self, value: Any) -> Any:
        return value

    def all_gather_object(self, value: Any) -> list[Any]:
        return [value]

    def entity_store(self, model: CroppableModel, optimizer: str, seed: int, fused: bool = True) -> EntityStore:
        return LocalStore(model, optimizer, fused)


class EntityStore:
    """The entity rows [lo, hi) of a table of ``num_entities`` that this process holds, and their optimiser."""

    lo: int
    hi: int
    updater: RowOptimizer

    def gather(self, ids: Tensor) -> tuple[Tensor | None, Callable[[Tensor], Tensor] | None]:
        """For a step whose batch reads entity ``ids``: (the table to score from, the map from entity ids to
        its rows); (None, None) to score from the model's own table."""
        raise NotImplementedError

    def update(self, lr: float) -> None:
        """Apply the step's gradient to the rows it touched (after the backward pass)."""
        raise NotImplementedError

    def rows(self) -> Tensor:
        """This process's rows ``[hi - lo, parts, width]`` (the storage itself, not a copy)."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Tensor]:
        """The rows and their optimiser state (row-indexed tensors, and 0-d counters equal on every process)."""
        return {"entity": self.rows(), **{f"state.{k}": v for k, v in self.updater.state_tensors().items()}}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            self.rows().copy_(tensors["entity"])
        self.updater.load_state_tensors({k[6:]: v for k, v in tensors.items() if k.startswith("state.")})

    # the kept model (the best on validation so far)
    def keep(self, model: CroppableModel, path: Path) -> None:
        raise NotImplementedError

    def restore(self, model: CroppableModel, path: Path) -> bool:
        """Put the kept model's rows (of this process) and relation table back in place, wherever it was kept:
        a model file, or the shards of a run that was (last) on several processes; False if nothing was kept."""
        manifest = path.parent / SHARDS_DIR / SHARDS_MANIFEST
        if manifest.is_file():  # written last: the shards it names are whole
            relation, meta = load_tensors(manifest, "medkge model shard")
            sources = [(rows_file(manifest.parent, r), "") for r in range(len(meta["ranges"]))]
            ranges, table = meta["ranges"], relation["relation"]
        elif path.is_file():
            check_model_file(path)
            sources, ranges = [(path, "")], [[0, int(model.num_entities)]]
            with safe_open(path, framework="pt") as f:
                table = f.get_tensor("relation")
        else:
            return False
        read_rows(sources, ranges, self.lo, {"entity": self.rows()})
        with torch.no_grad():
            model.relation.copy_(table)
        return True

    def finish(self, model: CroppableModel, path: Path) -> None:
        """Make the kept model, restored in place, one ordinary model file at ``path`` (after training)."""

    def evaluate(self, model: CroppableModel, dataset: Any, split: str, **options: Any) -> Metrics:
        raise NotImplementedError


class LocalStore(EntityStore):
    """The whole table in this process: the model's own entity table."""

    def __init__(self, model: CroppableModel, optimizer: str, fused: bool = True):
        self.model = model
        self.lo, self.hi = 0, model.num_entities
        self.dense = optimizer == "adam"
        # no table-sized gradient for a row optimiser: the batch's rows are gathered into a leaf per step
        model.entity.requires_grad_(self.dense)
        self.updater = (
            TableAdam(model.entity, fused)
            if self.dense
            else row_optimizer(optimizer, model.entity.data, dims=list(model.dims))
        )
        self._touched: tuple[Tensor, Tensor] | None = None

    def gather(self, ids: Tensor) -> tuple[Tensor | None, Callable[[Tensor], Tensor] | None]:
        if self.dense:
            return None, None
        rows = torch.unique(ids)
        leaf = self.model.entity.detach().index_select(0, rows).requires_grad_()
        self._touched = (rows, leaf)
        return leaf, lambda x: torch.searchsorted(rows, x.contiguous())

    def update(self, lr: float) -> None:
        if self.dense:
            assert isinstance(self.updater, TableAdam)
            self.updater.step_dense(lr)
            return
        assert self._touched is not None
        rows, leaf = self._touched
        self._touched = None
        self.updater.step(rows, leaf.grad if leaf.grad is not None else torch.zeros_like(leaf), lr)

    def rows(self) -> Tensor:
        return self.model.entity.data

    def keep(self, model: CroppableModel, path: Path) -> None:
        save_model(path, model)
        remove_shards(path)  # kept by an earlier part of the run on several processes: superseded

    def finish(self, model: CroppableModel, path: Path) -> None:
        if (path.parent / SHARDS_DIR).is_dir():  # kept on several processes and not improved on since
            self.keep(model, path)

    def evaluate(self, model: CroppableModel, dataset: Any, split: str, **options: Any) -> Metrics:
        return evaluate(model, dataset, split, **options)


def remove_shards(path: Path) -> None:
    """Remove the kept-model shards beside the model file ``path`` (superseded, or assembled into it)."""
    shards = path.parent / SHARDS_DIR
    if shards.is_dir():
        (shards / SHARDS_MANIFEST).unlink(missing_ok=True)  # first: the rest is then no model
        for f in shards.iterdir():
            f.unlink()
        shards.rmdir()


def read_rows(sources: list[tuple[Path, str]], ranges: list[list[int]], lo: int, into: dict[str, Tensor]) -> None:
    """Fill ``into`` (row-indexed tensors of rows [lo, lo + len) by name, and 0-d counters) from files holding
    row ranges: source R (a path and the prefix of its tensors' names) holds rows ``ranges[R]``. Read as slices,
    so rows written by any number of processes load into any other."""
    rows = [v for v in into.values() if v.ndim]
    hi = lo + (len(rows[0]) if rows else 0)
    with torch.no_grad():
        for index, ((path, prefix), (a, b)) in enumerate(zip(sources, ranges, strict=True)):
            start, stop = max(a, lo), min(b, hi)
            if start >= stop and index:
                continue
            try:
                with safe_open(path, framework="pt") as f:
                    for name, target in into.items():
                        if not target.ndim:
                            if not index:  # counters are equal everywhere: read them once
                                target.copy_(f.get_tensor(prefix + name))
                            continue
                        if start < stop:
                            piece = f.get_slice(prefix + name)[start - a : stop - a]
                            target[start - lo : stop - lo] = piece.view_as(target[start - lo : stop - lo])
            except (OSError, KeyError, ValueError) as error:
                raise MedkgeError(f"{path}: rows missing or damaged ({error})") from None
