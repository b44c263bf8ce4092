"""A trained run, opened from its folder alone: config, models, vocabularies, logs and results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .datasets import Dataset, load_dataset
from .errors import MedkgeError
from .evaluation import Metrics, evaluate
from .files import MODEL_FILE, load_model, read_json, read_jsonl, read_vocab
from .model import CroppableModel

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
LOG_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
MODELS_DIR = "models"
CHECKPOINTS_DIR = "checkpoints"


def per_dim_model_path(folder: Path, dim: int) -> Path:
    return folder / MODELS_DIR / f"dim_{dim}.safetensors"


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
        config = Config.from_yaml(folder / CONFIG_FILE)
        if (folder / MODEL_FILE).is_file():
            models = [load_model(folder / MODEL_FILE, device)]
        else:
            files = sorted((folder / MODELS_DIR).glob("dim_*.safetensors"))
            if not files:
                raise MedkgeError(f"{folder}: holds no trained model yet (is training still running? see --resume)")
            models = [load_model(f, device) for f in files]
        entities = read_vocab(folder / "entities.tsv")
        relations = read_vocab(folder / "relations.tsv")
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
    ) -> Metrics:
        """Filtered link prediction for every dim of the run (or ``dims``), as in training."""
        dataset = self.dataset()
        options: dict[str, Any] = {
            "ties": ties or self.config.eval.ties,
            "memory_budget": memory_budget or self.config.eval.memory_budget,
            "progress": progress,
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
