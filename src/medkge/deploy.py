"""Deploying a model: open a run or a cropped model, predict by label, crop any size, pick the smallest.

``medkge.load(path)`` opens a run folder or a *cropped model folder* and returns a :class:`LabelledModel`,
which speaks labels (or ids) instead of tensors::

    model = medkge.load("runs/kin")
    model.predict_tails("person12", "term5", k=10, dim=20)
    small = model.crop(20)          # any dim from 1 to the widest, not only the trained ones
    small.save("runs/kin-20")       # a standalone folder: needs neither the run nor its training state

What a cropped model folder holds: docs/formats.md.

Loading checks a model file's header (tensor names, dtypes, shapes against the recorded spec) before
anything is allocated from it, and a cropped model file and its vocabularies against their checksums;
safetensors holds raw tensors only, so no code from a file ever runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .datasets import Dataset, load_dataset
from .errors import MedkgeError, closest
from .evaluation import unique_triples
from .files import (
    LOCK_FILE,
    MODEL_FILE,
    load_model,
    read_json,
    read_vocab,
    save_model,
    sha256_file,
    write_json,
    write_vocab,
)
from .model import CroppableModel
from .run import CONFIG_FILE, VOCAB_FILES, Run
from .scoring import check_dims

INFO_FILE = "model.json"
CROPPED_FORMAT = "medkge-cropped-model"
CROPPED_VERSION = 1
_SUMMARY_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")
_VOCAB_FILES = {"entity": "entities.tsv", "relation": "relations.tsv"}


class Table(Sequence):
    """Results as records (a list of dicts), with ``to_pandas()`` for a DataFrame (pandas is optional)."""

    def __init__(self, records: list[dict[str, Any]], columns: Sequence[str], **meta: Any):
        self.records = records
        self.columns = list(columns)
        self.meta = meta  # what the rows answer: query, dim, ...

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        return self.records[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def column(self, name: str) -> list[Any]:
        """The values of one column, in row order."""
        return [row[name] for row in self.records]

    def to_records(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.records]

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame``."""
        try:
            import pandas as pd
        except ImportError:
            raise MedkgeError("to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.records, columns=self.columns)

    def to_text(self) -> str:
        """The rows as an aligned text table (labels left, numbers right)."""

        def cell(value: Any) -> str:
            return f"{value:.4f}" if isinstance(value, float) else str(value)

        rows = [self.columns, *[[cell(r[c]) for c in self.columns] for r in self.records]]
        numeric = [bool(self.records) and isinstance(self.records[0][c], int | float) for c in self.columns]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
        lines = []
        for row in rows:
            cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"Table({len(self)} rows, columns={self.columns})\n{self.to_text()}"


@dataclass
class Selection:
    """The smallest sub-model meeting a quality target, and the figures it was chosen from."""

    dim: int
    mrr: float
    target: float
    split: str
    mrr_by_dim: dict[int, float]
    rule: str  # "min-mrr X" or "max-drop X relative to dim D"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "mrr": self.mrr,
            "target": self.target,
            "rule": self.rule,
            "split": self.split,
            "mrr_by_dim": {str(d): v for d, v in self.mrr_by_dim.items()},
        }


