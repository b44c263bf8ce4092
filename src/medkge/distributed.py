"""Training across processes and machines: the entity table's rows sharded over a torch.distributed job.

``torchrun --nproc-per-node N [--nnodes M ...] -m medkge train ...`` runs the same command as one process;
``medkge.train()`` detects torchrun's environment itself (gloo on the CPU, NCCL on CUDA). This module holds
only what is distributed, behind the two interfaces of the one training pipeline (stores.py):

- :class:`Cluster`, the comm: rank, world size, sums of the replicated parameters' gradients and of logged
  values, barriers, and failure detection (a rank that fails says why through the rendezvous store; the
  others stop at their next collective with one line naming it; a rank killed outright is found by its
  missing heartbeat);
- :class:`ShardedStore`, the entity store: rank r holds rows [lo, hi) of the table (contiguous ranges) and
  their optimiser state. A step's lookup sends each id to the rank that owns it and brings its row back
  (all-to-all); after the backward pass the rows' gradients travel back the same way and each owner applies
  the same optimiser a single process runs (optim.py: dense Adam on its rows, lazy Adam, row-wise Adagrad);
- sharded evaluation: every rank ranks every query against its own rows and the counts are summed;
- the kept model as one shard per rank, assembled by rank 0 into an ordinary ``model.safetensors`` at the end
  (streamed, never whole in memory), so every other command opens the run folder in one process.

Each rank trains consecutive positions of every batch, whose sides and negatives come from keyed streams
(seeding.py): the run's result does not depend on the number of ranks (to float rounding), and a checkpoint
resumes on another number of ranks. The run folder must be on a file system every rank reaches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import runtime
from .evaluation import Metrics, Shard, evaluate
from .files import FORMAT, FORMAT_VERSION, load_tensors, save_tensors, save_tensors_streamed
from .layout import SHARDS_DIR, SHARDS_MANIFEST, rows_file
from .model import CroppableModel
from .optim import row_optimizer
from .seeding import init_entity_rows
from .stores import EntityStore, remove_shards

_HEARTBEAT = 1.0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def connect(device_name: str) -> Cluster:
    """Join the job torchrun started (every rank calls it): the process group, and a failure handler."""
    cluster = Cluster(runtime.resolve_device(device_name))
    signal.signal(signal.SIGTERM, _on_sigterm)
    return cluster


# ---- the process group, and failures ---------------------------------------------------------------


class Cluster:
    """This process's place in the job: rank, world size, device, and the store shared through torchrun."""

    def __init__(self, device: torch.device, timeout_s: float = 600.0):
        self.device = device
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            self.device = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.store = dist.distributed_c10d._get_default_store()
        self.store.set(f"medkge/host/{self.rank}", f"{socket.gethostname()}:{os.getpid()}")
        self._stop = threading.Event()
        self._beater = threading.Thread(target=self._beat, daemon=True)
        self._beater.start()

    def _beat(self) -> None:
        misses = 0
        while not self._stop.wait(_HEARTBEAT):
            try:
                self.store.set(f"medkge/beat/{self.rank}", repr(time.time()))
                misses = 0
            except Exception:
                misses += 1
                if self._stop.is_set():
                    return
                if misses >= 3:  # torchrun's agent, which holds the store, is gone: so is the job
                    print(
                        f"medkge: error: rank {self.rank} lost torchrun's rendezvous store (its launcher stopped); "
                        "stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(3)

    def failed(self, message: str) -> None:
        """Tell the other ranks why this one stops (read by :meth:`who_failed`)."""
        with contextlib.suppress(Exception):
            self.store.set("medkge/failed", f"{self.rank}\t{message}")

    def who_failed(self) -> str:
        """ "rank R ..." for the rank that stopped the job: the one that said why, else one on this machine whose
        process is gone, else the one whose heartbeat stopped (killed outright, or its machine went away)."""
        host = socket.gethostname()
        deadline = time.time() + 4 * _HEARTBEAT
        while time.time() < deadline:
            try:
                if self.store.check(["medkge/failed"]):
                    rank, _, message = self.store.get("medkge/failed").decode().partition("\t")
                    return f"rank {rank} failed: {message}"
                stale = []
                for r in range(self.world):
                    if r == self.rank:
                        continue
                    where, _, pid = self.store.get(f"medkge/host/{r}").decode().rpartition(":")
                    if where == host and not _alive(int(pid)):
                        return f"rank {r} stopped without a word (its process {pid} is gone: killed?)"
                    key = f"medkge/beat/{r}"
                    if self.store.check([key]) and time.time() - float(self.store.get(key).decode()) > 3 * _HEARTBEAT:
                        stale.append(r)
                if stale:
                    return f"rank {stale[0]} stopped without a word (no heartbeat: killed, or its machine went away)"
            except Exception:
                break
            time.sleep(_HEARTBEAT / 4)
        return "another rank stopped (the rendezvous store did not say which)"

    def close(self) -> None:
        # The heartbeat stops before the process group goes, so no thread still uses the store while the
        # group and the interpreter are torn down (see methods.train).
        self._stop.set()
        self._beater.join(timeout=4 * _HEARTBEAT)
        if dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        dist.barrier()

    def all_sum(self, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
        """Sums of tensors across ranks (None stays None), in one collective for those of one dtype."""
        present = [t for t in tensors if t is not None]
        if self.world > 1 and present:
            flat = torch.cat([t.reshape(-1).double() for t in present]).to(self.device)
            dist.all_reduce(flat)
            out, i = [], 0
            for t in present:
                out.append(flat[i : i + t.numel()].view_as(t).to(t.dtype).to(t.device))
                i += t.numel()
            it = iter(out)
            return tuple(None if t is None else next(it) for t in tensors)
        return tensors

    def broadcast_object(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, value: Any) -> list[Any]:
        box: list[Any] = [None] * self.world
        dist.all_gather_object(box, value)
        return box

    def all_to_all(self, tensor: Tensor, send: list[int], receive: list[int]) -> Tensor:
        """Rows ``tensor[...]`` sent to each rank (``send[r]`` consecutive rows to rank r) and those received
        (``receive[r]`` from rank r), in rank order."""
        out = tensor.new_empty(sum(receive), *tensor.shape[1:])
        dist.all_to_all_single(out, tensor.contiguous(), receive, send)
        return out

    def entity_store(self, model: CroppableModel, optimizer: str, seed: int, fused: bool = True) -> EntityStore:
        return ShardedStore(self, model, optimizer, seed, fused)


# ---- the sharded entity table ---------------------------------------------------------------------


class ShardedStore(EntityStore):
    """Rows [lo, hi) of the entity table on this rank (``E * r // world`` to ``E * (r + 1) // world``), their
    optimiser, and the exchange of rows and gradients with the ranks that own the others."""

    def __init__(self, cluster: Cluster, model: CroppableModel, optimizer: str, seed: int, fused: bool = True):
        self.cluster = cluster
        rows, parts, width = model.num_entities, model.interaction.entity_parts, model.dim
        self.shape = (rows, parts, width)
        self.bounds = [rows * r // cluster.world for r in range(cluster.world + 1)]
        self.lo, self.hi = self.bounds[cluster.rank], self.bounds[cluster.rank + 1]
        self.cuts = torch.tensor(self.bounds[1:-1], dtype=torch.long, device=cluster.device)
        self.table = torch.empty(self.hi - self.lo, parts, width, device=cluster.device)
        init_entity_rows(self.table, self.lo, rows, seed, model.init_scale)
        self.updater = row_optimizer(optimizer, self.table, fused, dims=list(model.dims))
        self._step: tuple[Tensor, Tensor, list[int], list[int]] | None = None

    def _ask(self, ids: Tensor) -> tuple[Tensor, Tensor, list[int], list[int]]:
        """(rows [len(ids), parts, width] of sorted distinct ``ids``, the ids asked of this rank, the counts
        sent to and received from each rank): a collective, every rank calls it."""
        ids = ids.to(self.cluster.device)
        owner = torch.searchsorted(self.cuts, ids, right=True)
        send = torch.bincount(owner, minlength=self.cluster.world)
        receive = self.cluster.all_to_all(send, [1] * self.cluster.world, [1] * self.cluster.world)
        send_list, receive_list = send.tolist(), receive.tolist()
        asked = self.cluster.all_to_all(ids, send_list, receive_list)
        mine = self.table.index_select(0, asked - self.lo).flatten(1)
        rows = self.cluster.all_to_all(mine, receive_list, send_list).view(len(ids), *self.shape[1:])
        return rows, asked, send_list, receive_list

    def gather(self, ids: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        rows = torch.unique(ids.to(self.cluster.device))  # sorted: grouped by owner, in rank order
        values, asked, send, receive = self._ask(rows)
        leaf = values.requires_grad_()
        self._step = (leaf, asked, send, receive)
        return leaf, lambda x: torch.searchsorted(rows, x.contiguous())

    def update(self, lr: float) -> None:
        assert self._step is not None
        leaf, asked, send, receive = self._step
        self._step = None
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        back = self.cluster.all_to_all(grad.flatten(1), send, receive)  # to each row's owner
        local, inverse = torch.unique(asked - self.lo, return_inverse=True)
        summed = back.new_zeros(len(local), back.shape[1]).index_add_(0, inverse, back)
        self.updater.step(local, summed.view(len(local), *self.shape[1:]), lr)

    def lookup(self, ids: Tensor) -> Tensor:
        """Rows ``[len(ids), parts, width]`` of any entity ids, without gradient (a collective)."""
        unique, inverse = torch.unique(ids.to(self.cluster.device), return_inverse=True)
        with torch.no_grad():
            return self._ask(unique)[0][inverse]

    def rows(self) -> Tensor:
        return self.table

    # ---- the kept model: a shard per rank, and rank 0's manifest ---------------------------------------
    def keep(self, model: CroppableModel, path: Path) -> None:
        """Each rank writes its rows of the kept model, then rank 0 the relation table and the list of shards
        (written last: it says which shards make the model)."""
        shards, rank = path.parent / SHARDS_DIR, self.cluster.rank
        save_tensors(rows_file(shards, rank), {"entity": self.table}, {"range": [self.lo, self.hi]})
        self.cluster.barrier()
        if rank == 0:
            ranges = [[a, b] for a, b in zip(self.bounds, self.bounds[1:], strict=False)]
            meta = {"spec": model.spec(), "ranges": ranges}
            save_tensors(shards / SHARDS_MANIFEST, {"relation": model.relation}, meta)
            for old in shards.glob("rank-*.safetensors"):  # shards of a run resumed on fewer ranks
                if int(old.stem.split("-")[1]) >= self.cluster.world:
                    old.unlink()
            path.unlink(missing_ok=True)  # a model kept by an earlier part of the run in one process: superseded
        self.cluster.barrier()

    def restore(self, model: CroppableModel, path: Path) -> bool:
        restored = super().restore(model, path)
        self.cluster.barrier()
        return restored

    def finish(self, model: CroppableModel, path: Path) -> None:
        """Rank 0: the model file from the kept shards, streamed shard by shard; then the shards go."""
        if self.cluster.rank == 0 and (path.parent / SHARDS_DIR / SHARDS_MANIFEST).is_file():
            _assemble(path, self.shape)
        self.cluster.barrier()

    def evaluate(self, model: CroppableModel, dataset: Any, split: str, **options: Any) -> Metrics:
        return sharded_evaluate(self, model, dataset, split, **options)


def _assemble(path: Path, shape: tuple[int, int, int]) -> None:
    from safetensors import safe_open

    shards = path.parent / SHARDS_DIR
    relation, meta = load_tensors(shards / SHARDS_MANIFEST, "medkge model shard")

    def pieces():
        for rank in range(len(meta["ranges"])):
            with safe_open(rows_file(shards, rank), framework="pt") as handle:
                yield handle.get_tensor("entity")

    tables = [("entity", torch.float32, list(shape), pieces())]
    tables.append(("relation", torch.float32, list(relation["relation"].shape), [relation["relation"]]))
    save_tensors_streamed(path, tables, {"format": FORMAT, "version": FORMAT_VERSION, "spec": meta["spec"]})
    remove_shards(path)


# ---- sharded evaluation ---------------------------------------------------------------------------


def sharded_evaluate(store: ShardedStore, model: CroppableModel, dataset: Any, split: str, **options: Any) -> Metrics:
    """Filtered ranks of every sub-model on ``split`` (evaluation.evaluate): every rank ranks every query
    against its own rows and the counts are summed across ranks."""
    # a model of this rank's rows only, sharing the store's storage of them (no copy)
    local = CroppableModel.from_spec(model.spec() | {"num_entities": 1}).to(store.table.device)
    local.entity = torch.nn.Parameter(store.table, requires_grad=False)
    with torch.no_grad():
        local.relation.copy_(model.relation.detach())
    shard = Shard(store.lo, store.hi, store.shape[0], store.lookup, store.cluster.all_sum)
    return evaluate(local, dataset, split, shard=shard, **options)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"


def _on_sigterm(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")


_LOST = ("connection", "peer", "timed out", "timeout", "nccl", "gloo", "broken pipe", "signal")


def stop(cluster: Cluster, error: BaseException) -> None:
    """A rank stops: if it lost the others (a collective failed, torchrun stopped it), say on one line which
    rank stopped the job, and exit; if the error is its own, tell the others why (the caller re-raises)."""
    text = str(error) or type(error).__name__
    if isinstance(error, SystemExit) or any(word in text.lower() for word in _LOST):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's stop must not cut the diagnosis short
        reason = cluster.who_failed()
        print(f"medkge: error: {reason}; rank {cluster.rank} stops too", file=sys.stderr, flush=True)
        os._exit(3)
    cluster.failed(text.splitlines()[0])
