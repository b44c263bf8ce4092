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

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import card, quantize
from .datasets import Dataset, load_dataset
from .errors import MedkgeError
from .evaluation import Metrics
from .files import atomic_write, read_json, read_vocab, sha256_file, write_json, write_vocab
from .inference import DEFAULT_CACHE_BYTES, Funnel, Inference, Query, QueryError, Vocabulary, echo
from .layout import (
    CARD_FILE,
    CONFIG_FILE,
    ENTITIES_FILE,
    INFO_FILE,
    LOCK_FILE,
    MODEL_FILE,
    RELATIONS_FILE,
    VOCAB_FILES,
)
from .model import CroppableModel
from .run import Run
from .scoring import check_dims

CROPPED_FORMAT = "medkge-cropped-model"
CROPPED_VERSION = 1
_SUMMARY_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


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
    protocol: str = "full"  # how the figures were made: "full", "full, N of M triples (seed S)", "sampled (...)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "mrr": self.mrr,
            "target": self.target,
            "rule": self.rule,
            "split": self.split,
            "mrr_by_dim": {str(d): v for d, v in self.mrr_by_dim.items()},
            "protocol": self.protocol,
        }


class LabelledModel:
    """A trained model with its vocabularies: predict and score by label or id, crop, save.

    ``models`` is one croppable model (MED, or a cropped model) or one model per dim (DT runs, whose
    dims are only the trained ones). ``trained_dims`` are the dims that were trained as sub-models.
    Every answer comes from :attr:`inference` (medkge.inference), the one inference path that the
    command line and the server use too. Use :func:`load` rather than building one by hand.
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
        test: dict[int, dict[str, float]] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
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
        self.source = dict(source or {})  # where the model came from: run name, method, dataset, checksums
        self.run = run
        # recorded metrics by dim, where no run holds them (a cropped model's model.json)
        self._recorded = {"valid": dict(valid or {}), "test": dict(test or {})}
        self._dataset: Dataset | None = None
        self.folder: Path | None = None  # the folder it was loaded from (never written over)
        self.dtype = "float32"  # how its model file stores the tables (medkge.quantize)
        self.card: dict[str, Any] = {}  # a cropped folder's training record, for its crops' model cards
        self.inference = Inference(
            self.models,
            Vocabulary(self.entities, "entity"),
            Vocabulary(self.relations, "relation"),
            self.trained_dims,
            known=lambda: self.dataset().known_triples(),
            cache_bytes=cache_bytes,
        )
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

    def info(self, dtype: str | None = None) -> dict[str, Any]:
        """What a cropped model folder records in model.json (written in ``dtype``, default the model's)."""
        model = self.model_for(self.dim)
        dtype = dtype or self.dtype
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
            "source": self.published_source(),
            "dtype": dtype,
            "training": card.card_data(self),  # the trained dims' metrics and the budget, for the model card
        }
        if dtype == "int8":
            info["quantization"] = quantize.INT8_NOTE
        for split in ("valid", "test"):
            recorded = self.recorded_metrics(split)
            if recorded is not None and self.dim in recorded:
                info[split] = {k: recorded[self.dim][k] for k in _SUMMARY_KEYS if k in recorded[self.dim]}
        return info

    def __repr__(self) -> str:
        where = self.source.get("run", "memory")
        dims = self.dims if len(self.dims) <= 6 else f"[{self.dims[0]}, ..., {self.dims[-1]}] ({len(self.dims)} dims)"
        return (
            f"LabelledModel({self.model_name}, dims={dims}, entities={len(self.entities)}, "
            f"relations={len(self.relations)}, from={where})"
        )

    def published_source(self) -> dict[str, Any]:
        """:attr:`source` with the data's checksum (sha256 over vocabularies and triples,
        ``Dataset.fingerprint``) where the run's dataset is at hand: no path of this machine."""
        if "data_sha256" not in self.source and self.run is not None:
            with contextlib.suppress(MedkgeError):  # the dataset is not here: the model is still published
                self.source["data_sha256"] = self.run.dataset().fingerprint()
        return self.source

    # ---- labels and ids ----------------------------------------------------------------------
    def entity_id(self, entity: str | int, loc: Sequence[str | int] = ()) -> int:
        """The id of an entity given by label (str) or id (int); an unknown label raises
        :class:`medkge.inference.UnknownLabel` (a MedkgeError) naming the closest ones; ``loc`` names the
        field in messages."""
        return self.inference.entities.id(entity, loc)

    def relation_id(self, relation: str | int, loc: Sequence[str | int] = ()) -> int:
        """The id of a relation given by label (str) or id (int)."""
        return self.inference.relations.id(relation, loc)

    def triple_ids(self, triple: Sequence[str | int], loc: Sequence[str | int] = ()) -> tuple[int, int, int]:
        """The ids of a (head, relation, tail) triple given by labels or ids."""
        if isinstance(triple, str) or len(triple) != 3:
            raise QueryError(f"a triple is (head, relation, tail), got {echo(triple)}", loc)
        h, r, t = triple
        return self.entity_id(h, (*loc, 0)), self.relation_id(r, (*loc, 1)), self.entity_id(t, (*loc, 2))

    # ---- models of one dim ---------------------------------------------------------------------
    def model_for(self, dim: int | None = None) -> CroppableModel:
        """The standalone ``dim``-dimensional :class:`CroppableModel` (default: the widest)."""
        dim = self.dim if dim is None else self._check_dim(dim)
        if not self.croppable and dim not in self.dims:
            method = self.source.get("method", "this")
            raise MedkgeError(f"{method} run has no {dim}-d model: it trained only dims {self.dims}")
        return self.inference.model_for(dim)

    def crop(self, dim: int) -> LabelledModel:
        """A ``dim``-dimensional model whose scores equal sub-model ``dim``'s; any 1 <= dim <= widest."""
        dim = self._check_dim(dim)
        cropped = LabelledModel(
            self.model_for(dim),
            self.entities,
            self.relations,
            trained_dims=[dim] if self.is_trained(dim) else [],
            source=self.source,
            run=self.run,
            dataset=self._dataset,
            **{s: {dim: v[dim]} for s, v in self._recorded_all().items() if dim in v},
        )
        cropped.folder, cropped.dtype, cropped.card = self.folder, self.dtype, self.card
        return cropped

    def _recorded_all(self) -> dict[str, dict[int, dict[str, float]]]:
        return {s: self.recorded_metrics(s) or {} for s in ("valid", "test")}

    def _check_dim(self, dim: Any) -> int:
        if isinstance(dim, bool) or not hasattr(dim, "__index__"):
            raise MedkgeError(f"dim must be a positive integer, got {echo(dim)}")
        dim = dim.__index__()
        if not 1 <= dim <= self.dim:
            raise MedkgeError(f"dim must be between 1 and {self.dim}, got {dim}")
        return dim

    # ---- prediction and scoring ----------------------------------------------------------------
    def predict_tails(
        self,
        head: str | int,
        relation: str | int,
        k: int = 10,
        dim: int | None = None,
        exclude_known: bool = False,
        funnel: Funnel | str | None = None,
    ) -> Table:
        """The ``k`` best tails of (head, relation, ?) with their scores, best first.

        ``exclude_known`` drops tails that form a known triple (train, valid or test); it needs the
        dataset (a run folder has it; otherwise see :meth:`use_dataset`). ``funnel`` ("D:K"): shortlist K
        tails with the D-d prefix and rerank them at ``dim``. Ties come in arbitrary order.
        """
        return self.predict(
            [self.query(head=head, relation=relation, k=k, dim=dim, exclude_known=exclude_known, funnel=funnel)]
        )[0]

    def predict_heads(
        self,
        relation: str | int,
        tail: str | int,
        k: int = 10,
        dim: int | None = None,
        exclude_known: bool = False,
        funnel: Funnel | str | None = None,
    ) -> Table:
        """The ``k`` best heads of (?, relation, tail) with their scores, best first."""
        return self.predict(
            [self.query(tail=tail, relation=relation, k=k, dim=dim, exclude_known=exclude_known, funnel=funnel)]
        )[0]

    def query(self, **options: Any) -> Query:
        """A checked query (labels or ids resolved): see :meth:`medkge.inference.Inference.query`."""
        if options.get("dim") is not None and not self.croppable:
            self.model_for(self._check_dim(options["dim"]))  # a DT run's message
        return self.inference.query(**options)

    def predict(self, queries: Sequence[Query]) -> list[Table]:
        """The answers of many queries (from :meth:`query`), scored together where they share side and dim."""
        tables = []
        for answer in self.inference.top_k(queries):
            q = answer.query
            records = [
                {"rank": i + 1, q.side: self.entities[j], "id": j, "score": s}
                for i, (j, s) in enumerate(zip(answer.ids, answer.scores, strict=True))
            ]
            anchor, relation = self.entities[q.anchor], self.relations[q.relation]
            query = (anchor, relation, "?") if q.side == "tail" else ("?", relation, anchor)
            meta = {"query": query, "dim": q.dim, "exclude_known": q.exclude_known}
            if q.funnel is not None:
                meta["funnel"] = q.funnel
            tables.append(Table(records, ["rank", q.side, "id", "score"], **meta))
        return tables

    def score_triples(self, triples: Iterable[Sequence[str | int]] | torch.Tensor, dim: int | None = None) -> Table:
        """Scores of (head, relation, tail) triples, each given by labels or ids (higher = more plausible)."""
        if isinstance(triples, torch.Tensor):
            triples = triples.tolist()
        rows = [self.triple_ids(triple) for triple in triples]
        d = self.dim if dim is None else self._check_dim(dim)
        if not self.croppable:
            self.model_for(d)  # a DT run's message for a dim it did not train
        hrt = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
        scores = self.inference.score_triples(hrt, d).tolist() if rows else []
        records = [
            {"head": self.entities[h], "relation": self.relations[r], "tail": self.entities[t], "score": s}
            for (h, r, t), s in zip(rows, scores, strict=True)
        ]
        return Table(records, ["head", "relation", "tail", "score"], dim=d)

    def similar(
        self, entity: str | int, k: int = 10, dim: int | None = None, funnel: Funnel | str | None = None
    ) -> Table:
        """The ``k`` entities nearest to ``entity`` by the cosine of their ``dim``-d embeddings (all parts
        flattened), the entity itself left out: exactly, or through ``funnel`` ("D:K")."""
        e = self.entity_id(entity)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise QueryError(f"k must be a positive integer, got {echo(k)}", ("k",), named=True)
        d = self.inference.check_dim(dim)
        shortlist = Funnel.parse(funnel)
        if shortlist is not None:
            self.inference.check_dim(shortlist.dim, ("funnel",))
        ids, values, method = self.inference.similar(e, k, d, shortlist)
        records = [
            {"rank": i + 1, "entity": self.entities[j], "id": j, "similarity": s}
            for i, (j, s) in enumerate(zip(ids, values, strict=True))
        ]
        meta = {"entity": self.entities[e], "dim": d, "method": method} | ({"funnel": shortlist} if shortlist else {})
        return Table(records, ["rank", "entity", "id", "similarity"], **meta)

    # ---- known triples -------------------------------------------------------------------------
    def use_dataset(self, dataset: Dataset | str | Path) -> None:
        """Use ``dataset`` (a Dataset, a bundled name or a folder) for the known triples of ``exclude_known``."""
        if not isinstance(dataset, Dataset):
            dataset = load_dataset(dataset)
        if dataset.entities != self.entities or dataset.relations != self.relations:
            raise MedkgeError(f"dataset {dataset.name!r} does not match the model's vocabularies (entities.tsv)")
        self._dataset = dataset
        self.inference.use_known(lambda: dataset.known_triples())

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
        metrics = self._metrics(split, dims, progress)
        mrr = {d: v["mrr"] for d, v in metrics.items()}
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
        chosen = meeting[0]
        return Selection(chosen, mrr[chosen], target, split, dict(sorted(mrr.items())), rule, protocol=metrics.protocol)

    def _metrics(self, split: str, dims: Sequence[int] | None, progress: bool) -> Metrics:
        assert self.run is not None
        if dims is not None:
            return self.run.evaluate(split, check_dims(dims), progress=progress)
        try:
            return self.run.metrics(split)
        except MedkgeError:  # not recorded (evaluation was switched off): evaluate all dims now
            return self.run.evaluate(split, progress=progress)

    def recorded_protocol(self, split: str) -> str | None:
        """How the recorded metrics of ``split`` were made ("full", "full, N of M triples (seed S)" for a
        validation on a subset, "sampled (...)"); None where none is recorded (a folder cropped before it was)."""
        if self.run is None:
            return (self.card.get("protocols") or {}).get(split)
        try:
            return self.run.metrics(split).protocol
        except MedkgeError:
            return None

    def recorded_metrics(self, split: str) -> dict[int, dict[str, float]] | None:
        """The metrics by dim recorded at the end of training (a run) or in model.json (a cropped model)."""
        if self.run is None:
            return dict(self._recorded.get(split) or {}) or None
        try:
            return dict(self.run.metrics(split))
        except MedkgeError:
            return None

    # ---- saving ------------------------------------------------------------------------------
    def save(self, out: str | Path, overwrite: bool = False, dtype: str | None = None) -> Path:
        """Write the widest dim as a cropped model folder (see the module docstring); returns its path.

        ``dtype``: float32, float16 or int8 (medkge.quantize; default: the model's own). ``overwrite`` replaces
        an earlier cropped model there; any other non-empty folder, and the model's own, are refused.
        """
        dtype = quantize.check_dtype(dtype or self.dtype)
        folder = prepare_folder(out, overwrite, self.folder)
        quantize.save(folder / MODEL_FILE, self.model_for(self.dim), dtype)
        write_vocab(folder / ENTITIES_FILE, self.entities)
        write_vocab(folder / RELATIONS_FILE, self.relations)
        vocabularies = {name: sha256_file(folder / name) for name in VOCAB_FILES}
        checksums = {"sha256": sha256_file(folder / MODEL_FILE), "vocabulary_sha256": vocabularies}
        info = self.info(dtype) | checksums
        files = [MODEL_FILE, *VOCAB_FILES, INFO_FILE]
        atomic_write(folder / CARD_FILE, card.render(info, info["training"], files))
        # last: its presence marks a complete folder; the checksums catch a model file or vocabulary changed since
        write_json(folder / INFO_FILE, info)
        return folder