class LabelledModel:
    """A trained model with its vocabularies: predict and score by label or id, crop, save.

    ``models`` is one croppable model (MED, or a cropped model) or one model per dim (DT runs, whose
    dims are only the trained ones). ``trained_dims`` are the dims that were trained as sub-models.
    Use :func:`load` rather than building one by hand.
    """

    def __init__(
        self,
        models: CroppableModel | Sequence[CroppableModel],
        entities: Sequence[str],
        relations: Sequence[str],
        *,
        trained_dims: Iterable[int] | None = None,
        source: dict[str, Any] | None = None,
        run: Run | None = None,
        dataset: Dataset | str | Path | None = None,
        valid: dict[int, dict[str, float]] | None = None,
    ):
        self.models = sorted([models] if isinstance(models, CroppableModel) else list(models), key=lambda m: m.dim)
        if not self.models:
            raise MedkgeError("a labelled model needs at least one model")
        self.entities = list(entities)
        self.relations = list(relations)
        for m in self.models:
            if (m.num_entities, m.num_relations) != (len(self.entities), len(self.relations)):
                raise MedkgeError(
                    f"the model has {m.num_entities} entities and {m.num_relations} relations, "
                    f"the vocabularies {len(self.entities)} and {len(self.relations)}"
                )
        self.trained_dims = sorted(set(self.dims if trained_dims is None else trained_dims))
        self.source = dict(source or {})  # where the model came from: run path, method, dataset
        self.run = run
        self._valid = dict(valid or {})  # recorded validation metrics by dim, where no run holds them
        self._entity_index = {label: i for i, label in enumerate(self.entities)}
        self._relation_index = {label: i for i, label in enumerate(self.relations)}
        self._crops: dict[int, CroppableModel] = {}
        self._dataset: Dataset | None = None
        self._known: torch.Tensor | None = None
        if dataset is not None:
            self.use_dataset(dataset)

    # ---- description -------------------------------------------------------------------------
    @property
    def dims(self) -> list[int]:
        """The dims this model has sub-models for (a cropped model: its one dim)."""
        return sorted({d for m in self.models for d in m.dims})

    @property
    def dim(self) -> int:
        """The widest dim."""
        return self.models[-1].dim

    @property
    def model_name(self) -> str:
        return self.models[-1].model_name

    @property
    def croppable(self) -> bool:
        """Whether any dim up to the widest can be cropped (false for DT runs: only their trained dims)."""
        return len(self.models) == 1

    def is_trained(self, dim: int) -> bool:
        """Whether ``dim`` was trained as a sub-model (and so checked on validation)."""
        return int(dim) in self.trained_dims

    def info(self) -> dict[str, Any]:
        """What a cropped model folder records in model.json."""
        model = self.model_for(self.dim)
        info: dict[str, Any] = {
            "format": CROPPED_FORMAT,
            "version": CROPPED_VERSION,
            "model": self.model_name,
            "dim": self.dim,
            "gamma": float(model.margins()),
            "p": model.p,
            "trained_sub_model": self.is_trained(self.dim),
            "entities": len(self.entities),
            "relations": len(self.relations),
            "source": self.source,
        }
        valid = self._recorded_metrics("valid")
        if valid is not None and self.dim in valid:
            info["valid"] = {k: valid[self.dim][k] for k in _SUMMARY_KEYS if k in valid[self.dim]}
        return info

    def __repr__(self) -> str:
        where = self.source.get("path", "memory")
        dims = self.dims if len(self.dims) <= 6 else f"[{self.dims[0]}, ..., {self.dims[-1]}] ({len(self.dims)} dims)"
        return (
            f"LabelledModel({self.model_name}, dims={dims}, entities={len(self.entities)}, "
            f"relations={len(self.relations)}, from={where})"
        )

    # ---- labels and ids ----------------------------------------------------------------------
    def entity_id(self, entity: str | int) -> int:
        """The id of an entity given by label (str) or id (int); unknown labels name the closest ones."""
        return _resolve(entity, self.entities, self._entity_index, "entity")

    def relation_id(self, relation: str | int) -> int:
        """The id of a relation given by label (str) or id (int)."""
        return _resolve(relation, self.relations, self._relation_index, "relation")

    # ---- models of one dim ---------------------------------------------------------------------
    def model_for(self, dim: int | None = None) -> CroppableModel:
        """The standalone ``dim``-dimensional :class:`CroppableModel` (default: the widest)."""
        dim = self.dim if dim is None else self._check_dim(dim)
        for m in self.models:
            if m.dims == (dim,):
                return m
        if dim not in self._crops:
            if not self.croppable:
                method = self.source.get("method", "this")
                raise MedkgeError(f"{method} run has no {dim}-d model: it trained only dims {self.dims}")
            self._crops[dim] = self.models[0].crop(dim).eval().requires_grad_(False)  # an inference model
        return self._crops[dim]

    def crop(self, dim: int) -> LabelledModel:
        """A ``dim``-dimensional model whose scores equal sub-model ``dim``'s; any 1 <= dim <= widest."""
        dim = self._check_dim(dim)
        return LabelledModel(
            self.model_for(dim),
            self.entities,
            self.relations,
            trained_dims=[dim] if self.is_trained(dim) else [],
            source=self.source,
            run=self.run,
            dataset=self._dataset,
            valid={dim: self._valid[dim]} if dim in self._valid else None,
        )

    def _check_dim(self, dim: Any) -> int:
        if isinstance(dim, bool) or not hasattr(dim, "__index__"):
            raise MedkgeError(f"dim must be a positive integer, got {dim!r}")
        dim = dim.__index__()
        if not 1 <= dim <= self.dim:
            raise MedkgeError(f"dim must be between 1 and {self.dim}, got {dim}")
        return dim

    # ---- prediction and scoring ----------------------------------------------------------------
    def predict_tails(
        self, head: str | int, relation: str | int, k: int = 10, dim: int | None = None, exclude_known: bool = False
    ) -> Table:
        """The ``k`` best tails of (head, relation, ?) with their scores, best first.

        ``exclude_known`` drops tails that form a known triple (train, valid or test); it needs the
        dataset (a run folder has it; otherwise see :meth:`use_dataset`). Ties come in arbitrary order.
        """
        return self._predict("tail", head, relation, k, dim, exclude_known)

    def predict_heads(
        self, relation: str | int, tail: str | int, k: int = 10, dim: int | None = None, exclude_known: bool = False
    ) -> Table:
        """The ``k`` best heads of (?, relation, tail) with their scores, best first."""
        return self._predict("head", tail, relation, k, dim, exclude_known)

    def _predict(self, side: str, anchor: Any, relation: Any, k: int, dim: int | None, exclude_known: bool) -> Table:
        a, r = self.entity_id(anchor), self.relation_id(relation)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MedkgeError(f"k must be a positive integer, got {k!r}")
        model = self.model_for(dim)
        ids, rel = torch.tensor([a]), torch.tensor([r])
        scores = model.score_t(ids, rel) if side == "tail" else model.score_h(rel, ids)
        scores = scores[0, :, 0]
        available = len(scores)
        if exclude_known:
            known = self.known_answers(side, a, r)
            scores[known] = -torch.inf
            available -= len(known)
        top = torch.topk(scores, min(k, available))
        records = [
            {"rank": i + 1, side: self.entities[j], "id": j, "score": s}
            for i, (j, s) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        ]
        anchor_label, relation_label = self.entities[a], self.relations[r]
        query = (anchor_label, relation_label, "?") if side == "tail" else ("?", relation_label, anchor_label)
        return Table(records, ["rank", side, "id", "score"], query=query, dim=model.dim, exclude_known=exclude_known)

    def score_triples(self, triples: Iterable[Sequence[str | int]] | torch.Tensor, dim: int | None = None) -> Table:
        """Scores of (head, relation, tail) triples, each given by labels or ids (higher = more plausible)."""
        if isinstance(triples, torch.Tensor):
            triples = triples.tolist()
        rows = []
        for triple in triples:
            if isinstance(triple, str) or len(triple) != 3:
                raise MedkgeError(f"a triple is (head, relation, tail), got {triple!r}")
            h, r, t = triple
            rows.append((self.entity_id(h), self.relation_id(r), self.entity_id(t)))
        model = self.model_for(dim)
        hrt = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
        with torch.no_grad():
            scores = model.score_hrt(hrt)[:, 0].tolist() if rows else []
        records = [
            {"head": self.entities[h], "relation": self.relations[r], "tail": self.entities[t], "score": s}
            for (h, r, t), s in zip(rows, scores, strict=True)
        ]
        return Table(records, ["head", "relation", "tail", "score"], dim=model.dim)

    # ---- known triples -------------------------------------------------------------------------
    def use_dataset(self, dataset: Dataset | str | Path) -> None:
        """Use ``dataset`` (a Dataset, a bundled name or a folder) for the known triples of ``exclude_known``."""
        if not isinstance(dataset, Dataset):
            dataset = load_dataset(dataset)
        if dataset.entities != self.entities or dataset.relations != self.relations:
            raise MedkgeError(f"dataset {dataset.name!r} does not match the model's vocabularies (entities.tsv)")
        self._dataset, self._known = dataset, None

    def dataset(self) -> Dataset:
        """The dataset of the known triples: given, the run's, or the one a cropped model recorded."""
        if self._dataset is None:
            if self.run is not None:
                self._dataset = self.run.dataset()
            else:
                name = self.source.get("dataset")
                if not name:
                    raise MedkgeError(
                        "excluding known triples needs the dataset: use the run folder, or give --dataset NAME_OR_DIR"
                    )
                try:
                    self.use_dataset(name)
                except MedkgeError as error:
                    raise MedkgeError(
                        f"excluding known triples needs the dataset {name!r}, which cannot be used here ({error}); "
                        "use the run folder, or give --dataset NAME_OR_DIR"
                    ) from None
        assert self._dataset is not None
        return self._dataset

    def known_answers(self, side: str, anchor: int, relation: int) -> torch.Tensor:
        """Ids of the entities that complete (anchor, relation) on ``side`` in a known triple."""
        if self._known is None:
            self._known = unique_triples(self.dataset().known_triples())
        anchor_col, answer_col = (0, 2) if side == "tail" else (2, 0)
        known = self._known
        return known[(known[:, anchor_col] == anchor) & (known[:, 1] == relation), answer_col]

    # ---- choosing a size -----------------------------------------------------------------------
    def select(
        self,
        *,
        min_mrr: float | None = None,
        max_drop: float | None = None,
        dims: Sequence[int] | None = None,
        split: str = "valid",
        progress: bool = False,
    ) -> Selection:
        """The smallest sub-model whose MRR on ``split`` meets the target.

        Give ``min_mrr`` (an absolute MRR) or ``max_drop`` (a fraction: at most that much below the MRR of
        the widest dim, e.g. 0.01 for 1 %). The figures are the run's recorded validation results (the
        one-pass evaluation of all sub-models); with ``dims`` those dims are evaluated now, in one pass.
        """
        if (min_mrr is None) == (max_drop is None):
            raise MedkgeError("give exactly one target: min_mrr (--min-mrr) or max_drop (--max-drop)")
        if self.run is None or self.dims != self.run.dims:
            raise MedkgeError("selecting a sub-model needs a run folder (its validation results), not a cropped model")
        mrr = {d: v["mrr"] for d, v in self._metrics(split, dims, progress).items()}
        if min_mrr is not None:
            if not 0 <= min_mrr <= 1:
                raise MedkgeError(f"--min-mrr must be between 0 and 1, got {min_mrr}")
            target, rule = float(min_mrr), f"min-mrr {min_mrr}"
        else:
            assert max_drop is not None
            if not 0 <= max_drop < 1:
                raise MedkgeError(f"--max-drop must be a fraction in [0, 1), got {max_drop}")
            widest = max(mrr)
            target, rule = (1 - max_drop) * mrr[widest], f"max-drop {max_drop} relative to dim {widest}"
        meeting = [d for d in sorted(mrr) if mrr[d] >= target]
        if not meeting:
            best = max(mrr, key=mrr.__getitem__)
            raise MedkgeError(
                f"no sub-model reaches {split} MRR {target:.4f}; the best is dim {best} with {mrr[best]:.4f}"
            )
        return Selection(meeting[0], mrr[meeting[0]], target, split, dict(sorted(mrr.items())), rule)

    def _metrics(self, split: str, dims: Sequence[int] | None, progress: bool) -> dict[int, dict[str, float]]:
        assert self.run is not None
        if dims is not None:
            return dict(self.run.evaluate(split, check_dims(dims), progress=progress))
        recorded = self._recorded_metrics(split)
        if recorded is None:  # not recorded (evaluation was switched off): evaluate all dims now
            return dict(self.run.evaluate(split, progress=progress))
        return recorded

    def _recorded_metrics(self, split: str) -> dict[int, dict[str, float]] | None:
        if self.run is None:
            return dict(self._valid) if split == "valid" and self._valid else None
        try:
            return dict(self.run.metrics(split))
        except MedkgeError:
            return None

    # ---- saving ------------------------------------------------------------------------------
    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the widest dim as a cropped model folder (see the module docstring); returns its path.

        ``overwrite`` replaces an earlier cropped model there; any other non-empty folder is refused.
        """
        folder = prepare_folder(out, overwrite)
        model = self.model_for(self.dim)
        save_model(folder / MODEL_FILE, model)
        write_vocab(folder / "entities.tsv", self.entities)
        write_vocab(folder / "relations.tsv", self.relations)
        # last: its presence marks a complete folder; the checksums catch a model file or vocabulary changed since
        vocabularies = {name: sha256_file(folder / name) for name in VOCAB_FILES}
        checksums = {"sha256": sha256_file(folder / MODEL_FILE), "vocabulary_sha256": vocabularies}
        write_json(folder / INFO_FILE, self.info() | checksums)
        return folder


def prediction_json(model: LabelledModel, table: Table) -> dict[str, Any]:
    """The JSON of a prediction ``table`` from ``model.predict_tails`` or ``predict_heads``: what
    ``medkge predict --json`` prints and the server's ``/predict`` answers."""
    dim = table.meta["dim"]
    return {
        "query": dict(zip(("head", "relation", "tail"), table.meta["query"], strict=True)),
        "dim": dim,
        "trained_sub_model": model.is_trained(dim),
        "exclude_known": table.meta["exclude_known"],
        "results": table.to_records(),
    }


