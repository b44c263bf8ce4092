"""Training across processes and machines: torch.distributed with the entity table sharded by TorchRec.

``torchrun --nproc-per-node N [--nnodes M ...] -m medkge train ...`` runs the same command as a single
process, detected from torchrun's environment (gloo on the CPU, NCCL on CUDA). What each rank holds and does:

- the entity rows ``[lo, hi)`` of the table (TorchRec's ROW_WISE sharding) and their optimiser state,
  updated in the backward pass by TorchRec's fused optimiser (fbgemm's EXACT_ROWWISE_ADAGRAD, the update of
  medkge's ``row_adagrad``; Adam on CUDA for ``sparse_adam``). A lookup sends each id to the rank that owns
  it and brings its row back; the gradients travel back the same way, so only the rows a step touches move;
- the relation table and the objective's parameters, replicated: their gradients are summed across ranks;
- its share (consecutive positions) of every global batch of ``train.batch_size`` positives, whose sides and
  negatives come from generators keyed by (seed, step, position): the run's result does not depend on
  the number of ranks (to float rounding), and a checkpoint can resume with another number of ranks;
- validation and test: every rank scores every query against its own rows and the counts of higher and
  equal candidates are summed across ranks (no rank ever holds the whole table);
- checkpoints: one safetensors shard per rank (its rows and their state) and rank 0's file with the rest,
  written atomically; the kept model: shards, assembled by rank 0 into an ordinary ``model.safetensors``
  at the end (streamed, never whole in memory), so ``medkge evaluate / crop / predict / serve`` open the
  run folder in one process.

A rank that fails writes why into the rendezvous store; the others stop at their next collective with
one line naming it (a rank killed outright is found by its missing heartbeat). Only MED is trained this
way (the baselines train in one process).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import memory, runtime
from .config import Config
from .datasets import Dataset, load_dataset, warn_unseen
from .errors import MedkgeError
from .evaluation import (
    Metrics,
    SampledCandidates,
    _FilterIndex,
    _metrics,
    count_against,
    ranks_from_counts,
    unique_triples,
)
from .files import (
    FORMAT,
    FORMAT_VERSION,
    atomic_write,
    load_tensors,
    read_jsonl,
    save_tensors,
    save_tensors_streamed,
    truncate_jsonl,
    write_json,
    write_vocab,
)
from .losses import MEDObjective
from .model import BlockScorer, CroppableModel, Group
from .run import CHECKPOINT_FILE, CHECKPOINTS_DIR, CONFIG_FILE, LOG_FILE, RESULTS_FILE, eval_protocol, model_checksums
from .sampling import NegativeSampler
from .training import Batch, Trainer, TrainState, make_batch, optimizer_state, optimizer_tensors

INSTALL = (
    "distributed training needs TorchRec: pip install 'medkge[distributed]' and then "
    "pip install --no-deps torchrec==1.8.0 (README: Training on several machines)"
)
SHARDS_DIR = "model-shards"
_BLOCK = 128  # positions of a global batch whose sides and negatives one keyed generator draws
_INIT_ROWS = 4096  # entity rows initialised by one keyed generator
_HEARTBEAT = 1.0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def keyed_generator(*key: int) -> torch.Generator:
    """A generator seeded by a tuple of integers (splitmix64 over the parts: nearby keys give unrelated streams)."""
    state = 0x9E3779B97F4A7C15
    for part in key:
        state = (state ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return torch.Generator().manual_seed(state & 0x7FFFFFFFFFFFFFFF)


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
        # group and the interpreter are torn down (see the end of train_distributed).
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


# ---- the sharded entity table ---------------------------------------------------------------------


class ShardedEntities:
    """The entity table as a TorchRec EmbeddingCollection, sharded row-wise, with a fused row-wise optimiser.

    Rows are flattened to ``parts * width`` floats; :meth:`lookup` returns them as ``[n, parts, width]``.
    """

    def __init__(self, cluster: Cluster, model: CroppableModel, optimizer: str, lr: float):
        _quiet_torchrec()
        try:
            from fbgemm_gpu.split_embedding_configs import EmbOptimType
            from torchrec import EmbeddingCollection, EmbeddingConfig
            from torchrec.distributed.comm_ops import set_gradient_division
            from torchrec.distributed.embedding import EmbeddingCollectionSharder
            from torchrec.distributed.model_parallel import DistributedModelParallel
            from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
            from torchrec.distributed.types import ShardingType
        except ImportError:
            raise MedkgeError(INSTALL) from None
        self.cluster = cluster
        self.shape = tuple(model.entity.shape)  # [E, parts, width]
        dim = self.shape[1] * self.shape[2]
        if optimizer == "row_adagrad":
            fused = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "eps": 1e-8}
        elif optimizer == "sparse_adam" and cluster.device.type == "cuda":
            fused = {"optimizer": EmbOptimType.ADAM, "eps": 1e-8, "beta1": 0.9, "beta2": 0.999}
        else:
            raise MedkgeError(
                f"config: train.optimizer {optimizer} is not available in distributed training on "
                f"{cluster.device.type}: use row_adagrad (sparse_adam needs CUDA: fbgemm's fused Adam)"
            )
        self.optimizer = optimizer
        tables = [EmbeddingConfig(name="entity", embedding_dim=dim, num_embeddings=self.shape[0], feature_names=["e"])]
        collection = EmbeddingCollection(tables=tables, device=torch.device("meta"))
        sharder = EmbeddingCollectionSharder(fused_params={**fused, "learning_rate": lr})
        constraints = {"entity": ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value])}
        topology = Topology(world_size=cluster.world, compute_device=cluster.device.type)
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        plan = planner.collective_plan(collection, [sharder], dist.group.WORLD)
        set_gradient_division(False)  # each rank scales its loss by its share of the global batch instead
        self.module = DistributedModelParallel(
            collection, device=cluster.device, plan=plan, sharders=[sharder], init_data_parallel=False
        )
        (shard,) = self.module.state_dict()["embeddings.entity.weight"].local_shards()
        self.weight = shard.tensor  # a view of TorchRec's own storage of this rank's rows
        self.lo = int(shard.metadata.shard_offsets[0])
        self.hi = self.lo + int(shard.metadata.shard_sizes[0])

    def ranges(self) -> list[tuple[int, int]]:
        """Every rank's row range, in rank order."""
        box: list[Any] = [None] * self.cluster.world
        dist.all_gather_object(box, (self.lo, self.hi))
        return box

    def state(self) -> dict[str, Tensor]:
        """The fused optimiser's state of this rank's rows (row-wise Adagrad: one accumulator per row)."""
        state = self.module.fused_optimizer.state_dict()["state"]["embeddings.entity.weight"]
        return {key.split(".", 1)[1]: value.local_shards()[0].tensor for key, value in state.items()}

    def set_lr(self, lr: float) -> None:
        optimizer = self.module.fused_optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()  # fbgemm takes the learning rate when the optimiser "steps" (the update runs in backward)

    def lookup(self, ids: Tensor) -> Tensor:
        """Rows ``[len(ids), parts, width]`` of global entity ids (a collective: every rank calls it)."""
        from torchrec import KeyedJaggedTensor

        ids = ids.to(self.cluster.device, torch.int64)
        lengths = torch.ones(len(ids), dtype=torch.int32, device=self.cluster.device)
        out = self.module(KeyedJaggedTensor.from_lengths_sync(keys=["e"], values=ids, lengths=lengths))
        return out["e"].values().view(len(ids), *self.shape[1:])

    def fill(self, seed: int, scale: float) -> None:
        """Initialise this rank's rows, uniform in [-scale, scale], from generators keyed by row blocks (the same
        table whatever the number of ranks)."""
        with torch.no_grad():
            rows = self.weight.view(-1, *self.shape[1:])
            for block in range(self.lo // _INIT_ROWS, (self.hi - 1) // _INIT_ROWS + 1):
                start, stop = block * _INIT_ROWS, min((block + 1) * _INIT_ROWS, self.shape[0])
                values = torch.empty(stop - start, *self.shape[1:]).uniform_(
                    -scale, scale, generator=keyed_generator(seed, 1, block)
                )
                lo, hi = max(start, self.lo), min(stop, self.hi)
                rows[lo - self.lo : hi - self.lo] = values[lo - start : hi - start].to(rows.device)


def _quiet_torchrec() -> None:
    """TorchRec's planner logs advice for GPU clusters on every start; medkge says what matters itself."""
    import logging
    import warnings

    for name in ("torchrec", "torch.fx._symbolic_trace"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"torchrec\..*")


# ---- sampling that does not depend on the number of ranks ---------------------------------------------


class KeyedSampler:
    """Sides and negatives of the global batch's positions ``[lo, hi)``, drawn from generators keyed by
    (seed, step, block of positions) or, for shared negatives, by (seed, step, side, chunk)."""

    def __init__(self, sampler: NegativeSampler, seed: int):
        self.sampler, self.seed = sampler, seed

    def sides(self, global_batch: Tensor, step: int) -> Tensor:
        """corrupt_head ``[B]`` of the whole global batch (cheap: one float per position)."""
        out = []
        for b in range(0, len(global_batch), _BLOCK):
            rel = global_batch[b : b + _BLOCK, 1]
            draw = torch.rand(_BLOCK, generator=keyed_generator(self.seed, 2, step, b // _BLOCK))[: len(rel)]
            out.append(draw < self.sampler.head_probability[rel])
        return torch.cat(out)

    def own(self, lo: int, hi: int, step: int) -> Tensor:
        """Negatives ``[hi - lo, K]`` of positions lo..hi-1."""
        k, n = self.sampler.negatives, self.sampler.num_entities
        out = []
        for block in range(lo // _BLOCK, (hi - 1) // _BLOCK + 1):
            ids = torch.randint(n, (_BLOCK, k), generator=keyed_generator(self.seed, 3, step, block))
            a, b = max(lo, block * _BLOCK) - block * _BLOCK, min(hi, (block + 1) * _BLOCK) - block * _BLOCK
            out.append(ids[a:b])
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)

    def shared(self, side: int, chunks: range, step: int) -> Tensor:
        """Negatives ``[len(chunks), K]`` of the given chunks of one side (0: tail, 1: head)."""
        k, n = self.sampler.negatives, self.sampler.num_entities
        rows = [torch.randint(n, (k,), generator=keyed_generator(self.seed, 4, step, side, c)) for c in chunks]
        return torch.stack(rows) if rows else torch.zeros(0, k, dtype=torch.long)


# ---- the trainer ----------------------------------------------------------------------------------


class DistributedTrainer(Trainer):
    """The Trainer on one rank: the same loop, validation, early stopping and logs, with the entity table
    sharded (ShardedEntities), keyed sampling, summed gradients of the replicated parameters, sharded
    evaluation and per-rank checkpoint shards."""

    def __init__(self, cluster: Cluster, config: Config, dataset: Dataset, model: CroppableModel, objective, **kw):
        self.cluster = cluster
        self.folder = Path(kw["model_path"]).parent
        super().__init__(config, dataset, model, objective, progress=kw.pop("progress") and cluster.rank == 0, **kw)
        self.entities = ShardedEntities(cluster, model, self.optimizer_name, self.lr)
        self.entities.fill(config.train.seed, model.init_scale)
        self.keyed = KeyedSampler(self.sampler, config.train.seed)
        self.rows = None  # TorchRec's fused optimiser updates the entity rows

    # ---- one step ------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> list[Tensor]:
        order = torch.randperm(len(self.train_triples), generator=keyed_generator(self.cfg.train.seed, 5, epoch))
        return list(order.split(self.cfg.train.batch_size))

    def step(self, positives: Tensor, lr: float) -> tuple[Tensor, dict[str, Tensor]]:
        """One step of the global batch ``positives [B, 3]``: this rank trains positions [lo, hi) of it."""
        cluster, tc, step = self.cluster, self.cfg.train, self.state.step
        positives = positives.long()
        total = len(positives)
        lo, hi = total * cluster.rank // cluster.world, total * (cluster.rank + 1) // cluster.world
        corrupt_all = self.keyed.sides(positives, step)
        local, corrupt_head = positives[lo:hi], corrupt_all[lo:hi]
        if tc.shared_negatives:
            batch = self._shared_batch(local, corrupt_all, lo, hi, step)
        else:
            batch = make_batch(local, corrupt_head, self.keyed.own(lo, hi, step))
        self.entities.set_lr(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        rows = torch.unique(batch.entity_ids())
        if not len(rows):  # no positives on this rank (a batch smaller than the world): look one row up anyway
            rows = torch.zeros(1, dtype=torch.long)
        leaf = self.entities.lookup(rows)

        def local_ids(ids: Tensor) -> Tensor:
            return torch.searchsorted(rows, ids.contiguous())

        logs: dict[str, Tensor] = {}
        if hi > lo:
            scores = self.model.score_groups([g.remap(local_ids) for g in batch.groups], entity=leaf)
            loss, logs = self.objective(scores, batch)
            share = (hi - lo) / total  # the global batch's mean is the sum of each rank's share of it
        else:  # still take part in the lookup's backward exchange, with a zero gradient
            loss, share = leaf.sum() * 0.0, 0.0
        (loss * share).backward()
        dense = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
        for p, g in zip(dense, cluster.all_sum(*grads), strict=True):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return loss.detach() * share, {k: v.detach() * share for k, v in logs.items()}

    def _shared_batch(self, local: Tensor, corrupt_all: Tensor, lo: int, hi: int, step: int) -> Batch:
        """The local share of a batch with shared negatives. Chunks are numbered over the whole global batch,
        per side, so a chunk may begin on another rank: the first local chunk then starts ``offset`` places in."""
        chunk, groups = self.cfg.train.shared_negatives, []
        corrupt_head = corrupt_all[lo:hi]
        for i, (side, mask) in enumerate((("tail", ~corrupt_all), ("head", corrupt_all))):
            before, count = int(mask[:lo].sum()), int(mask[lo:hi].sum())
            if not count:
                continue
            first, last = before // chunk, (before + count - 1) // chunk
            shared = self.keyed.shared(i, range(first, last + 1), step)
            p = local[corrupt_head if side == "head" else ~corrupt_head]
            anchor, true = (p[:, 0], p[:, 2]) if side == "tail" else (p[:, 2], p[:, 0])
            groups.append(Group(side, anchor, p[:, 1], true[:, None], shared, chunk, before - first * chunk))
        return Batch(groups, local)

    def epoch_means(self, sums: dict[str, Tensor], steps: int) -> dict[str, float]:
        names: list[Any] = [None] * self.cluster.world
        dist.all_gather_object(names, sorted(sums))  # a rank with no positives logged fewer values
        keys = sorted({k for part in names for k in part})
        local = torch.stack([sums[k].double() if k in sums else torch.zeros((), dtype=torch.float64) for k in keys])
        (total,) = self.cluster.all_sum(local)
        return {k: float(total[i]) / steps for i, k in enumerate(keys)}

    # ---- evaluation and the kept model -------------------------------------------------------------
    def evaluate_valid(self) -> Metrics:
        return sharded_evaluate(self, "valid")

    def keep_model(self) -> None:
        """Each rank writes its rows of the kept model, then rank 0 the relation table and the list of shards
        (written last: it says which shards make the model)."""
        shards, rank = self.folder / SHARDS_DIR, self.cluster.rank
        save_tensors(shards / f"rank-{rank}.safetensors", {"entity": self.entities.weight}, {"range": self.range})
        ranges = self.entities.ranges()
        self.cluster.barrier()
        if rank == 0:
            meta = {"spec": self.model.spec(), "ranges": ranges}
            save_tensors(shards / "relation.safetensors", {"relation": self.model.relation}, meta)
            for old in shards.glob("rank-*.safetensors"):  # shards of a run resumed on fewer ranks
                if int(old.stem.split("-")[1]) >= len(ranges):
                    old.unlink()
        self.cluster.barrier()

    @property
    def range(self) -> list[int]:
        return [self.entities.lo, self.entities.hi]

    def log(self, record: dict[str, Any]) -> None:
        if self.cluster.rank == 0:
            super().log(record)
        else:
            self.log_lines += 1

    def drop_earlier_attempt(self) -> None:
        if self.cluster.rank == 0:
            super().drop_earlier_attempt()
        self.log_lines = self.cluster.broadcast_object(self.log_lines)

    # ---- checkpoints: a shard per rank, and rank 0's file ---------------------------------------------
    def save_checkpoint(self, final: bool = False) -> None:
        self.state.log_lines = self.log_lines
        if final:  # progress only, as in one process: the shards of the last checkpoint go
            if self.cluster.rank == 0:
                save_tensors(self.checkpoint_path, {}, {"state": self.state.__dict__, "distributed": True})
                _remove_checkpoints(self.folder, keep=None)
            self.cluster.barrier()
            return
        step = self.state.step
        folder = self.folder / CHECKPOINTS_DIR / f"step-{step}"
        tensors = {"entity": self.entities.weight, **{f"state.{k}": v for k, v in self.entities.state().items()}}
        save_tensors(folder / f"rank-{self.cluster.rank}.safetensors", tensors, {"range": self.range})
        ranges = self.entities.ranges()
        self.cluster.barrier()  # every shard is on disk before rank 0's file points at them
        if self.cluster.rank == 0:
            tensors = {"model.relation": self.model.relation}
            for i, p in enumerate(self.extra_parameters):
                tensors[f"extra.{i}"] = p
            optim = self.optimizer.state_dict()
            tensors |= optimizer_tensors(optim)
            shards = {"step": step, "world": self.cluster.world, "ranges": ranges}
            shards |= {"shape": list(self.entities.shape), "optimizer": self.optimizer_name}
            metadata = {"state": self.state.__dict__, "param_groups": optim["param_groups"], "distributed": shards}
            save_tensors(self.checkpoint_path, tensors, metadata)
            _remove_checkpoints(self.folder, keep=folder.name)
        self.cluster.barrier()

    def load_checkpoint(self) -> None:
        tensors, metadata = load_tensors(self.checkpoint_path, "medkge checkpoint")
        info = metadata.get("distributed")
        if metadata.get("state", {}).get("finished"):
            self.state = TrainState(**metadata["state"])
            return
        if not isinstance(info, dict):
            raise MedkgeError(f"{self.checkpoint_path}: a single-process checkpoint; resume it without torchrun")
        if info["shape"] != list(self.entities.shape) or info["optimizer"] != self.optimizer_name:
            raise MedkgeError(
                f"{self.checkpoint_path}: does not match this run (table {info['shape']}, optimizer "
                f"{info['optimizer']}; this run: {list(self.entities.shape)}, {self.optimizer_name})"
            )
        folder = self.folder / CHECKPOINTS_DIR / f"step-{info['step']}"
        self._load_rows(folder, info["ranges"])
        with torch.no_grad():
            self.model.relation.copy_(tensors["model.relation"])
            for i, p in enumerate(self.extra_parameters):
                p.copy_(tensors[f"extra.{i}"])
        self.optimizer.load_state_dict({"state": optimizer_state(tensors), "param_groups": metadata["param_groups"]})
        self.state = TrainState(**metadata["state"])
        if self.cluster.rank == 0:
            truncate_jsonl(self.log_path, self.state.log_lines)
        self.log_lines = self.state.log_lines
        if info["world"] != self.cluster.world and self.cluster.rank == 0:
            self.say(f"re-sharding the checkpoint of {info['world']} ranks onto {self.cluster.world}")

    def _load_rows(self, folder: Path, ranges: list[list[int]]) -> None:
        """This rank's rows (and their optimiser state) from a checkpoint's shards, whatever its number of ranks."""
        state = {f"state.{k}": v for k, v in self.entities.state().items()}
        read_rows(folder, ranges, self.entities.lo, {"entity": self.entities.weight, **state})


def _remove_checkpoints(folder: Path, keep: str | None) -> None:
    """Remove the checkpoint shards of every step but ``keep`` (after a newer checkpoint was committed)."""
    for old in (folder / CHECKPOINTS_DIR).glob("step-*"):
        if old.name != keep:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()


def read_rows(folder: Path, ranges: list[list[int]], lo: int, into: dict[str, Tensor]) -> None:
    """Fill ``into`` (tensors of the rows [lo, lo + len) by name) from the shards ``rank-R.safetensors`` of
    ``folder``, shard R holding rows ``ranges[R]``: read as slices, so a run resumes on another number of ranks."""
    from safetensors import safe_open

    hi = lo + len(next(iter(into.values())))
    with torch.no_grad():
        for rank, (a, b) in enumerate(ranges):
            start, stop = max(a, lo), min(b, hi)
            if start >= stop:
                continue
            path = folder / f"rank-{rank}.safetensors"
            try:
                with safe_open(path, framework="pt") as f:
                    for name, target in into.items():
                        piece = f.get_slice(name)[start - a : stop - a]
                        target[start - lo : stop - lo] = piece.view_as(target[start - lo : stop - lo])
            except (OSError, KeyError, ValueError) as error:
                raise MedkgeError(f"{path}: a shard is missing or damaged ({error})") from None


# ---- sharded evaluation ---------------------------------------------------------------------------


def sharded_evaluate(trainer: DistributedTrainer, split: str) -> Metrics:
    """Filtered ranks of every sub-model on ``split``: every rank ranks every query against its own rows;
    the counts are summed across ranks. The run's protocol (full or sampled)."""
    cfg, dataset = trainer.cfg, trainer.dataset
    if dataset.tail_candidates is not None:
        raise MedkgeError("distributed evaluation ranks against all entities: this dataset has candidate sets")
    entities, model = trainer.entities, trainer.model
    # a model of this rank's rows only, sharing TorchRec's storage of them (no copy)
    local = CroppableModel.from_spec(model.spec() | {"num_entities": 1})
    local.entity = torch.nn.Parameter(entities.weight.detach().view(-1, *entities.shape[1:]), requires_grad=False)
    with torch.no_grad():
        local.relation.copy_(model.relation.detach())
    scorer = BlockScorer(local, budget=cfg.eval.memory_budget)
    protocol = eval_protocol(cfg, split=split)
    triples = dataset.split(split).long()
    known = unique_triples(dataset.known_triples())
    ranks = {}
    for side in dataset.directions:
        ranks[side] = _sharded_rank(trainer, scorer, side, triples, known, protocol)
    described = (
        "full"
        if protocol["protocol"] == "full"
        else (f"sampled ({protocol['sampled_candidates']} candidates per side, seed {protocol['sampled_seed']})")
    )
    return _metrics(ranks, local.dims, split, cfg.eval.ties, described)


def _sharded_rank(trainer, scorer: BlockScorer, side: str, triples: Tensor, known: Tensor, protocol) -> Tensor:
    cluster, entities, ties = trainer.cluster, trainer.entities, trainer.cfg.eval.ties
    lo, hi = entities.lo, entities.hi
    anchor_col, true_col = (0, 2) if side == "tail" else (2, 0)
    num_entities, num_relations = entities.shape[0], scorer.relation.shape[0]
    index = _FilterIndex(known, anchor_col, true_col, num_relations)
    sampled = protocol["protocol"] == "sampled"
    if sampled:
        draw = SampledCandidates(
            num_entities, protocol["sampled_candidates"], protocol["sampled_seed"] * 2 + ("head", "tail").index(side)
        )
        known_keys = torch.sort(
            (known[:, anchor_col] * num_relations + known[:, 1]) * num_entities + known[:, true_col]
        )[0]
    q_step = 256
    sign = scorer.interaction.sum_sign
    out = torch.empty(len(triples), len(scorer.prefix.dims), dtype=torch.float64)
    for q0 in range(0, len(triples), q_step):
        chunk = triples[q0 : q0 + q_step]
        anchor, rel, true = chunk[:, anchor_col], chunk[:, 1], chunk[:, true_col]
        with torch.no_grad():
            rows = scorer.prepare(entities.lookup(torch.cat([anchor, true])).detach().cpu())
        query, r_rows = scorer.queries(side, anchor, rel, anchor_rows=rows[: len(chunk)])
        true_scores = scorer.pairs(side, query, r_rows, true, finish=False, candidate_rows=rows[len(chunk) :])
        if not sampled:
            pair_query, pair_entity = index.lookup(anchor, rel)
            mine = (pair_entity >= lo) & (pair_entity < hi)
            pair_query, pair_pos = pair_query[mine], pair_entity[mine] - lo
            order = torch.argsort(pair_pos)
            among, balance, equal = count_against(
                scorer,
                side,
                query,
                r_rows,
                true_scores,
                pair_query[order],
                pair_pos[order],
                hi - lo,
                None,
                ties != "realistic",
                reduce=cluster.all_sum,
            )
            out[q0 : q0 + len(chunk)] = ranks_from_counts(among, balance, equal, ties, sign)
            continue
        cands = draw.for_queries(q0, q0 + len(chunk))
        keys = ((anchor * num_relations + rel) * num_entities).unsqueeze(1) + cands
        position = torch.searchsorted(known_keys, keys).clamp_max(len(known_keys) - 1)
        valid = (known_keys[position] != keys) & (cands >= lo) & (cands < hi)
        q_idx, c_idx = valid.nonzero(as_tuple=True)
        scores = scorer.pairs(side, query[q_idx], r_rows[q_idx], cands[q_idx, c_idx] - lo, finish=False)
        worst = -math.inf * sign
        scores, reference = scores.nan_to_num(nan=worst), true_scores[q_idx].nan_to_num(nan=worst)
        higher = torch.zeros(len(chunk), scores.shape[1], dtype=torch.float64).index_add_(
            0, q_idx, (scores * sign > reference * sign).double()
        )
        equal = torch.zeros_like(higher).index_add_(0, q_idx, (scores == reference).double())
        higher, equal = cluster.all_sum(higher, equal)
        offset = {"realistic": equal / 2, "optimistic": 0, "pessimistic": equal}[ties]
        out[q0 : q0 + len(chunk)] = 1 + higher + offset
    return out


# ---- the entry point ------------------------------------------------------------------------------


def train_distributed(cfg: Config | None, folder: Path, progress: bool, resume: bool) -> Any:
    """``medkge train`` under torchrun: every rank runs this; rank 0 writes the run folder."""
    from .methods import has_progress
    from .run import Run

    try:
        import torchrec  # noqa: F401
    except ImportError:
        raise MedkgeError(INSTALL) from None
    if resume:
        cfg = Config.from_run_folder(folder)
    assert cfg is not None
    if cfg.method != "med":
        raise MedkgeError(f"distributed training trains MED: method {cfg.method} trains in one process")
    device = runtime.resolve_device(cfg.train.device)
    dataset = load_dataset(cfg.dataset, drop_unseen=cfg.drop_unseen)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if not resume:
        if (folder / CONFIG_FILE).exists() and has_progress(folder):
            raise MedkgeError(
                f"{folder} already holds a run: resume it with `torchrun ... -m medkge train --resume {folder}`"
            )
        if cfg.train.optimizer in ("auto", "adam"):
            cfg.train.optimizer = "sparse_adam" if device.type == "cuda" else "row_adagrad"
    plan = memory.plan(cfg, dataset, device, world=world)
    if rank == 0:
        print(f"medkge: rank 0 of {world}: memory per rank {plan.describe()}", file=sys.stderr)
    cluster = Cluster(device)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if cluster.rank == 0 and not resume:
            warn_unseen(dataset, cfg.drop_unseen)
            folder.mkdir(parents=True, exist_ok=True)
            write_vocab(folder / "entities.tsv", dataset.entities)
            write_vocab(folder / "relations.tsv", dataset.relations)
            atomic_write(folder / CONFIG_FILE, cfg.to_yaml())
        cluster.barrier()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.tune_malloc:
            runtime.keep_freed_memory()
        if cfg.train.flush_denormals:
            runtime.flush_denormals()
        started = time.perf_counter()
        model = CroppableModel(
            cfg.model.name,
            dataset.num_entities,
            dataset.num_relations,
            cfg.model.dims,
            gamma=cfg.model.gamma,
            gamma_scaling=cfg.model.gamma_scaling,
            p=cfg.model.p,
            normalize_entities=cfg.model.normalize_entities,
            init_scale=cfg.model.init_scale,
            phase_scale=cfg.model.phase_scale,
            generator=keyed_generator(cfg.train.seed, 6),
            entity_table=False,
        )
        model.fused_kernels = cfg.train.fused_kernels
        objective = MEDObjective(model.dims, cfg.loss, cfg.med, fused=cfg.train.fused_kernels)
        trainer = DistributedTrainer(
            cluster,
            cfg,
            dataset,
            model,
            objective.to(cluster.device),
            model_path=folder / "model.safetensors",
            checkpoint_path=folder / CHECKPOINT_FILE,
            log_path=folder / LOG_FILE,
            extra_parameters=list(objective.parameters()),
            progress=progress,
            optimizer=cfg.train.optimizer,
        )
        state = trainer.fit()
        _load_kept(trainer)
        results: dict[str, Any] = {}
        if cfg.eval.test:
            eval_started = time.perf_counter()
            results["test"] = sharded_evaluate(trainer, "test").to_dict()
            results["test_eval_seconds"] = time.perf_counter() - eval_started
        if state.best_metrics is None:
            state.best_metrics = sharded_evaluate(trainer, "valid").to_dict()
        peaks: list[Any] = [None] * cluster.world
        dist.all_gather_object(peaks, memory.peak_rss())
        ranges = trainer.entities.ranges()
        if cluster.rank == 0:
            _assemble(folder)
            results = {
                "method": "med",
                "dataset": dataset.name,
                "dataset_fingerprint": dataset.fingerprint(),
                "model": cfg.model.name,
                "dims": list(model.dims),
                "device": f"{runtime.describe_device(cluster.device)} x {cluster.world} ranks",
                "world_size": cluster.world,
                "entity_rows_by_rank": ranges,
                "peak_rss_by_rank": peaks,
                "optimizer": cfg.train.optimizer,
                "machine": platform.machine(),
                "torch": torch.__version__,
                "train_seconds": state.train_seconds,
                "eval_seconds": state.eval_seconds,
                "epochs": state.epoch,
                "best_epoch": state.best_epoch,
                "stopped_early": state.stopped_early,
                "valid": state.best_metrics,
                **results,
                "session_seconds": time.perf_counter() - started,
                "log_records": sum(1 for _ in read_jsonl(folder / LOG_FILE)),
                "checksums": model_checksums(folder),
            }
            write_json(folder / RESULTS_FILE, results)
        cluster.barrier()
    except BaseException as error:
        _stop(cluster, error)
        raise
    # Free the model and TorchRec's sharded modules (which hold the process group) now, before the group is
    # destroyed, not at interpreter exit: left to exit, a rank of a run that had succeeded now and then aborted
    # ("terminate called without an active exception"; 4 of 11 two-rank runs on a loaded machine, 0 of 30 so)
    del trainer, model, objective
    gc.collect()
    cluster.close()
    return Run.open(folder) if rank == 0 else None


def _load_kept(trainer: DistributedTrainer) -> None:
    """Put the kept model's rows back in place on every rank (for the test evaluation), from its shards,
    whatever number of ranks wrote them."""
    manifest = trainer.folder / SHARDS_DIR / "relation.safetensors"
    if not manifest.is_file():  # nothing kept (no validation ran): keep the last model
        trainer.keep_model()
        return
    relation, meta = load_tensors(manifest, "medkge model shard")
    read_rows(trainer.folder / SHARDS_DIR, meta["ranges"], trainer.entities.lo, {"entity": trainer.entities.weight})
    with torch.no_grad():
        trainer.model.relation.copy_(relation["relation"])
    trainer.cluster.barrier()


def _assemble(folder: Path) -> None:
    """Rank 0: model.safetensors from the kept shards, streamed shard by shard; then the shards go."""
    from safetensors import safe_open

    shards = folder / SHARDS_DIR
    relation, meta = load_tensors(shards / "relation.safetensors", "medkge model shard")
    spec, ranges = meta["spec"], meta["ranges"]
    shape = [int(spec["num_entities"]), relation["relation"].shape[1], relation["relation"].shape[2]]
    from .scoring import get_interaction

    shape[1] = get_interaction(spec["model"], int(spec.get("p", 1))).entity_parts

    def pieces():
        for rank in range(len(ranges)):
            with safe_open(shards / f"rank-{rank}.safetensors", framework="pt") as handle:
                yield handle.get_tensor("entity")

    tables = [("entity", torch.float32, shape, pieces())]
    tables.append(("relation", torch.float32, list(relation["relation"].shape), [relation["relation"]]))
    save_tensors_streamed(
        folder / "model.safetensors", tables, {"format": FORMAT, "version": FORMAT_VERSION, "spec": spec}
    )
    for f in shards.iterdir():
        f.unlink()
    shards.rmdir()


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


def _stop(cluster: Cluster, error: BaseException) -> None:
    """A rank stops: if it lost the others (a collective failed, torchrun stopped it), say on one line which
    rank stopped the job, and exit; if the error is its own, tell the others why (the caller re-raises)."""
    text = str(error) or type(error).__name__
    if isinstance(error, SystemExit) or any(word in text.lower() for word in _LOST):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's stop must not cut the diagnosis short
        reason = cluster.who_failed()
        print(f"medkge: error: {reason}; rank {cluster.rank} stops too", file=sys.stderr, flush=True)
        os._exit(3)
    cluster.failed(text.splitlines()[0])
