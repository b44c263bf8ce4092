"""The trainer: one training pipeline for every path. Batches, negatives, the step, validation, early stopping,
the kept model and checkpoints happen here once; where the entity table lives (one process or rows sharded
across processes, a dense or a row-wise optimiser) is the entity store's business (stores.py).

A run is deterministic for a seed on one machine: the initial tables, the order of the triples and every
negative come from streams keyed by (seed, step, position) (seeding.py), so a run killed mid-epoch and resumed
from its last checkpoint ends exactly where an uninterrupted run ends, and a run on N processes trains the model
one process trains, to float rounding.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import runtime
from .config import Config, parse_metric
from .datasets import Dataset
from .errors import MedkgeError, MedkgeWarning
from .evaluation import Metrics
from .files import append_jsonl, load_tensors, read_jsonl, rewrite_jsonl, save_tensors, truncate_jsonl
from .layout import checkpoint_rows_dir, rows_file
from .losses import regularization
from .model import CroppableModel
from .optim import choose, default_lr, dense_optimizer, rows_per_step
from .run import eval_protocol
from .sampling import Batch, NegativeSampler
from .stores import Comm, Local, read_rows

# (loss, logs) from the scores [B, 1 + K, n] of a batch
Objective = Callable[[Tensor, "Batch"], tuple[Tensor, dict[str, Tensor]]]


def score_batch(model: CroppableModel, batch: Batch) -> Tensor:
    """Scores ``[B, 1 + K, n]`` of a batch for every sub-model of ``model`` (rows grouped by side)."""
    return model.score_groups(batch.groups)


@dataclass
class TrainState:
    """Progress of one model's training, saved in its checkpoint."""

    epoch: int = 0
    step: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    bad_validations: int = 0
    stopped_early: bool = False
    finished: bool = False
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    discarded_seconds: float = 0.0  # training time of earlier attempts whose checkpoint was lost
    log_lines: int = 0  # lines in the log file when the checkpoint was written
    best_metrics: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def optimizer_lr(cfg: Config, dataset: Dataset, optimizer: str) -> float:
    """The learning rate entity optimiser ``optimizer`` gets on this run where ``train.lr`` is unset
    (optim.default_lr: row-wise Adagrad's depends on how often a step touches each row)."""
    tc = cfg.train
    return default_lr(optimizer, dataset.num_entities, rows_per_step(tc.batch_size, tc.negatives, tc.shared_negatives))