def load(path: str | Path, device: str | torch.device = "cpu", dataset: Dataset | str | Path | None = None):
    """Open a run folder or a cropped model folder (or its model.safetensors) as a :class:`LabelledModel`.

    ``dataset`` (a Dataset, bundled name or folder) supplies the known triples for ``exclude_known``
    where the folder does not: a run folder uses its own dataset.
    """
    folder = Path(path)
    if folder.is_file() and folder.name in (MODEL_FILE, INFO_FILE):
        folder = folder.parent
    if not folder.is_dir():
        raise MedkgeError(f"{path}: no such folder (expected a run folder or a cropped model folder)")
    if (folder / CONFIG_FILE).is_file():
        return _load_run(folder, device, dataset)
    if (folder / INFO_FILE).is_file():
        return _load_cropped(folder, device, dataset)
    raise MedkgeError(f"{folder}: not a medkge run folder nor a cropped model folder (no {CONFIG_FILE} or {INFO_FILE})")


def _load_run(folder: Path, device: str | torch.device, dataset: Any) -> LabelledModel:
    run = Run.open(folder, device)
    for m in run.models:
        m.requires_grad_(False)  # deployed models only infer: scores without autograd history
    config = run.config
    source = {"path": str(folder.resolve()), "method": config.method, "dataset": config.dataset, "dims": run.dims}
    return LabelledModel(
        run.models, run.entities, run.relations, trained_dims=run.dims, source=source, run=run, dataset=dataset
    )


