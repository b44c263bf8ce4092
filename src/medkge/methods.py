"""Training methods and the entry points ``train`` and ``resume``.

A method trains the model(s) of a run into its folder. MED trains one croppable model with MED's
objective (losses.py); DT trains one independent model per dim with the base loss.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from . import runtime
from .config import ALIASES, Config
from .datasets import BUNDLED, Dataset, load_dataset
from .errors import MedkgeError
from .evaluation import Metrics
from .files import MODEL_FILE, atomic_write, read_jsonl, read_vocab, write_json, write_vocab
from .losses import MEDObjective, independent_loss
from .run import CHECKPOINT_FILE, CHECKPOINTS_DIR, CONFIG_FILE, LOG_FILE, RESULTS_FILE, Run, per_dim_model_path
from .training import Trainer, TrainState, build_model

Method = Callable[[Config, Dataset, Path, bool], dict[str, Any]]


def train_med(cfg: Config, dataset: Dataset, folder: Path, progress: bool) -> dict[str, Any]:
    """MED: one croppable model, all sub-models trained together with MED's objective."""
    model = build_model(cfg, dataset)
    objective = MEDObjective(model.dims, cfg.loss, cfg.med)
    trainer = Trainer(
        cfg,
        dataset,
        model,
        objective.to(runtime.resolve_device(cfg.train.device)),
        model_path=folder / MODEL_FILE,
        checkpoint_path=folder / CHECKPOINT_FILE,
        log_path=folder / LOG_FILE,
        extra_parameters=list(objective.parameters()),
        progress=progress,
    )
    state = trainer.fit()
    return {**_summary(state), "valid": state.best_metrics}


def train_dt(cfg: Config, dataset: Dataset, folder: Path, progress: bool) -> dict[str, Any]:
    """DT: one independent model per dim, trained one after another with the base loss.

    Each model has its own seed (the run's seed + its index), so its initialisation and negatives are
    its own, as when trained separately. A resumed run skips the dims already finished.
    """
    device = runtime.resolve_device(cfg.train.device)
    per_dim: dict[str, Any] = {}
    valid = []
    for i, dim in enumerate(cfg.model.dims):
        model = build_model(cfg, dataset, dims=[dim], seed=cfg.train.seed + i)
        trainer = Trainer(
            cfg,
            dataset,
            model.to(device),
            lambda scores, batch: (independent_loss(scores, cfg.loss), {}),
            model_path=per_dim_model_path(folder, dim),
            checkpoint_path=folder / CHECKPOINTS_DIR / f"dim_{dim}.safetensors",
            log_path=folder / LOG_FILE,
            seed=cfg.train.seed + i,
            tag=f"dim_{dim}",
            progress=progress,
        )
        state = trainer.fit()
        per_dim[str(dim)] = _summary(state)
        if state.best_metrics is not None:
            valid.append(Metrics.from_dict(state.best_metrics))
    return {
        "train_seconds": sum(m["train_seconds"] for m in per_dim.values()),
        "eval_seconds": sum(m["eval_seconds"] for m in per_dim.values()),
        "per_dim": per_dim,
        "valid": Metrics.merge(valid).to_dict() if len(valid) == len(per_dim) else None,
    }


def _summary(state: TrainState) -> dict[str, Any]:
    return {
        "train_seconds": state.train_seconds,
        "eval_seconds": state.eval_seconds,
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
    }


METHODS: dict[str, Method] = {"med": train_med, "dt": train_dt}


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
        if isinstance(value, range):
            value = list(value)
        overrides[ALIASES.get(key, key)] = value
    return cfg.with_overrides(overrides) if overrides else cfg


def train(
    config: Config | str | Path | dict | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> Run:
    """Train a run and return it: ``train(dataset="kinships", model="rotate", dims=[...], epochs=50, out="runs/x")``.

    ``config`` is a Config, a YAML file or a dict; ``options`` set single keys, by short name (dataset,
    model, dims, epochs, lr, batch_size, negatives, seed, device, gamma, method) or dotted
    (``**{"med.evolutionary": False}``). The run folder ``out`` must not hold another run.
    """
    cfg = make_config(config, **options)
    folder = Path(out) if out is not None else Path("runs") / default_run_name(cfg)
    if (folder / CONFIG_FILE).exists():
        raise MedkgeError(f"{folder} already holds a run: resume it with `medkge train --resume {folder}`")
    dataset = load_dataset(cfg.dataset)
    if cfg.dataset not in BUNDLED:
        cfg.dataset = str(Path(cfg.dataset).resolve())  # the run folder must find it from anywhere
    folder.mkdir(parents=True, exist_ok=True)
    write_vocab(folder / "entities.tsv", dataset.entities)
    write_vocab(folder / "relations.tsv", dataset.relations)
    # written last: its presence marks a run folder
    atomic_write(folder / CONFIG_FILE, cfg.to_yaml())
    return _execute(cfg, dataset, folder, progress)


def resume(path: str | Path, progress: bool = True) -> Run:
    """Continue an interrupted run from its last checkpoint; a finished run is returned as it is."""
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise MedkgeError(f"{folder}: not a medkge run folder (no {CONFIG_FILE})")
    cfg = Config.from_yaml(folder / CONFIG_FILE)
    if (folder / RESULTS_FILE).is_file():
        return Run.open(folder, cfg.train.device)
    dataset = load_dataset(cfg.dataset)
    if dataset.entities != read_vocab(folder / "entities.tsv") or dataset.relations != read_vocab(
        folder / "relations.tsv"
    ):
        raise MedkgeError(f"dataset {cfg.dataset!r} no longer matches the vocabularies of {folder}")
    return _execute(cfg, dataset, folder, progress)


def _execute(cfg: Config, dataset: Dataset, folder: Path, progress: bool) -> Run:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.tune_malloc:
        runtime.keep_freed_memory()
    device = runtime.resolve_device(cfg.train.device)
    started = time.perf_counter()
    info = METHODS[cfg.method](cfg, dataset, folder, progress)
    run = Run.open(folder, device)
    run._dataset = dataset
    results: dict[str, Any] = {
        "method": cfg.method,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint(),
        "model": cfg.model.name,
        "dims": run.dims,
        "device": runtime.describe_device(device),
        "machine": platform.machine(),
        "torch": torch.__version__,
        **info,
    }
    if results.get("valid") is None:
        results["valid"] = run.evaluate("valid", progress=progress).to_dict()
    if cfg.eval.test:
        eval_started = time.perf_counter()
        results["test"] = run.evaluate("test", progress=progress).to_dict()
        results["test_eval_seconds"] = time.perf_counter() - eval_started
    results["session_seconds"] = time.perf_counter() - started
    results["log_records"] = sum(1 for _ in read_jsonl(folder / LOG_FILE))
    write_json(folder / RESULTS_FILE, results)
    return run


def default_run_name(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{Path(cfg.dataset).name}-{cfg.model.name}-{cfg.method}-{stamp}"