def prediction_json(model: LabelledModel, table: Table) -> dict[str, Any]:
    """The JSON of a prediction ``table`` from ``model.predict_tails``, ``predict_heads`` or ``predict``: what
    ``medkge predict --json`` prints and the server's ``/predict`` answers."""
    dim = table.meta["dim"]
    out = {
        "query": dict(zip(("head", "relation", "tail"), table.meta["query"], strict=True)),
        "dim": dim,
        "trained_sub_model": model.is_trained(dim),
        "exclude_known": table.meta["exclude_known"],
        "results": table.to_records(),
    }
    if table.meta.get("funnel") is not None:
        out["funnel"] = str(table.meta["funnel"])
    return out


def similar_json(model: LabelledModel, table: Table) -> dict[str, Any]:
    """The JSON of a :meth:`LabelledModel.similar` table (the server's ``/similar``)."""
    dim = table.meta["dim"]
    out = {
        "entity": table.meta["entity"],
        "dim": dim,
        "trained_sub_model": model.is_trained(dim),
        "measure": "cosine",
        "results": table.to_records(),
    }
    if table.meta.get("funnel") is not None:
        out["funnel"] = str(table.meta["funnel"])
    if table.meta.get("method") not in (None, "exact") and table.meta.get("funnel") is None:
        out["index"] = table.meta["method"]
    return out


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dataset: Dataset | str | Path | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
):
    """Open a run folder or a cropped model folder (or its model.safetensors) as a :class:`LabelledModel`.

    ``dataset`` (a Dataset, bundled name or folder) supplies the known triples for ``exclude_known``
    where the folder does not: a run folder uses its own dataset. ``cache_bytes``: memory for contiguous
    copies of small dims (medkge.inference.CropCache).
    """
    folder = Path(path)
    if folder.is_file() and folder.name in (MODEL_FILE, INFO_FILE):
        folder = folder.parent
    if not folder.is_dir():
        raise MedkgeError(f"{path}: no such folder (expected a run folder or a cropped model folder)")
    if (folder / CONFIG_FILE).is_file():
        model = _load_run(folder, device, dataset)
    elif (folder / INFO_FILE).is_file():
        model = _load_cropped(folder, device, dataset)
    else:
        raise MedkgeError(
            f"{folder}: not a medkge run folder nor a cropped model folder (no {CONFIG_FILE} or {INFO_FILE})"
        )
    if model.inference.cache is not None:
        model.inference.cache.budget = int(cache_bytes)
    return model