def _load_cropped(folder: Path, device: str | torch.device, dataset: Any) -> LabelledModel:
    info = read_json(folder / INFO_FILE)
    if not isinstance(info, dict) or info.get("format") != CROPPED_FORMAT:
        raise MedkgeError(f"{folder / INFO_FILE}: not a medkge cropped model description")
    path = folder / MODEL_FILE
    model = load_model(path, device).requires_grad_(False)
    if model.dims != (info.get("dim"),) or model.model_name != info.get("model"):
        raise MedkgeError(f"{folder}: {INFO_FILE} does not describe {MODEL_FILE} (model or dim differ)")
    vocabularies = info.get("vocabulary_sha256") if isinstance(info.get("vocabulary_sha256"), dict) else {}
    for name, recorded in [(MODEL_FILE, info.get("sha256")), *vocabularies.items()]:  # older folders: model only
        if name in (MODEL_FILE, *VOCAB_FILES) and recorded and sha256_file(folder / name) != recorded:
            raise MedkgeError(f"{folder / name}: does not match the checksum in {INFO_FILE} (modified or damaged)")
    entities = read_vocab(folder / "entities.tsv")
    relations = read_vocab(folder / "relations.tsv")
    source = info.get("source") if isinstance(info.get("source"), dict) else {}
    valid = {model.dim: info["valid"]} if isinstance(info.get("valid"), dict) else None
    trained = [model.dim] if info.get("trained_sub_model") else []
    return LabelledModel(model, entities, relations, trained_dims=trained, source=source, dataset=dataset, valid=valid)


def prepare_folder(out: str | Path, overwrite: bool) -> Path:
    """An output folder that is new or empty (or, with ``overwrite``, holds earlier medkge output)."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise MedkgeError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(f.name != LOCK_FILE for f in folder.iterdir()):
        if (folder / CONFIG_FILE).exists():
            raise MedkgeError(f"{folder} holds a run; choose another output folder")
        if not overwrite:
            raise MedkgeError(f"{folder} is not empty; choose another output folder or overwrite (--force)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def folder_size(folder: Path) -> int:
    """Bytes of the files in ``folder`` (not recursive)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def _resolve(value: Any, labels: list[str], index: dict[str, int], kind: str) -> int:
    if isinstance(value, str):
        if value in index:
            return index[value]
        hint = closest(value, labels) or f"; no {kind} label is close (they are listed in {_VOCAB_FILES[kind]})"
        raise MedkgeError(f"unknown {kind} {value!r}{hint}")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise MedkgeError(f"{kind} must be a label (str) or an id (int), got {value!r}")
    i = value.__index__()
    if not 0 <= i < len(labels):
        raise MedkgeError(f"{kind} id {i} out of range (0 to {len(labels) - 1})")
    return i
