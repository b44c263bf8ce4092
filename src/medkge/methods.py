"""Training methods and the entry points ``train`` and ``resume``.

A method trains the model(s) of a run into its folder. MED trains one croppable model with MED's
objective (losses.py); DT trains one independent model per dim with the base loss; BKD and DualDE
distil a teacher of the largest dim into one student per dim (MED.md section 6).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import memory, runtime
from .config import ALIASES, Config
from .datasets import BUNDLED, Dataset, load_dataset, warn_unseen
from .errors import MedkgeError, MedkgeWarning
from .evaluation import Metrics
from .files import load_into, lock_folder, read_jsonl, read_vocab, write_json
from .layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    ENTITIES_FILE,
    LOG_FILE,
    MODEL_FILE,
    RELATIONS_FILE,
    RESULTS_FILE,
    TEACHER_FILE,
    create_run_folder,
    has_progress,
    per_dim_checkpoint_path,
    per_dim_model_path,
    remove_run_start,
    teacher_checkpoint_path,
)
from .losses import DualDELoss, MEDObjective, bkd_loss, independent_loss
from .memory import MemoryEstimate
from .model import CroppableModel
from .run import Run, model_checksums
from .sampling import Batch
from .stores import Comm, Local
from .training import Objective, Trainer, TrainState, build_model, optimizer_lr, score_batch

Method = Callable[[Config, Dataset, Path, bool, Comm], dict[str, Any]]


def recorded_dataset(name_or_path: str) -> str:
    """The dataset as a run folder records it: a bundled name as it is, a folder as its absolute path (the
    run folder must find it from anywhere)."""
    return name_or_path if name_or_path in BUNDLED else str(Path(name_or_path).resolve())


def train_med(cfg: Config, dataset: Dataset, folder: Path, progress: bool, comm: Comm) -> dict[str, Any]:
    """MED: one croppable model, all sub-models trained together with MED's objective.

    Its kept model is evaluated here, by the trainer's entity store: in one process as any model, across
    processes rank by rank against each rank's own rows (the table is whole in no process until rank 0
    assembles the model file)."""
    model = build_model(cfg, dataset, entity_table=comm.world == 1)
    objective = MEDObjective(model.dims, cfg.loss, cfg.med, fused=cfg.train.fused_kernels)
    trainer = Trainer(
        cfg,
        dataset,
        model,
        objective.to(comm.device),
        model_path=folder / MODEL_FILE,
        checkpoint_path=folder / CHECKPOINT_FILE,
        log_path=folder / LOG_FILE,
        extra_parameters=list(objective.parameters()),
        progress=progress,
        comm=comm,
    )
    state = trainer.fit()
    summary = {**_summary(state), "valid": state.best_metrics}
    trainer.restore_kept()
    if state.best_metrics is None or trainer.valid_dims is not None:  # never validated, or not every sub-model
        started = time.perf_counter()
        summary["valid"] = trainer.evaluate("valid").to_dict()
        summary["eval_seconds"] += time.perf_counter() - started
    if cfg.eval.test:
        started = time.perf_counter()
        summary["test"] = trainer.evaluate("test").to_dict()
        summary["test_eval_seconds"] = time.perf_counter() - started
    trainer.store.finish(model, folder / MODEL_FILE)
    if comm.world > 1:
        summary["entity_rows_by_rank"] = comm.all_gather_object([trainer.store.lo, trainer.store.hi])
    return summary


def train_dt(cfg: Config, dataset: Dataset, folder: Path, progress: bool, comm: Comm) -> dict[str, Any]:
    """DT: one independent model per dim, trained one after another with the base loss.

    Each model has its own seed (the run's seed + its index), so its initialisation and negatives are
    its own, as when trained separately. A resumed run skips the dims already finished.
    """

    return _train_per_dim(cfg, dataset, folder, _one_stage(cfg, dataset, folder, _base_objective(cfg), progress))


def train_bkd(cfg: Config, dataset: Dataset, folder: Path, progress: bool, comm: Comm) -> dict[str, Any]:
    """BKD: a frozen teacher of the largest dim distils into one student per dim (MED.md section 6).

    Student loss: its base loss + ``distill.soft_weight`` * Huber(sigmoid(s_student), sigmoid(s_teacher)),
    on the same triples. Students are initialised and sampled as DT's models of their dim.
    """
    device = runtime.resolve_device(cfg.train.device)
    teacher, teacher_info = _teacher(cfg, dataset, folder, progress)
    teacher = _frozen(teacher.to(device))

    def objective(scores: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            target = score_batch(teacher, batch)
        return bkd_loss(scores, target, cfg.loss, cfg.distill.soft_weight, batch.weights), {}

    return _train_per_dim(cfg, dataset, folder, _one_stage(cfg, dataset, folder, objective, progress), teacher_info)


def train_dualde(cfg: Config, dataset: Dataset, folder: Path, progress: bool, comm: Comm) -> dict[str, Any]:
    """DualDE: two-stage dual distillation from a teacher of the largest dim into one student per dim.

    Stage 1 (``distill.stage1_fraction`` of the epochs): the teacher is frozen and the student learns
    from it with :class:`~medkge.losses.DualDELoss`. Stage 2 (the remaining epochs) starts from the
    student kept in stage 1 and a fresh copy of the teacher, which now learns from the student the
    same way, at ``distill.teacher_lr_scale`` times the learning rate. Each stage decays the learning
    rate over its own epochs; the student kept is the best on validation over both stages. Both stages
    use the student's seed, so stage 2 sees the batches and negatives of stage 1 again, in the same order.
    """
    device = runtime.resolve_device(cfg.train.device)
    teacher_model, teacher_info = _teacher(cfg, dataset, folder, progress)
    frozen = _frozen(teacher_model.to(device))  # stage 1's teacher; stage 2 trains a copy per student
    stage1_epochs = round(cfg.train.epochs * cfg.distill.stage1_fraction)
    stage2_epochs = cfg.train.epochs - stage1_epochs

    def fit(i: int, dim: int, student: CroppableModel) -> list[TrainState]:
        states = []
        student_loss = DualDELoss(cfg.loss).to(device)
        if stage1_epochs:

            def stage1(scores: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
                with torch.no_grad():
                    target = score_batch(frozen, batch)
                return student_loss(scores, target), {}

            trainer = _per_dim_trainer(
                cfg,
                dataset,
                folder,
                student,
                stage1,
                i,
                dim,
                stage="stage1",
                epochs=stage1_epochs,
                extra_parameters=list(student_loss.parameters()),
                progress=progress,
            )
            states.append(trainer.fit())
            load_into(student, per_dim_model_path(folder, dim))  # stage 2 starts from the kept student
        if stage2_epochs:
            teacher = copy.deepcopy(frozen).requires_grad_(True).train()
            teacher_loss = DualDELoss(cfg.loss).to(device)

            def stage2(scores: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
                teacher_scores = score_batch(teacher, batch)
                s_loss, t_loss = student_loss(scores, teacher_scores), teacher_loss(teacher_scores, scores)
                return s_loss + t_loss, {"teacher_loss": t_loss.detach()}

            trainer = _per_dim_trainer(
                cfg,
                dataset,
                folder,
                student,
                stage2,
                i,
                dim,
                stage="stage2",
                epochs=stage2_epochs,
                extra_parameters=[*student_loss.parameters(), *teacher_loss.parameters()],
                slow_parameters=list(teacher.parameters()),
                slow_lr_scale=cfg.distill.teacher_lr_scale,
                progress=progress,
            )
            if states:  # the student to beat is stage 1's best
                first = states[0]
                trainer.state.best_value, trainer.state.best_epoch = first.best_value, first.best_epoch
                trainer.state.best_metrics = first.best_metrics
            states.append(trainer.fit())
        return states

    return _train_per_dim(cfg, dataset, folder, fit, teacher_info)


def _teacher(cfg: Config, dataset: Dataset, folder: Path, progress: bool) -> tuple[CroppableModel, dict[str, Any]]:
    """The teacher of the largest dim d_n and where it came from (with its training time).

    From ``distill.teacher`` (a run folder: DT's d_n model, or MED's d_n sub-model) or else trained here
    with the base loss, with the seed DT gives its d_n model, so it is DT's largest model.
    """
    dim = cfg.model.dims[-1]
    if cfg.distill.teacher:
        source, results = open_teacher_run(cfg, dataset)
        seconds = results.get("per_dim", {}).get(str(dim), results).get("train_seconds")
        if source.config.method in ("bkd", "dualde"):  # a distilled student's cost includes its teacher
            seconds = results.get("train_seconds")
        info = {"source": str(source.path.resolve()), "dim": dim, "train_seconds": seconds}
        model = source.model_for(dim)
        model.fused_kernels = cfg.train.fused_kernels  # DualDE's stage 2 trains it
        return model, info
    seed = cfg.train.seed + len(cfg.model.dims) - 1  # DT's seed for its d_n model
    model = build_model(cfg, dataset, dims=[dim], seed=seed)
    trainer = Trainer(
        cfg,
        dataset,
        model,
        _base_objective(cfg),
        model_path=folder / TEACHER_FILE,
        checkpoint_path=teacher_checkpoint_path(folder),
        log_path=folder / LOG_FILE,
        seed=seed,
        tag="teacher",
        progress=progress,
    )
    state = trainer.fit()
    load_into(model, folder / TEACHER_FILE)
    return model, {"source": "trained in this run", "dim": dim, **_summary(state)}


def open_teacher_run(cfg: Config, dataset: Dataset) -> tuple[Run, dict[str, Any]]:
    """The finished run named by ``distill.teacher`` and its results, checked against this run's config."""
    where = f"distill.teacher {cfg.distill.teacher}"
    try:
        source = Run.open(cfg.distill.teacher)
    except MedkgeError as error:
        raise MedkgeError(f"{where}: {error}") from None
    results = source.results()
    if results is None:
        raise MedkgeError(f"{where}: the run is not finished (no results.json)")
    if source.entities != dataset.entities or source.relations != dataset.relations:
        raise MedkgeError(f"{where}: other vocabularies (another dataset)")
    if source.config.model.name != cfg.model.name:
        raise MedkgeError(f"{where}: a {source.config.model.name} model, not {cfg.model.name}")
    if cfg.model.dims[-1] not in source.dims:
        raise MedkgeError(
            f"{where}: has no {cfg.model.dims[-1]}-d model (dims {source.dims}); the teacher has the largest dim"
        )
    return source, results


def _base_objective(cfg: Config) -> Objective:
    """The base loss of each model on its own (DT's objective, and a teacher's)."""
    return lambda scores, batch: (independent_loss(scores, cfg.loss, batch.weights), {})


def _one_stage(
    cfg: Config, dataset: Dataset, folder: Path, objective: Objective, progress: bool
) -> Callable[[int, int, CroppableModel], list[TrainState]]:
    """A per-dim ``fit`` that trains each model once with ``objective`` (DT, BKD)."""

    def fit(i: int, dim: int, model: CroppableModel) -> list[TrainState]:
        return [_per_dim_trainer(cfg, dataset, folder, model, objective, i, dim, progress=progress).fit()]

    return fit


def _frozen(model: CroppableModel) -> CroppableModel:
    return model.requires_grad_(False).eval()


def _per_dim_trainer(
    cfg: Config,
    dataset: Dataset,
    folder: Path,
    model: CroppableModel,
    objective: Objective,
    i: int,
    dim: int,
    stage: str = "",
    **options: Any,
) -> Trainer:
    """The trainer of the model of ``dim`` (index i) in a per-dim run, with its own seed and checkpoint."""
    return Trainer(
        cfg,
        dataset,
        model,
        objective,
        model_path=per_dim_model_path(folder, dim),
        checkpoint_path=per_dim_checkpoint_path(folder, dim, stage),
        log_path=folder / LOG_FILE,
        seed=cfg.train.seed + i,
        tag=f"dim_{dim}{'/' + stage if stage else ''}",
        **options,
    )


def _train_per_dim(
    cfg: Config,
    dataset: Dataset,
    folder: Path,
    fit: Callable[[int, int, CroppableModel], list[TrainState]],
    teacher: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one model per dim with ``fit`` and sum their costs (and the teacher's) into the run's."""
    per_dim: dict[str, Any] = {}
    valid = []
    for i, dim in enumerate(cfg.model.dims):
        model = build_model(cfg, dataset, dims=[dim], seed=cfg.train.seed + i)
        states = fit(i, dim, model)
        per_dim[str(dim)] = {
            **_summary(states[-1]),
            "train_seconds": sum(s.train_seconds for s in states),
            "eval_seconds": sum(s.eval_seconds for s in states),
            "epochs": sum(s.epoch for s in states),
        }
        if states[-1].best_metrics is not None:
            valid.append(Metrics.from_dict(states[-1].best_metrics))
    students = sum(m["train_seconds"] for m in per_dim.values())
    summary: dict[str, Any] = {
        "train_seconds": students + ((teacher or {}).get("train_seconds") or 0.0),
        "eval_seconds": sum(m["eval_seconds"] for m in per_dim.values()),
        "per_dim": per_dim,
        "valid": Metrics.merge(valid).to_dict() if len(valid) == len(per_dim) else None,
    }
    if teacher is not None:
        summary |= {"students_train_seconds": students, "teacher": teacher}
    return summary


def _summary(state: TrainState) -> dict[str, Any]:
    return {
        "train_seconds": state.train_seconds,
        "eval_seconds": state.eval_seconds,
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        **({"discarded_seconds": state.discarded_seconds} if state.discarded_seconds else {}),
    }


METHODS: dict[str, Method] = {"med": train_med, "dt": train_dt, "bkd": train_bkd, "dualde": train_dualde}


def make_config(config: Config | str | Path | dict | None = None, **options: Any) -> Config:
    """A validated config from a Config, a YAML path or a dict, with ``options`` (aliases or dotted keys) set."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    else:
        cfg = Config.from_yaml(config)
    overrides = {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, range):  # as 'start:stop:step', checked from its arithmetic before any list is built
            value = f"{value.start}:{value.stop - 1}:{value.step}" if value.step > 0 and len(value) else list(value)
        overrides[ALIASES.get(key, key)] = value
    return cfg.with_overrides(overrides) if overrides else cfg


def train(
    config: Config | str | Path | dict | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> Run | None:
    """Train a run and return it: ``train(dataset="kinships", model="rotate", dims=[...], epochs=50, out="runs/x")``.

    ``config`` is a Config, a YAML file or a dict; ``options`` set single keys, by short name (dataset,
    model, dims, epochs, lr, batch_size, negatives, seed, device, gamma, method) or dotted
    (``**{"med.evolutionary": False}``). The run folder ``out`` must not hold another run (a folder whose
    run never reached its first checkpoint may be started again). Everything that can fail at start
    (config, dataset, device, teacher, memory) is checked before the folder is written.

    Under torchrun (``torchrun --nproc-per-node N script.py``) every process calls it and they train one model
    together, the entity table's rows sharded across them (distributed.py); rank 0 writes the folder and
    returns the run, the other ranks return None.
    """
    cfg = make_config(config, **options)
    world = _world()
    if world and out is None:
        raise MedkgeError("under torchrun give the run folder (--out RUN): every rank must name the same one")
    folder = Path(out) if out is not None else Path("runs") / default_run_name(cfg)
    with _hold(folder, "medkge train"):  # one writer per run folder; a folder it made goes if left empty
        restart = (folder / CONFIG_FILE).exists()
        if restart and has_progress(folder):
            raise MedkgeError(f"{folder} already holds a run: resume it with `medkge train --resume {folder}`")
        dataset = load_dataset(cfg.dataset, drop_unseen=cfg.drop_unseen)
        rank0 = _rank() == 0
        plan = preflight(cfg, dataset, progress and rank0, world=world or 1)
        cfg.train.optimizer, cfg.train.lr = plan.optimizer, plan.lr  # resolved once: a resumed run keeps them
        cfg.dataset = recorded_dataset(cfg.dataset)
        comm = _connect(cfg, world)  # every rank has checked the folder before rank 0 writes to it

        def prepare() -> None:
            if not rank0:
                return
            warn_unseen(dataset, cfg.drop_unseen)
            if restart:  # a start that failed or was killed before its first checkpoint: begin again
                _say(progress, f"{folder}: its run never reached a first checkpoint; starting it again")
                (folder / LOG_FILE).unlink(missing_ok=True)
            create_run_folder(folder, cfg.to_yaml(), dataset.entities, dataset.relations)

        try:
            return _execute(cfg, dataset, folder, progress, comm, prepare)
        except Exception:
            if rank0 and not has_progress(folder):  # a failed start leaves no run folder (interrupted: --resume)
                remove_run_start(folder)
            raise


def resume(path: str | Path, progress: bool = True, threads: int | None = None) -> Run | None:
    """Continue an interrupted run from its last checkpoint; a finished run is returned as it is.

    ``threads``: CPU threads for this process instead of the saved ``train.threads`` (a run started beside
    another job on one thread can finish alone on two); only float rounding depends on it. The run folder's
    config keeps the value it started with; ``results.json`` records the threads of the process that
    finished it. Under torchrun every process calls it, on any number of processes (the checkpoint's rows
    are re-sharded); rank 0 returns the run, the others None."""
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise MedkgeError(f"{folder}: not a medkge run folder (no {CONFIG_FILE})")
    cfg = Config.from_run_folder(folder)
    if threads is not None:
        cfg = cfg.with_overrides({"train.threads": threads})  # checked as any config value
    world = _world()
    if (folder / RESULTS_FILE).is_file():
        return Run.open(folder, cfg.train.device) if _rank() == 0 else None
    with _hold(folder, "medkge train --resume"):
        dataset = load_dataset(cfg.dataset, drop_unseen=cfg.drop_unseen)
        if dataset.entities != read_vocab(folder / ENTITIES_FILE) or dataset.relations != read_vocab(
            folder / RELATIONS_FILE
        ):
            raise MedkgeError(f"dataset {cfg.dataset!r} no longer matches the vocabularies of {folder}")
        try:
            preflight(cfg, dataset, progress and _rank() == 0, world=world or 1)
        except MedkgeError as error:
            if has_progress(folder):
                raise
            raise MedkgeError(
                f"{error} (this run never reached its first checkpoint: start it again with other options, "
                f"`medkge train ... --out {folder}`)"
            ) from None
        return _execute(cfg, dataset, folder, progress, _connect(cfg, world))


@dataclass
class Plan:
    """What the pre-flight resolved: the entity optimiser, its learning rate, and the memory estimate."""

    optimizer: str
    lr: float
    memory: MemoryEstimate


def preflight(cfg: Config, dataset: Dataset, progress: bool = True, world: int = 1) -> Plan:
    """Check what can fail before anything is written or allocated: the device, the method on this path, the
    teacher run, memory (of one process of ``world``). Resolves ``train.optimizer: auto`` (memory.plan) and an
    unset ``train.lr`` (the optimiser's own default), once, for every path."""
    device = runtime.resolve_device(cfg.train.device)
    if world > 1 and cfg.method != "med":
        raise MedkgeError(
            f"training across processes trains MED's one croppable model: method {cfg.method} trains one model "
            "per dim, in one process (run it without torchrun)"
        )
    if world > 1 and dataset.tail_candidates is not None:
        raise MedkgeError(
            f"training across processes ranks against all entities: {dataset.name} ranks tails among its own "
            "candidate set (train it in one process)"
        )
    if world > 1 and cfg.med.evolutionary and cfg.med.ei_positives != "uniform":
        raise MedkgeError(
            "training across processes: med.evolutionary's positive weights are a softmax over the whole batch, "
            "which no process holds (train in one process, or set med.ei_positives=uniform)"
        )
    if cfg.method in ("bkd", "dualde") and cfg.distill.teacher:
        open_teacher_run(cfg, dataset)
    memory_plan = memory.plan(cfg, dataset, device, world=world)
    optimizer = memory_plan.optimizer
    own_lr = optimizer_lr(cfg, dataset, optimizer)
    lr = cfg.train.lr if cfg.train.lr is not None else own_lr
    where = f"per process of {world} " if world > 1 else ""
    _say(progress, f"memory {where}{memory_plan.describe()}")
    chosen = "" if cfg.train.optimizer == optimizer else f" (train.optimizer {cfg.train.optimizer})"
    rate = "" if cfg.train.lr is not None else " (its default: train.lr unset)"
    _say(progress, f"optimizer {optimizer}{chosen}, learning rate {lr:g}{rate}")
    if cfg.train.optimizer == "auto" and cfg.train.lr is not None and optimizer != "adam":
        warnings.warn(
            f"train.optimizer auto chose {optimizer} ({memory_plan.reason}); train.lr {cfg.train.lr:g} is used as "
            f"given, where {optimizer}'s own default is {own_lr:g} here (docs/optimizers.md): name the "
            "optimizer and its rate to silence this",
            MedkgeWarning,
            stacklevel=3,
        )
    return Plan(optimizer, lr, memory_plan)


def _say(progress: bool, message: str) -> None:
    """A status line on stderr (not with ``progress=False``, as the command line's --quiet)."""
    if progress:
        print(f"medkge: {message}", file=sys.stderr)


def _world() -> int:
    """The number of processes torchrun started for this job (0: not started by torchrun)."""
    from .distributed import launched

    return int(os.environ["WORLD_SIZE"]) if launched() else 0


def _rank() -> int:
    return int(os.environ.get("RANK", 0)) if _world() else 0


def _hold(folder: Path, what: str) -> contextlib.AbstractContextManager:
    """The run folder's lock (files.lock_folder), held by rank 0 for its job: the other ranks write only shards."""
    return lock_folder(folder, what) if _rank() == 0 else contextlib.nullcontext()


def _connect(cfg: Config, world: int) -> Comm:
    """How this process talks to the others: alone, or joined to torchrun's job (after every check passed)."""
    if not world:
        return Local(runtime.resolve_device(cfg.train.device))
    from .distributed import connect

    return connect(cfg.train.device)


def _execute(
    cfg: Config, dataset: Dataset, folder: Path, progress: bool, comm: Comm, prepare: Callable[[], None] | None = None
) -> Run | None:
    from . import distributed

    try:
        if prepare is not None:
            prepare()
        comm.barrier()
        results = _run_method(cfg, dataset, folder, progress, comm)
        comm.barrier()
    except BaseException as error:
        if isinstance(comm, distributed.Cluster):
            distributed.stop(comm, error)
        raise
    if isinstance(comm, distributed.Cluster):
        # Free the model and its store now, before the process group goes, not at interpreter exit: left to
        # exit, a rank of a run that had succeeded now and then aborted ("terminate called without an active
        # exception"; 4 of 11 two-rank runs on a loaded machine with TorchRec's modules, 0 of 30 so)
        gc.collect()
        comm.close()
    return results


def _run_method(cfg: Config, dataset: Dataset, folder: Path, progress: bool, comm: Comm) -> Run | None:
    if cfg.train.threads:
        runtime.set_threads(cfg.train.threads)
    if cfg.train.tune_malloc:
        runtime.keep_freed_memory()
    if cfg.train.flush_denormals:  # after the thread count: threads made later would not have it
        runtime.flush_denormals()
    started = time.perf_counter()
    info = METHODS[cfg.method](cfg, dataset, folder, progress, comm)
    peaks = comm.all_gather_object(memory.peak_rss())
    if comm.rank:
        return None
    run = Run.open(folder, comm.device)
    run._dataset = dataset
    device = runtime.describe_device(comm.device) + (f" x {comm.world} ranks" if comm.world > 1 else "")
    results: dict[str, Any] = {
        "method": cfg.method,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint(),
        "model": cfg.model.name,
        "dims": run.dims,
        "device": device,
        "world_size": comm.world,
        "peak_rss_by_rank": peaks,
        "optimizer": cfg.train.optimizer,
        "lr": cfg.train.lr,
        "machine": platform.machine(),
        "torch": torch.__version__,
        **info,
    }
    if results.get("valid") is None:
        results["valid"] = run.evaluate("valid", progress=progress).to_dict()
    if cfg.eval.test and "test" not in results:
        eval_started = time.perf_counter()
        results["test"] = run.evaluate("test", progress=progress).to_dict()
        results["test_eval_seconds"] = time.perf_counter() - eval_started
    results["session_seconds"] = time.perf_counter() - started
    results["checksums"] = model_checksums(folder)
    results["log_records"] = sum(1 for _ in read_jsonl(folder / LOG_FILE))
    write_json(folder / RESULTS_FILE, results)
    return run


def default_run_name(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{Path(cfg.dataset).name}-{cfg.model.name}-{cfg.method}-{stamp}"
