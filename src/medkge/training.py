"""The trainer: batches, negatives, Adam with linear decay, validation, early stopping, checkpoints.

``train(dataset="kinships", model="rotate", dims=[...], epochs=..., out="runs/x")`` trains MED and returns
the :class:`~medkge.run.Run`. A run is deterministic for a seed on one machine: shuffling and negatives
come from one ``torch.Generator`` whose state is checkpointed with the model and the optimiser, so a
run killed mid-epoch and resumed from its last checkpoint ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
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
from .evaluation import Metrics, evaluate
from .files import append_jsonl, load_tensors, read_jsonl, rewrite_jsonl, save_model, save_tensors, truncate_jsonl
from .losses import regularization
from .model import CroppableModel, Group
from .optim import SPARSE, choose, dense_optimizer, row_optimizer
from .run import eval_protocol
from .sampling import NegativeSampler, batches

# (loss, logs) from the scores [B, 1 + K, n] of a batch
Objective = Callable[[Tensor, "Batch"], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class Batch:
    """One training batch: positives and their negatives, grouped by the side that was corrupted.

    ``groups`` holds one :class:`~medkge.model.Group` per side; its candidate column 0 is the positive,
    followed by its own negatives or by the negatives its chunk shares. Objectives that need another
    model's scores on the same triples (distillation) score the batch with :func:`score_batch`.
    """

    groups: list[Group]
    positives: Tensor

    def entity_ids(self) -> Tensor:
        """Every entity id the batch reads, the positives' heads and tails included (with repeats)."""
        ids = [x for g in self.groups for x in g.entity_ids()]
        return torch.cat([*ids, self.positives[:, 0], self.positives[:, 2]])


def make_batch(positives: Tensor, corrupt_head: Tensor, negatives: Tensor | Sequence[Tensor], chunk: int = 0) -> Batch:
    """A batch of ``positives [B, 3]`` whose head (``corrupt_head``) or tail is replaced by negatives.

    ``negatives`` is ``[B, K]`` (each positive its own) or, with ``chunk`` > 0, one ``[chunks, N]`` tensor per
    side (tail side first, as the sampler draws them): chunk j of a side's positives shares row j.
    """
    groups = []
    for i, (side, mask) in enumerate((("tail", ~corrupt_head), ("head", corrupt_head))):
        if not bool(mask.any()):
            continue
        p = positives[mask]
        anchor, true = (p[:, 0], p[:, 2]) if side == "tail" else (p[:, 2], p[:, 0])
        if chunk:
            groups.append(Group(side, anchor, p[:, 1], true.unsqueeze(1), negatives[i], chunk))
        else:
            groups.append(Group(side, anchor, p[:, 1], torch.cat([true.unsqueeze(1), negatives[mask]], dim=1)))
    return Batch(groups, positives)


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


