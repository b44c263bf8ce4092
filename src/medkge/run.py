"""A trained run, opened from its folder alone: config, models, vocabularies, logs and results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import runtime
from .config import Config
from .datasets import Dataset, load_dataset
from .errors import MedkgeError
from .evaluation import Metrics, evaluate
from .files import check_model_file, load_model, read_json, read_jsonl, read_vocab, sha256_file
from .layout import CONFIG_FILE, ENTITIES_FILE, LOG_FILE, RELATIONS_FILE, RESULTS_FILE, answer_files, model_files
from .model import CroppableModel

# Model files up to this size are checked against the sha256 that results.json recorded when the run
# finished, every time a run is opened; larger ones (hashing 10 GB takes many seconds) by header only.
VERIFY_MAX_BYTES = 2 << 30


def model_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of a finished run that changes its answers (:func:`answer_files`), by path
    relative to the run folder."""
    return {str(f.relative_to(folder)): sha256_file(f) for f in answer_files(folder)}


def check_checksums(folder: Path, files: Sequence[Path], recorded: dict[str, str] | None) -> None:
    """Compare files with the checksums recorded at the end of training (runs made before they were
    recorded, files recorded since, and files over VERIFY_MAX_BYTES, are not compared)."""
    for f in files:
        expected = (recorded or {}).get(str(f.relative_to(folder)))
        if expected and f.stat().st_size <= VERIFY_MAX_BYTES and sha256_file(f) != expected:
            raise MedkgeError(f"{f}: does not match the checksum in {RESULTS_FILE} (modified or damaged)")


def eval_protocol(
    config: Config,
    protocol: str | None = None,
    candidates: int | None = None,
    seed: int | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """The evaluation protocol options of a run's config (``eval.protocol`` and its sampled settings, or
    ``eval.valid_protocol`` for the validations during training), overridden."""
    ec = config.eval
    if split == "valid" and ec.valid_protocol != "same":
        protocol = protocol or ec.valid_protocol
    return {
        "protocol": protocol or ec.protocol,
        "sampled_candidates": candidates or ec.sampled_candidates,
        "sampled_seed": ec.sampled_seed if seed is None else seed,
        "subset": ec.valid_triples if split == "valid" else None,
    }


class Run:
    """A run folder: ``Run.open("runs/x")``, then ``run.model``, ``run.evaluate()``, ``run.crop(40)``.

    ``models`` is one croppable model for MED, or one model per dim for DT and the distillation
    baselines; ``dims`` lists every dimension the run provides.
    """

    def __init__(
        self, path: Path, config: Config, models: list[CroppableModel], entities: list[str], relations: list[str]
    ):
        self.path = Path(path)
        self.config = config
        self.models = sorted(models, key=lambda m: m.dims[0])
        self.entities = entities
        self.relations = relations
        self._dataset: Dataset | None = None

    @classmethod
    def open(cls, path: str | Path, device: str | torch.device = "cpu") -> Run:
        folder = Path(path)
        if not (folder / CONFIG_FILE).is_file():
            raise MedkgeError(f"{folder}: not a medkge run folder (no {CONFIG_FILE})")
        config = Config.from_run_folder(folder)
        files = model_files(folder)
        if not files:
            raise MedkgeError(f"{folder}: holds no trained model yet (is training still running? see --resume)")
        for f in files:
            check_model_file(f)  # a damaged header gets its own message before the checksum's
        results = read_json(folder / RESULTS_FILE) if (folder / RESULTS_FILE).is_file() else {}
        check_checksums(folder, answer_files(folder), results.get("checksums"))
        device = runtime.resolve_device(str(device), "device")  # a missing GPU as one line, not torch's error
        models = [load_model(f, device) for f in files]
        entities = read_vocab(folder / ENTITIES_FILE)
        relations = read_vocab(folder / RELATIONS_FILE)
        for m in models:
            if (m.num_entities, m.num_relations) != (len(entities), len(relations)):
                raise MedkgeError(f"{folder}: the model's tables do not match the vocabularies")
        return cls(folder, config, models, entities, relations)

    @property
    def model(self) -> CroppableModel:
        """The croppable model (MED), or the widest per-dim model of a DT/distillation run."""
        return self.models[-1]

    @property
    def dims(self) -> list[int]:
        return sorted({d for m in self.models for d in m.dims})

    def model_for(self, dim: int) -> CroppableModel:
        """A standalone ``dim``-dimensional model: a crop of the croppable model, or DT's own model."""
        for m in self.models:
            if len(m.dims) == 1 and m.dims[0] == dim:
                return m
        if len(self.models) == 1:
            return self.models[0].crop(dim)
        raise MedkgeError(f"this {self.config.method} run has no {dim}-d model (dims {self.dims})")

    crop = model_for

    def dataset(self) -> Dataset:
        """The run's dataset, checked against the run's vocabularies."""
        if self._dataset is None:
            dataset = load_dataset(self.config.dataset)
            if dataset.entities != self.entities or dataset.relations != self.relations:
                raise MedkgeError(
                    f"dataset {self.config.dataset!r} no longer matches the run's vocabularies (entities.tsv)"
                )
            self._dataset = dataset
        return self._dataset

    def evaluate(
        self,
        split: str = "test",
        dims: Sequence[int] | None = None,
        *,
        ties: str | None = None,
        memory_budget: int | None = None,
        progress: bool = True,
        candidates: torch.Tensor | None = None,
        protocol: str | None = None,
        sampled_candidates: int | None = None,
        sampled_seed: int | None = None,
        subset: int | None = None,
    ) -> Metrics:
        """Filtered link prediction for every dim of the run (or ``dims``), as in training.

        ``candidates``: entity ids to rank the tails among, tails only (see :func:`medkge.evaluate`).
        ``protocol`` (full or sampled) and its options default to the run's ``eval.protocol``, also for
        ``split="valid"`` (the validations during training follow ``eval.valid_protocol`` and
        ``eval.valid_triples`` instead); ``subset`` ranks that many triples of ``split`` only, drawn once with
        the sampled seed.
        """
        dataset = self.dataset()
        options: dict[str, Any] = {
            "ties": ties or self.config.eval.ties,
            "memory_budget": memory_budget or self.config.eval.memory_budget,
            "progress": progress,
            "candidates": candidates,
            **eval_protocol(self.config, protocol, sampled_candidates, sampled_seed),
            "subset": subset,
        }
        if len(self.models) == 1:
            return evaluate(self.model, dataset, split, dims=dims, **options)
        wanted = self.dims if dims is None else list(dims)
        parts = [evaluate(self.model_for(d), dataset, split, **options) for d in wanted]
        return Metrics.merge(parts)

    def results(self) -> dict[str, Any] | None:
        """The final results written at the end of training (None while training)."""
        path = self.path / RESULTS_FILE
        return read_json(path) if path.is_file() else None

    def log(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.path / LOG_FILE))

    def metrics(self, split: str = "test") -> Metrics:
        """The per-dim metrics recorded at the end of training."""
        results = self.results()
        if not results or split not in results:
            raise MedkgeError(f"{self.path}: no {split} results recorded (run `medkge evaluate {self.path}`)")
        return Metrics.from_dict(results[split])

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, method={self.config.method}, model={self.config.model.name}, dims={self.dims})"