def _load_run(folder: Path, device: str | torch.device, dataset: Any) -> LabelledModel:
    run = Run.open(folder, device)
    for m in run.models:
        m.requires_grad_(False)  # deployed models only infer: scores without autograd history
    model = LabelledModel(
        run.models, run.entities, run.relations, trained_dims=run.dims, source=run_source(run), run=run, dataset=dataset
    )
    model.folder = folder.resolve()
    return model


def run_source(run: Run) -> dict[str, Any]:
    """Where a model came from, as published files record it: the run's name (never its path), method,
    dataset (a bundled name, or a dataset folder's name), trained dims and the sha256 of its config.yaml
    (the data's checksum is added when a folder is written: :meth:`LabelledModel.info`)."""
    config = run.config
    source: dict[str, Any] = {
        "run": run.path.resolve().name,
        "method": config.method,
        "dataset": Path(str(config.dataset)).name,
        "dims": run.dims,
        "config_sha256": sha256_file(run.path / CONFIG_FILE),
    }
    teacher = getattr(getattr(config, "distill", None), "teacher", None)
    if config.method in ("bkd", "dualde") and teacher:
        source["teacher"] = Path(str(teacher)).name  # the teacher run's name, not its path
    return source


def _load_cropped(folder: Path, device: str | torch.device, dataset: Any) -> LabelledModel:
    info = read_json(folder / INFO_FILE)
    if not isinstance(info, dict) or info.get("format") != CROPPED_FORMAT:
        raise MedkgeError(f"{folder / INFO_FILE}: not a medkge cropped model description")
    path = folder / MODEL_FILE
    dtype = info.get("dtype", "float32")
    if dtype not in quantize.DTYPES:
        raise MedkgeError(f"{folder / INFO_FILE}: unknown dtype {echo(dtype)}")
    model = quantize.load(path, dtype, device).requires_grad_(False)
    if model.dims != (info.get("dim"),) or model.model_name != info.get("model"):
        raise MedkgeError(f"{folder}: {INFO_FILE} does not describe {MODEL_FILE} (model or dim differ)")
    vocabularies = info.get("vocabulary_sha256") if isinstance(info.get("vocabulary_sha256"), dict) else {}
    for name, recorded in [(MODEL_FILE, info.get("sha256")), *vocabularies.items()]:  # older folders: model only
        if name in (MODEL_FILE, *VOCAB_FILES) and recorded and sha256_file(folder / name) != recorded:
            raise MedkgeError(f"{folder / name}: does not match the checksum in {INFO_FILE} (modified or damaged)")
    entities = read_vocab(folder / ENTITIES_FILE)
    relations = read_vocab(folder / RELATIONS_FILE)
    source = info.get("source") if isinstance(info.get("source"), dict) else {}
    source = {k: v for k, v in source.items() if k != "path"}  # folders written before paths were left out
    recorded = {s: {model.dim: info[s]} for s in ("valid", "test") if isinstance(info.get(s), dict)}
    trained = [model.dim] if info.get("trained_sub_model") else []
    labelled = LabelledModel(
        model, entities, relations, trained_dims=trained, source=source, dataset=dataset, **recorded
    )
    labelled.folder, labelled.dtype = folder.resolve(), dtype
    labelled.card = info.get("training") if isinstance(info.get("training"), dict) else {}
    return labelled


def prepare_folder(out: str | Path, overwrite: bool, source: Path | None = None) -> Path:
    """An output folder that is new or empty (or, with ``overwrite``, holds earlier medkge output); never
    ``source``, the folder the model being written was loaded from (a run's or a cropped model's)."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise MedkgeError(f"{folder}: exists and is not a folder")
    if source is not None and folder.exists() and folder.resolve() == Path(source).resolve():
        raise MedkgeError(f"{folder} holds the model being written; choose another output folder")
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