class Trainer:
    """Trains one model with one objective, validating, checkpointing and keeping the best model.

    Files: the kept model goes to ``model_path``, the training state to ``checkpoint_path``, one JSON
    line per epoch and validation to ``log_path`` (tagged with ``tag`` when several models share a log).
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
        lr: float | None = None,
        epochs: int | None = None,
        seed: int | None = None,
        tag: str = "",
        progress: bool = True,
        optimizer: str | None = None,
    ):
        self.cfg = config
        self.dataset = dataset
        self.device = runtime.resolve_device(config.train.device)
        # a model whose entity table lives elsewhere (sharded across ranks) has a meta-device placeholder
        self.model = model if model.entity.is_meta else model.to(self.device)
        self.objective = objective
        self.model_path, self.checkpoint_path, self.log_path = model_path, checkpoint_path, log_path
        # parameters trained beside the model (MED's w, DualDE's weighting, a stage-2 teacher); they are
        # checkpointed with it. ``slow_parameters`` learn at slow_lr_scale times the learning rate.
        extra = [p for p in (extra_parameters or []) if p.requires_grad]
        slow = [p for p in (slow_parameters or []) if p.requires_grad]
        self.extra_parameters = extra + slow
        self.small_extras = len(extra)  # kept in the final checkpoint (MED's w, DualDE's a and b)
        self.lr = config.train.lr if lr is None else lr
        self.epochs = config.train.epochs if epochs is None else epochs
        self.tag = tag
        self.progress = progress
        self.metric, self.metric_dim = parse_metric(config.eval.metric, config.model.dims)
        if self.metric_dim not in model.dims:  # a per-dim model (DT) stops on its own dim
            self.metric_dim = None
        tc = config.train
        self.sampler = NegativeSampler(
            dataset.train, dataset.num_entities, dataset.num_relations, tc.negatives, tc.corruption, tc.filter_negatives
        )
        self.generator = torch.Generator().manual_seed(tc.seed if seed is None else seed)
        # the entity table's optimiser: dense Adam over the whole table, or a row-wise one over the rows a
        # step touches (optim.py); the relation table and the extra parameters are always dense
        self.optimizer_name = optimizer or choose(
            tc.optimizer, dataset.num_entities, tc.batch_size * (2 + tc.negatives), adam_fits=True
        )
        self.rows = None
        dense = list(self.model.parameters())
        if self.optimizer_name in SPARSE:
            self.model.entity.requires_grad_(False)  # no dense gradient: rows are gathered into a leaf per step
            self.rows = row_optimizer(self.optimizer_name, self.model.entity.data)
            dense = [p for p in dense if p is not self.model.entity]
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
        order = self.epoch_order(epoch)
        inner = tqdm(
            order, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not self.progress or len(order) < 50
        )
        lr = self.lr
        for index in inner:
            lr = self.lr * (1 - self.state.step / total_steps) if tc.lr_schedule == "linear" else self.lr
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

    def epoch_order(self, epoch: int) -> list[Tensor]:
        """The batches of training triple indices of ``epoch`` (shuffled by the run's generator)."""
        return batches(len(self.train_triples), self.cfg.train.batch_size, self.generator)

    def epoch_means(self, sums: dict[str, Tensor], steps: int) -> dict[str, float]:
        """The epoch's mean of each logged value, from their sums over its steps."""
        return {key: float(value) / steps for key, value in sums.items()}

    def step(self, positives: Tensor, lr: float) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step on ``positives [B, 3]`` at learning rate ``lr``: negatives, scores, loss, update."""
        chunk = self.cfg.train.shared_negatives
        positives = positives.long()
        if chunk:
            corrupt_head, shared = self.sampler.sample_shared(positives, chunk, self.generator)
            negatives: Tensor | list[Tensor] = [x.to(self.device) for x in shared]
        else:
            corrupt_head, own = self.sampler.sample(positives, self.generator)
            negatives = own.to(self.device)
        batch = make_batch(positives.to(self.device), corrupt_head.to(self.device), negatives, chunk)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        scores, entity_rows, touched = self.forward(batch)
        loss, logs = self.objective(scores, batch)
        if self.cfg.loss.regularizer != "none" and self.cfg.loss.reg_weight > 0:
            reg = self.cfg.loss.reg_weight * self.regularizer(batch.positives, entity_rows)
            loss = loss + reg
            logs["reg"] = reg.detach()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients as soon as they are applied
        if touched is not None:
            rows, leaf = touched
            self.rows.step(rows, leaf.grad, lr)
        self.state.step += 1
        return loss.detach(), logs

    def forward(self, batch: Batch) -> tuple[Tensor, Callable[[Tensor], Tensor], tuple[Tensor, Tensor] | None]:
        """(scores, entity rows by id, (touched rows, their leaf) for a row optimiser, else None)."""
        model = self.model
        if self.rows is None:
            return score_batch(model, batch), model.entity_rows, None
        # only the batch's rows, gathered once into a leaf whose gradient the row optimiser applies
        rows = torch.unique(batch.entity_ids())
        leaf = model.entity.detach().index_select(0, rows).requires_grad_()

        def local(ids: Tensor) -> Tensor:  # ids into the leaf
            return torch.searchsorted(rows, ids.contiguous())

        def entity_rows(ids: Tensor) -> Tensor:
            return model._normalize(leaf.index_select(0, local(ids.reshape(-1))).view(*ids.shape, *leaf.shape[1:]))

        scores = model.score_groups([g.remap(local) for g in batch.groups], entity=leaf)
        return scores, entity_rows, (rows, leaf)

    def regularizer(self, positives: Tensor, entity_rows: Callable[[Tensor], Tensor]) -> Tensor:
        m = self.model
        rows = [entity_rows(positives[:, 0]), m.relation_rows(positives[:, 1]), entity_rows(positives[:, 2])]
        complex_parts = [m.interaction.complex_entities, m.model_name == "complex", m.interaction.complex_entities]
        return regularization(self.cfg.loss.regularizer, rows, complex_parts)

    # ---- validation and the kept model --------------------------------------------------------
    def evaluate_valid(self) -> Metrics:
        """Filtered validation metrics of the model being trained (the run's protocol)."""
        return evaluate(
            self.model,
            self.dataset,
            "valid",
            ties=self.cfg.eval.ties,
            memory_budget=self.cfg.eval.memory_budget,
            progress=self.progress,
            **eval_protocol(self.cfg, split="valid"),
        )

    def keep_model(self) -> None:
        """Save the model being trained as the run's kept model (the best on validation so far)."""
        save_model(self.model_path, self.model)

    def validate(self, epoch: int) -> Metrics:
        started = time.perf_counter()
        metrics = self.evaluate_valid()
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
                "dims": {str(d): {"mrr": metrics[d]["mrr"], "hits@10": metrics[d]["hits@10"]} for d in metrics.dims},
            }
        )
        return metrics

    def drop_earlier_attempt(self) -> None:
        """Starting without a checkpoint: drop what an earlier attempt of this model logged (its checkpoint is
        gone), say so, and keep that attempt's training time as ``discarded_seconds``."""
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
            stacklevel=3,
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
        if self.tag:
            record = {"model": self.tag, **record}
        append_jsonl(self.log_path, record)
        self.log_lines += 1

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, final: bool = False) -> None:
        """Save the training state; a ``final`` checkpoint keeps only the progress (the model is saved)."""
        self.state.log_lines = self.log_lines
        if final:  # the model is saved; keep the small parameters that a next stage may start from
            small = {f"extra.{i}": p for i, p in enumerate(self.extra_parameters[: self.small_extras])}
            save_tensors(self.checkpoint_path, small, {"state": self.state.__dict__})
            return
        tensors = {"model.entity": self.model.entity, "model.relation": self.model.relation}
        for i, p in enumerate(self.extra_parameters):
            tensors[f"extra.{i}"] = p
        optim = self.optimizer.state_dict()
        tensors |= optimizer_tensors(optim)
        if self.rows is not None:
            tensors |= {f"rows.{key}": value for key, value in self.rows.state_tensors().items()}
        tensors["generator"] = self.generator.get_state()
        metadata = {"state": self.state.__dict__, "param_groups": optim["param_groups"]}
        save_tensors(self.checkpoint_path, tensors, metadata)

    def load_checkpoint(self) -> None:
        tensors, metadata = load_tensors(self.checkpoint_path, "medkge checkpoint")
        if metadata.get("state", {}).get("finished"):
            self.state = TrainState(**metadata["state"])
            with torch.no_grad():
                for i, p in enumerate(self.extra_parameters[: self.small_extras]):
                    if f"extra.{i}" in tensors:
                        p.copy_(tensors[f"extra.{i}"])
            return
        try:
            with torch.no_grad():
                self.model.entity.copy_(tensors["model.entity"])
                self.model.relation.copy_(tensors["model.relation"])
                for i, p in enumerate(self.extra_parameters):
                    p.copy_(tensors[f"extra.{i}"])
            optim_state = optimizer_state(tensors)
            # how Adam runs (fused or not) follows this run's config, not the checkpoint's
            keys = ("fused", "foreach", "capturable", "differentiable")
            implementation = [{k: g[k] for k in keys if k in g} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict({"state": optim_state, "param_groups": metadata["param_groups"]})
            for group, settings in zip(self.optimizer.param_groups, implementation, strict=True):
                group.update(settings)
            if any(group.get("fused") for group in self.optimizer.param_groups):
                for p, state in self.optimizer.state.items():  # fused Adam keeps its step counts on the device
                    if "step" in state:
                        state["step"] = state["step"].to(p.device, torch.float32)
            if self.rows is not None:
                self.rows.load_state_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("rows.")})
            self.generator.set_state(tensors["generator"])
            self.state = TrainState(**metadata["state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise MedkgeError(f"{self.checkpoint_path}: does not match this run ({error})") from None
        # what the interrupted run logged after its last checkpoint will be logged again: drop it
        truncate_jsonl(self.log_path, self.state.log_lines)
        self.log_lines = self.state.log_lines


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
    cfg: Config, dataset: Dataset, dims: list[int] | None = None, seed: int | None = None
) -> CroppableModel:
    """The configured model for ``dataset`` (with ``dims`` instead of the configured ones if given)."""
    generator = torch.Generator().manual_seed(cfg.train.seed if seed is None else seed)
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
        generator=generator,
    )
    model.fused_kernels = cfg.train.fused_kernels
    return model