class Trainer:
    """Trains one model with one objective, validating, checkpointing and keeping the best model.

    Files: the kept model goes to ``model_path``, the training state to ``checkpoint_path``, one JSON
    line per epoch and validation to ``log_path`` (tagged with ``tag`` when several models share a log).
    ``comm`` says how this process talks to the others of its job (stores.Local, or distributed.Cluster under
    torchrun); it picks where the entity table lives (its entity store). Everything else happens here, once,
    whatever the number of processes: each trains its share of every batch, and the run's result does not
    depend on how many there are (to float rounding).
    """

    def __init__(
        self,
        config: Config,
        dataset: Dataset,
        model: CroppableModel,
        objective: Objective,
        *,
        model_path: Path,
        checkpoint_path: Path,
        log_path: Path,
        extra_parameters: list[torch.nn.Parameter] | None = None,
        slow_parameters: list[torch.nn.Parameter] | None = None,
        slow_lr_scale: float = 1.0,
        epochs: int | None = None,
        seed: int | None = None,
        tag: str = "",
        progress: bool = True,
        comm: Comm | None = None,
    ):
        self.cfg = config
        self.dataset = dataset
        self.comm = comm or Local(runtime.resolve_device(config.train.device))
        self.device = self.comm.device
        # a model whose entity table lives elsewhere (sharded across processes) has a meta-device placeholder
        if model.entity.is_meta:
            model.relation.data = model.relation.data.to(self.device)
        else:
            model = model.to(self.device)
        self.model = model
        self.objective = objective
        self.model_path, self.checkpoint_path, self.log_path = model_path, checkpoint_path, log_path
        # parameters trained beside the model (MED's w, DualDE's weighting, a stage-2 teacher); they are
        # checkpointed with it. ``slow_parameters`` learn at slow_lr_scale times the learning rate.
        extra = [p for p in (extra_parameters or []) if p.requires_grad]
        slow = [p for p in (slow_parameters or []) if p.requires_grad]
        self.extra_parameters = extra + slow
        self.small_extras = len(extra)  # kept in the final checkpoint (MED's w, DualDE's a and b)
        self.epochs = config.train.epochs if epochs is None else epochs
        self.tag = tag
        self.progress = progress and self.comm.rank == 0
        self.metric, self.metric_dim = parse_metric(config.eval.metric, config.model.dims)
        if self.metric_dim not in model.dims:  # a per-dim model (DT) stops on its own dim
            self.metric_dim = None
        # the sub-models validated during training (a per-dim model: its own dim, whatever eval.valid_dims says)
        chosen = [d for d in config.eval.valid_dims or [] if d in model.dims]
        self.valid_dims: list[int] | None = chosen if chosen and chosen != list(model.dims) else None
        tc = config.train
        self.seed = tc.seed if seed is None else seed
        self.sampler = NegativeSampler(
            dataset.train,
            dataset.num_entities,
            dataset.num_relations,
            tc.negatives,
            tc.corruption,
            tc.filter_negatives,
            seed=self.seed,
            subsampling=config.loss.subsampling,
        )
        # the pre-flight resolves both (memory.plan); a Trainer built directly resolves them the same way
        rows = rows_per_step(tc.batch_size, tc.negatives, tc.shared_negatives)
        self.optimizer_name = choose(tc.optimizer, dataset.num_entities, rows, True)
        self.lr = tc.lr if tc.lr is not None else optimizer_lr(config, dataset, self.optimizer_name)
        # the entity table's rows and their optimiser (stores.py); the relation table and the extra parameters
        # are small, replicated, and learn with the dense optimiser that goes with the entity one
        self.store = self.comm.entity_store(self.model, self.optimizer_name, self.seed, tc.fused_kernels)
        dense = [p for p in self.model.parameters() if p is not self.model.entity]
        groups = [{"params": [*dense, *extra], "lr_scale": 1.0}]
        if slow:
            groups.append({"params": slow, "lr_scale": slow_lr_scale})
        self.optimizer = dense_optimizer(self.optimizer_name, groups, self.lr, fused=tc.fused_kernels)
        self.train_triples = dataset.train
        self.steps_per_epoch = math.ceil(len(dataset.train) / tc.batch_size)
        self.state = TrainState()
        self.log_lines = sum(1 for _ in read_jsonl(log_path))  # the log may be shared with earlier models

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train to the last epoch or until early stopping; resumes from the checkpoint if there is one."""
        name = f"{self.tag}: " if self.tag else ""
        if self.checkpoint_path.is_file():
            self.load_checkpoint()
            if not self.state.finished and self.state.epoch:
                self.say(f"{name}resuming from epoch {self.state.epoch + 1} (checkpoint of epoch {self.state.epoch})")
        else:
            self.drop_earlier_attempt()
            self.save_checkpoint()  # a first checkpoint, so that a run killed before its next one restarts cleanly
        if self.state.finished:
            return self.state
        every = self.cfg.eval.every
        desc = f"train {self.tag}".strip()
        bar = tqdm(
            range(self.state.epoch + 1, self.epochs + 1),
            desc=desc,
            unit="epoch",
            disable=not self.progress,
            initial=self.state.epoch,
            total=self.epochs,
        )
        for epoch in bar:
            stats = self.train_epoch(epoch)
            self.log({"type": "epoch", "epoch": epoch, **stats})
            postfix = {"loss": f"{stats['loss']:.4f}", "triples/s": f"{stats['triples_per_s']:.0f}"}
            if every and (epoch % every == 0 or epoch == self.epochs):
                self.validate(epoch)
                postfix["best"] = f"{self.state.best_value:.4f}"
            bar.set_postfix(postfix)
            last = epoch == self.epochs or self.state.stopped_early
            if last:
                self.state.finished = True
                if not every:  # nothing to choose from: keep the last model
                    self.keep_model()
                    self.state.best_epoch = epoch
            if last:
                self.save_checkpoint(final=True)
            elif self.cfg.train.checkpoint_every and epoch % self.cfg.train.checkpoint_every == 0:
                self.save_checkpoint()
            if self.state.stopped_early:
                break
        bar.close()
        return self.state

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        tc = self.cfg.train
        self.model.train()
        started = time.perf_counter()
        total_steps = self.epochs * self.steps_per_epoch
        sums: dict[str, Tensor] = {}
        order = self.sampler.epoch_order(len(self.train_triples), tc.batch_size, epoch)
        inner = tqdm(
            order, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not self.progress or len(order) < 50
        )
        lr = self.lr
        for index in inner:
            lr = self.lr * schedule(tc.lr_schedule, self.state.step, total_steps)
            loss, logs = self.step(self.train_triples[index], lr)
            for key, value in {"loss": loss, **logs}.items():
                sums[key] = sums.get(key, 0) + value.detach().float()
        seconds = time.perf_counter() - started
        self.state.train_seconds += seconds
        self.state.epoch = epoch
        stats = self.epoch_means(sums, len(order))
        if not math.isfinite(stats["loss"]):
            raise MedkgeError(
                f"training diverged at epoch {epoch} (loss {stats['loss']}); try a lower train.lr or another gamma"
            )
        stats |= {"seconds": seconds, "triples_per_s": len(self.train_triples) / seconds, "lr": lr}
        weights = getattr(self.objective, "w", None)
        if isinstance(weights, Tensor):
            stats["w"] = [round(float(x), 6) for x in weights.detach()]
        return stats

    def epoch_means(self, sums: dict[str, Tensor], steps: int) -> dict[str, float]:
        """The epoch's mean of each logged value over every process's share of its steps."""
        names = self.comm.all_gather_object(sorted(sums))  # a process with no positives logged fewer values
        keys = sorted({k for part in names for k in part})
        local = torch.stack([sums[k].double() if k in sums else torch.zeros((), dtype=torch.float64) for k in keys])
        (total,) = self.comm.all_sum(local)
        return {k: float(total[i]) / steps for i, k in enumerate(keys)}

    def step(self, positives: Tensor, lr: float) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step on the batch ``positives [B, 3]`` at learning rate ``lr``: this process's share of
        its positives, their negatives, scores, loss and update."""
        comm, total = self.comm, len(positives)
        lo, hi = total * comm.rank // comm.world, total * (comm.rank + 1) // comm.world
        batch = self.sampler.batch(positives, self.state.step, lo, hi, self.cfg.train.shared_negatives)
        batch = batch.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        table, local = self.store.gather(batch.entity_ids())
        model = self.model
        if table is None:
            entity_rows = model.entity_rows
        else:
            groups = [g.remap(local) for g in batch.groups]

            def entity_rows(ids: Tensor) -> Tensor:
                rows = table.index_select(0, local(ids.reshape(-1)))
                return model._normalize(rows.view(*ids.shape, *table.shape[1:]))

        logs: dict[str, Tensor] = {}
        share = (hi - lo) / total  # the batch's mean is the sum of each process's share of it
        if hi > lo:
            scores = model.score_groups(batch.groups if table is None else groups, entity=table)
            loss, logs = self.objective(scores, batch)
            if self.cfg.loss.regularizer != "none" and self.cfg.loss.reg_weight > 0:
                reg = self.cfg.loss.reg_weight * self.regularizer(batch.positives, entity_rows)
                loss = loss + reg
                logs["reg"] = reg.detach()
        else:  # no positives here (a batch smaller than the job): still take part in the exchanges
            loss = (table if table is not None else model.relation).sum() * 0.0
        (loss * share).backward()
        if comm.world > 1:  # the replicated parameters learn from the whole batch
            dense = [p for group in self.optimizer.param_groups for p in group["params"]]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
            for p, g in zip(dense, comm.all_sum(*grads), strict=True):
                p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients as soon as they are applied
        self.store.update(lr)
        self.state.step += 1
        return loss.detach() * share, {k: v.detach() * share for k, v in logs.items()}

    def regularizer(self, positives: Tensor, entity_rows: Callable[[Tensor], Tensor]) -> Tensor:
        m = self.model
        entities = m.interaction.complex_entities
        # RotatE's relation rows are angles: a rotation's modulus is one whatever the angle, so N3 of it is
        # constant and L2 of the angle would pull rotations towards the identity, not shrink anything (runs
        # from before 2026-12-07 did that: loss.reg_angles keeps their objective when they resume)
        with_relations = not m.interaction.phase_relations or self.cfg.loss.reg_angles
        relation = [(m.relation_rows(positives[:, 1]), m.model_name == "complex")] if with_relations else []
        parts = [(entity_rows(positives[:, 0]), entities), *relation, (entity_rows(positives[:, 2]), entities)]
        return regularization(self.cfg.loss.regularizer, [x for x, _ in parts], [c for _, c in parts])

    # ---- validation and the kept model --------------------------------------------------------
    def evaluate(self, split: str, dims: list[int] | None = None) -> Metrics:
        """Filtered metrics of the model as it is now on ``split`` (the run's protocol for that split), for
        every sub-model or ``dims``."""
        return self.store.evaluate(
            self.model,
            self.dataset,
            split,
            dims=dims,
            ties=self.cfg.eval.ties,
            memory_budget=self.cfg.eval.memory_budget,
            progress=self.progress,
            **eval_protocol(self.cfg, split=split),
        )

    def keep_model(self) -> None:
        """Save the model being trained as the run's kept model (the best on validation so far)."""
        self.store.keep(self.model, self.model_path)

    def restore_kept(self) -> None:
        """Put the kept model back in place of the one being trained (nothing kept: keep the last one)."""
        if not self.store.restore(self.model, self.model_path):
            self.keep_model()

    def validate(self, epoch: int) -> Metrics:
        started = time.perf_counter()
        metrics = self.evaluate("valid", self.valid_dims)
        self.state.eval_seconds += time.perf_counter() - started
        value = metrics.mean(self.metric) if self.metric_dim is None else metrics[self.metric_dim][self.metric]
        best = self.state.best_value
        improved = best is None or (value < best if self.metric == "mr" else value > best)
        if improved:
            self.state.best_value, self.state.best_epoch, self.state.bad_validations = value, epoch, 0
            self.state.best_metrics = metrics.to_dict()
            self.keep_model()
        else:
            self.state.bad_validations += 1
            patience = self.cfg.eval.patience
            self.state.stopped_early = bool(patience) and self.state.bad_validations >= patience
        self.log(
            {
                "type": "valid",
                "epoch": epoch,
                "metric": self.cfg.eval.metric,
                "value": value,
                "improved": improved,
                "seconds": time.perf_counter() - started,
                "protocol": metrics.protocol,  # "full", "full, N of M triples (seed S)" or "sampled (...)"
                "dims": {str(d): {"mrr": metrics[d]["mrr"], "hits@10": metrics[d]["hits@10"]} for d in metrics.dims},
            }
        )
        return metrics

    def drop_earlier_attempt(self) -> None:
        """Starting without a checkpoint: drop what an earlier attempt of this model logged (its checkpoint is
        gone), say so, and keep that attempt's training time as ``discarded_seconds``."""
        if self.comm.rank == 0:
            self._drop_earlier_attempt()
        self.log_lines = self.comm.broadcast_object(self.log_lines)

    def _drop_earlier_attempt(self) -> None:
        records = list(read_jsonl(self.log_path))
        mine = [r for r in records if r.get("model", "") == self.tag and r.get("type") in ("epoch", "valid")]
        if not mine:
            return
        seconds = sum(r.get("seconds", 0.0) for r in mine if r["type"] == "epoch")
        epochs = max(r["epoch"] for r in mine)
        name = f" of {self.tag}" if self.tag else ""
        warnings.warn(
            f"{self.checkpoint_path}: no checkpoint: starting{name} from epoch 1 (an earlier attempt reached "
            f"epoch {epochs}; its {len(mine)} log records are dropped, its {seconds:.1f} s of training kept "
            "as discarded_seconds)",
            MedkgeWarning,
            stacklevel=4,
        )
        kept = [r for r in records if not any(r is m for m in mine)]
        rewrite_jsonl(self.log_path, kept)
        self.log_lines = len(kept)
        self.state.discarded_seconds += seconds
        self.log(
            {"type": "restart", "reason": "no checkpoint", "discarded_epochs": epochs, "discarded_seconds": seconds}
        )

    def say(self, message: str) -> None:
        if self.progress:
            print(f"medkge: {message}", file=sys.stderr)

    def log(self, record: dict[str, Any]) -> None:
        """One line of the run's log (written by rank 0; every process counts it)."""
        if self.comm.rank == 0:
            append_jsonl(self.log_path, {"model": self.tag, **record} if self.tag else record)
        self.log_lines += 1

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, final: bool = False) -> None:
        """Save the training state; a ``final`` checkpoint keeps only the progress (the model is saved).

        The entity rows and their optimiser state are row ranges: in one process they go into the checkpoint
        file itself; in several, each writes its rows into ``<checkpoint>.rows/step-S/rank-R.safetensors`` and
        rank 0's file, written last, names them. Either resumes on any number of processes."""
        comm = self.comm
        self.state.log_lines = self.log_lines
        rows_dir = checkpoint_rows_dir(self.checkpoint_path)
        if final:  # the model is saved; keep the small parameters that a next stage may start from
            if comm.rank == 0:
                small = {f"extra.{i}": p for i, p in enumerate(self.extra_parameters[: self.small_extras])}
                save_tensors(self.checkpoint_path, small, {"state": self.state.__dict__})
                _remove_row_files(rows_dir, keep=None)
            comm.barrier()
            return
        rows = self.store.state_tensors()
        ranges = comm.all_gather_object([self.store.lo, self.store.hi])
        step_dir = rows_dir / f"step-{self.state.step}"
        inline: dict[str, Tensor] = {}
        if comm.world > 1:
            save_tensors(rows_file(step_dir, comm.rank), rows, {"range": ranges[comm.rank]})
            comm.barrier()  # every rank's rows are on disk before rank 0's file points at them
        else:
            inline = {f"rows.{k}": v for k, v in rows.items()}
        if comm.rank == 0:
            tensors = {"model.relation": self.model.relation, **inline}
            for i, p in enumerate(self.extra_parameters):
                tensors[f"extra.{i}"] = p
            optim = self.optimizer.state_dict()
            tensors |= optimizer_tensors(optim)
            where = {"ranges": ranges, "step": self.state.step if comm.world > 1 else None}
            where |= {"shape": list(self.model.entity.shape), "optimizer": self.optimizer_name}
            metadata = {"state": self.state.__dict__, "param_groups": optim["param_groups"], "rows": where}
            save_tensors(self.checkpoint_path, tensors, metadata)
            _remove_row_files(rows_dir, keep=step_dir.name if comm.world > 1 else None)
        comm.barrier()

    def load_checkpoint(self) -> None:
        tensors, metadata = load_tensors(self.checkpoint_path, "medkge checkpoint")
        if metadata.get("state", {}).get("finished"):
            self.state = TrainState(**metadata["state"])
            with torch.no_grad():
                for i, p in enumerate(self.extra_parameters[: self.small_extras]):
                    if f"extra.{i}" in tensors:
                        p.copy_(tensors[f"extra.{i}"])
            return
        where = metadata.get("rows")
        if not isinstance(where, dict):
            raise MedkgeError(
                f"{self.checkpoint_path}: a checkpoint of an earlier medkge, which this one does not resume: "
                "start the run again (or finish it with the version that began it)"
            )
        if where["shape"] != list(self.model.entity.shape) or where["optimizer"] != self.optimizer_name:
            raise MedkgeError(
                f"{self.checkpoint_path}: does not match this run (table {where['shape']}, optimizer "
                f"{where['optimizer']}; this run: {list(self.model.entity.shape)}, {self.optimizer_name})"
            )
        try:
            rows = self.store.state_tensors()
            read_rows(row_sources(self.checkpoint_path, where), where["ranges"], self.store.lo, rows)
            self.store.load_state_tensors(rows)
            with torch.no_grad():
                self.model.relation.copy_(tensors["model.relation"])
                for i, p in enumerate(self.extra_parameters):
                    p.copy_(tensors[f"extra.{i}"])
            self._load_optimizer(tensors, metadata["param_groups"])
            self.state = TrainState(**metadata["state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise MedkgeError(f"{self.checkpoint_path}: does not match this run ({error})") from None
        # what the interrupted run logged after its last checkpoint will be logged again: drop it
        if self.comm.rank == 0:
            truncate_jsonl(self.log_path, self.state.log_lines)
        self.log_lines = self.state.log_lines
        if len(where["ranges"]) != self.comm.world:
            self.say(f"re-sharding the checkpoint of {len(where['ranges'])} process(es) onto {self.comm.world}")

    def _load_optimizer(self, tensors: dict[str, Tensor], param_groups: list[dict[str, Any]]) -> None:
        """The dense optimiser's state; how it runs (fused or not) follows this run's config, not the checkpoint's."""
        keys = ("fused", "foreach", "capturable", "differentiable")
        implementation = [{k: g[k] for k in keys if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict({"state": optimizer_state(tensors), "param_groups": param_groups})
        for group, settings in zip(self.optimizer.param_groups, implementation, strict=True):
            group.update(settings)
        if any(group.get("fused") for group in self.optimizer.param_groups):
            for p, state in self.optimizer.state.items():  # fused Adam keeps its step counts on the device
                if "step" in state:
                    state["step"] = state["step"].to(p.device, torch.float32)


def schedule(kind: str, step: int, total_steps: int) -> float:
    """The learning rate's factor at ``step`` of ``total_steps``: linear decay to 0, /10 from half way (RotatE's
    step decay), or constant."""
    if kind == "linear":
        return 1 - step / total_steps
    if kind == "step":
        return 0.1 if step >= total_steps // 2 else 1.0
    return 1.0


def _remove_row_files(rows_dir: Path, keep: str | None) -> None:
    """Remove the row files of every checkpoint step but ``keep`` (after a newer checkpoint was committed)."""
    if not rows_dir.is_dir():
        return
    for old in rows_dir.glob("step-*"):
        if old.name != keep:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    if keep is None:
        rows_dir.rmdir()


def optimizer_tensors(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    """An optimizer state dict's ``state`` as checkpoint tensors ``optim.<index>.<name>`` (optimizer_state reads
    them back; the param_groups go into the checkpoint's metadata)."""
    return {
        f"optim.{index}.{key}": torch.as_tensor(value)
        for index, state in state_dict["state"].items()
        for key, value in state.items()
    }


def optimizer_state(tensors: dict[str, Tensor]) -> dict[int, dict[str, Tensor]]:
    """The ``state`` of an optimizer's state dict from a checkpoint's ``optim.<index>.<name>`` tensors."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return state


def build_model(
    cfg: Config, dataset: Dataset, dims: list[int] | None = None, seed: int | None = None, entity_table: bool = True
) -> CroppableModel:
    """The configured model for ``dataset`` (with ``dims`` instead of the configured ones if given), initialised
    from streams keyed by ``seed`` (default train.seed); ``entity_table=False`` leaves the entity table to a
    sharded store."""
    mc = cfg.model
    model = CroppableModel(
        mc.name,
        dataset.num_entities,
        dataset.num_relations,
        mc.dims if dims is None else dims,
        gamma=mc.gamma,
        gamma_scaling=mc.gamma_scaling,
        gamma_width=mc.dims[-1],  # a DT model of dim d gets the margin MED's d-dim sub-model has
        p=mc.p,
        normalize_entities=mc.normalize_entities,
        init_scale=mc.init_scale,
        phase_scale=mc.phase_scale,
        seed=cfg.train.seed if seed is None else seed,
        entity_table=entity_table,
    )
    model.fused_kernels = cfg.train.fused_kernels
    return model


def row_sources(checkpoint: Path, where: dict[str, Any]) -> list[tuple[Path, str]]:
    """The files holding a checkpoint's entity rows and the prefix of their tensors' names, one per writing
    process (``where``: the checkpoint's ``rows`` metadata); ``stores.read_rows`` reads them into any range."""
    if where["step"] is None:  # one process: the rows are in the checkpoint itself
        return [(checkpoint, "rows.")]
    step_dir = checkpoint_rows_dir(checkpoint) / f"step-{where['step']}"
    return [(rows_file(step_dir, r), "") for r in range(len(where["ranges"]))]
