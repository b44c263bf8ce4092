"""``medkge serve``: an HTTP API (FastAPI + uvicorn) that serves every size of one model, chosen per request.

One copy of the tables is held in memory. A request names its dim (default: the largest served) and is
scored with the first ``dim`` coordinates of that copy, a prefix slice; only small dims, where a slice's
strided reads cost most and a copy least, get a contiguous copy, within a fixed memory budget (Engine._copy).
So memory does not grow with the number of dims requested (benchmarks/serve.py measures both).
Endpoints (JSON; OpenAPI docs at ``/docs``)::

    GET  /predict?head=H&relation=R&k=10&dim=40    tails of (H, R, ?); tail=T for heads; ids=true for ids
    POST /predict  {"queries": [{"head": ..., "relation": ...}, ...], "k": 10, "dim": 40}   scored together
    POST /score    {"triples": [[h, r, t], ...], "dim": 40}
    GET  /similar?entity=E&k=10&dim=40              nearest entities by cosine of the d-dim embedding
    GET  /models   GET /health

The JSON of ``/predict`` is :func:`medkge.deploy.prediction_json`, what ``medkge predict --json`` prints.
Bad input gets a 4xx JSON ``{"error": "..."}``: an unknown label 404 with the closest labels.

Scoring runs in a pool of worker threads (``workers``, each with ``threads`` torch threads), off the event
loop, so the server answers while it computes. Single queries that wait for a worker are scored together
as one batch when one is free (no added wait: a batch is what piled up while the workers were busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import difflib
import functools
import json
import math
import os
import socket
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .deploy import LabelledModel, Table, load, prediction_json
from .errors import MedkgeError
from .model import BlockScorer, CroppableModel
from .scoring import Prefix

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from pydantic import BaseModel, Field, StrictInt, StrictStr
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ImportError as error:  # the serve extra is optional
    raise MedkgeError(f"medkge serve needs the serve extra: pip install 'medkge[serve]' ({error})") from None

Label = StrictStr | StrictInt  # a label (str) or an id (int)
# Queries scored at once: a [64, entities] block of scores; also the most single GET queries that wait are
# batched into, so that one batch (and the wait of the clients in it) stays short
_CHUNK = 64


@dataclass
class Limits:
    """What one request may ask for, and how much work may wait (beyond it: 413, 422 or 503)."""

    max_k: int = 1000
    max_batch: int = 1000  # queries of one POST /predict, triples of one POST /score
    max_body: int = 4 << 20  # bytes of a request body
    max_pending: int = 10_000  # queries waiting or being scored, all requests together


class ApiError(Exception):
    """A client error: its HTTP status, a one-line message and extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra

    def response(self) -> Response:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return _json({"error": self.message, "status": self.status, **self.extra}, self.status, headers)


class _UnknownLabel(Exception):
    """An unknown label; its 404 (with the closest labels, a slow search) is built off the event loop."""

    def __init__(self, kind: str, value: Any, where: str):
        self.kind, self.value, self.where = kind, value, where


@dataclass(frozen=True)
class PredictQuery:
    """One validated ranking query: the ``side`` to rank, the anchor entity and relation ids."""

    side: str  # "tail": (anchor, relation, ?); "head": (?, relation, anchor)
    anchor: int
    relation: int
    k: int
    dim: int
    exclude_known: bool


class Engine:
    """Scoring for the server: any served dim from the one copy of a :class:`LabelledModel`'s tables.

    ``dims``: the dims served (default: every dim from 1 to the widest for a croppable model, the
    trained dims for a DT run). Thread-safe: the tables are only read. Models that normalise their
    entities (PairRE) get them normalised in place once, which leaves every score as it was.
    """

    def __init__(
        self,
        model: LabelledModel,
        dims: Sequence[int] | None = None,
        limits: Limits | None = None,
        cache_bytes: int = 256 << 20,
    ):
        self.model = model
        self.limits = limits or Limits()
        # contiguous copies of small dims (see _copy), least recently used first
        self.cache_bytes = int(cache_bytes)
        self._copies: OrderedDict[int, tuple[CroppableModel, int]] = OrderedDict()  # dim: (copy, bytes)
        self._copies_bytes = 0
        self._lock = threading.Lock()
        self.trim_memory = True  # serve() turns it off when glibc is told to keep freed memory
        for m in model.models:
            if m.normalize_entities:
                # normalise the entity rows once, in place (PairRE), not per request: the same scores come out
                # (a cropped model stores them so), and one copy of the tables stays in memory
                with torch.no_grad():
                    m.entity.copy_(m.entity_table())
                m.normalize_entities = False
        available = list(range(1, model.dim + 1)) if model.croppable else model.dims
        if dims is None:
            self.dims = available
        else:
            wrong = sorted(set(dims) - set(available))
            if wrong:
                raise MedkgeError(f"--dims: this model has no dim {wrong[0]} (it serves {_span(available)})")
            self.dims = sorted(set(dims))
        self._served = set(self.dims)
        self.exclude_known_error: str | None = None
        try:  # load the known triples now: the first request should not pay for it
            model.known_answers("tail", 0, 0)
        except MedkgeError as error:
            self.exclude_known_error = str(error)

    @property
    def default_dim(self) -> int:
        return self.dims[-1]

    # ---- validation ------------------------------------------------------------------------------
    def entity(self, value: Any, where: str) -> int:
        return self._resolve("entity", value, where)

    def relation(self, value: Any, where: str) -> int:
        return self._resolve("relation", value, where)

    def _resolve(self, kind: str, value: Any, where: str) -> int:
        index = self.model._entity_index if kind == "entity" else self.model._relation_index
        if isinstance(value, str):
            if value in index:
                return index[value]
            raise _UnknownLabel(kind, value, where)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(422, f"{where}: {kind} must be a label (string) or an id (integer), got {value!r}")
        size = len(self.model.entities if kind == "entity" else self.model.relations)
        if not 0 <= value < size:
            raise ApiError(404, f"{where}: {kind} id {value} out of range (0 to {size - 1})")
        return value

    def unknown_label(self, error: _UnknownLabel) -> ApiError:
        """The 404 for an unknown label: the command line's message, and the closest labels as a list."""
        message, near = self._closest(error.kind, error.value)
        return ApiError(404, f"{error.where}: {message}" if error.where else message, closest=near)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 -- the engine lives as long as the server
    def _closest(self, kind: str, value: str) -> tuple[str, list[str]]:
        # the search costs ~0.1 s on WN18RR's 40,943 labels: once per label, in a thread
        labels = self.model.entities if kind == "entity" else self.model.relations
        near = difflib.get_close_matches(value, labels, n=3, cutoff=0.6)  # as errors.closest, which the CLI uses
        files = {"entity": "entities.tsv", "relation": "relations.tsv"}
        hint = (
            f"; closest: {', '.join(map(repr, near))}"
            if near
            else f"; no {kind} label is close (they are listed in {files[kind]})"
        )
        return f"unknown {kind} {value!r}{hint}", near

    def dim(self, value: int | None, where: str = "dim") -> int:
        if value is None:
            return self.default_dim
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(422, f"{where} must be an integer, got {value!r}")
        if value not in self._served:
            raise ApiError(422, f"{where} {value} is not served: the dims are {_span(self.dims)}")
        return value

    def k(self, value: int, where: str = "k") -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.limits.max_k:
            raise ApiError(422, f"{where} must be an integer from 1 to {self.limits.max_k}, got {value!r}")
        return value

    def query(
        self, head: Any, tail: Any, relation: Any, k: int, dim: int | None, exclude_known: bool, where: str = ""
    ) -> PredictQuery:
        """A validated query: exactly one of ``head`` (rank tails) and ``tail`` (rank heads)."""
        at = f"{where}." if where else ""
        if (head is None) == (tail is None):
            raise ApiError(422, f"{where or 'query'}: give head (to rank tails) or tail (to rank heads), one of them")
        if exclude_known and self.exclude_known_error:
            raise ApiError(422, f"{at}exclude_known: {self.exclude_known_error}")
        side, anchor, name = ("tail", head, "head") if head is not None else ("head", tail, "tail")
        return PredictQuery(
            side,
            self.entity(anchor, at + name),
            self.relation(relation, f"{at}relation"),
            self.k(k, f"{at}k"),
            self.dim(dim, f"{at}dim"),
            bool(exclude_known),
        )

    # ---- scoring -----------------------------------------------------------------------------------
    def _scorer(self, dim: int) -> BlockScorer:
        if not self.model.croppable:  # one model per dim (DT): its own tables
            return BlockScorer(self.model.model_for(dim))
        copy = self._copy(dim)
        if copy is not None:
            return BlockScorer(copy)
        # the first ``dim`` coordinates of the one full table: BlockScorer slices, it does not copy (one dim
        # needs no interleaving); the margin is sub-model dim's
        return BlockScorer(self.model.models[0], Prefix([dim]))

    def _copy(self, dim: int) -> CroppableModel | None:
        """A contiguous copy of the tables' first ``dim`` coordinates, for a dim whose copy is small, kept
        while it is among the recently used ones that fit in ``cache_bytes``; None: use a slice.

        A slice of a wide table reads rows with a stride, which costs most at small dims (3x at dim 10,
        1.3x at 160 on WN18RR with RotatE, 1x at the full width: benchmarks/serve.py), where a copy is
        cheapest (3 MiB at dim 10). So memory stays bounded whatever dims are asked for.
        """
        base = self.model.models[0]
        size = (base.entity[..., :1].numel() + base.relation[..., :1].numel()) * dim * base.entity.element_size()
        if dim == base.dim or 4 * size > self.cache_bytes:  # the full width is contiguous already
            return None
        with self._lock:
            if dim in self._copies:
                self._copies.move_to_end(dim)
                return self._copies[dim][0]
            evicted = False
            while self._copies and self._copies_bytes + size > self.cache_bytes:
                self._copies_bytes -= self._copies.popitem(last=False)[1][1]
                evicted = True
            if evicted and self.trim_memory:
                _malloc_trim()  # give the dropped copies' memory back: glibc's thread arenas keep it otherwise
            copy = base.crop(dim).requires_grad_(False)
            self._copies[dim] = (copy, size)
            self._copies_bytes += size
            return copy

    @property
    def cached_dims(self) -> list[int]:
        """The dims that have a contiguous copy now."""
        with self._lock:
            return sorted(self._copies)

    @torch.no_grad()
    def score_all(self, side: str, anchors: torch.Tensor, relations: torch.Tensor, dim: int) -> torch.Tensor:
        """Scores ``[B, entities]`` of every entity as the ``side`` of (anchor, relation), dim ``dim``."""
        scorer = self._scorer(dim)
        num = len(self.model.entities)
        device = scorer.entity.device
        anchors, relations = anchors.to(device), relations.to(device)
        out = scorer.entity.new_empty(len(anchors), num)
        q_step, c_step = scorer.block_shape(len(anchors), num)
        for q0 in range(0, len(anchors), q_step):
            q = slice(q0, q0 + q_step)
            query, r_rows = scorer.queries(side, anchors[q], relations[q])  # type: ignore[arg-type]
            for c0 in range(0, num, c_step):  # candidates as slices: views of the table, never gathered copies
                c = slice(c0, c0 + c_step)
                out[q, c] = scorer.block(side, query, r_rows, c)[..., 0]  # type: ignore[arg-type]
        return out.cpu()

    def predict(self, queries: Sequence[PredictQuery]) -> list[dict[str, Any]]:
        """The prediction JSON of each query; queries of one side and dim are scored together."""
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            groups[(q.side, q.dim)].append(i)
        out: list[dict[str, Any]] = [{}] * len(queries)
        for (side, dim), members in groups.items():
            for c0 in range(0, len(members), _CHUNK):  # bounded memory: [chunk, entities] scores at a time
                chunk = members[c0 : c0 + _CHUNK]
                anchors = torch.tensor([queries[i].anchor for i in chunk])
                relations = torch.tensor([queries[i].relation for i in chunk])
                scores = self.score_all(side, anchors, relations, dim)
                for row, i in enumerate(chunk):
                    out[i] = prediction_json(self.model, self._top(queries[i], scores[row]))
        return out

    def _top(self, q: PredictQuery, scores: torch.Tensor) -> Table:
        # as LabelledModel.predict_tails / predict_heads build their table (tests/test_serve.py checks it)
        available = len(scores)
        if q.exclude_known:
            known = self.model.known_answers(q.side, q.anchor, q.relation)
            scores[known] = -torch.inf
            available -= len(known)
        top = torch.topk(scores, min(q.k, available))
        entities = self.model.entities
        records = [
            {"rank": i + 1, q.side: entities[j], "id": j, "score": s}
            for i, (j, s) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        ]
        anchor, relation = entities[q.anchor], self.model.relations[q.relation]
        query = (anchor, relation, "?") if q.side == "tail" else ("?", relation, anchor)
        return Table(records, ["rank", q.side, "id", "score"], query=query, dim=q.dim, exclude_known=q.exclude_known)

    @torch.no_grad()
    def score(self, triples: Sequence[tuple[int, int, int]], dim: int) -> dict[str, Any]:
        """Scores of (head, relation, tail) id triples, as ``LabelledModel.score_triples`` gives them."""
        scores: list[float] = []
        if triples:
            scorer = self._scorer(dim)
            hrt = torch.tensor(list(triples), dtype=torch.long, device=scorer.entity.device)
            for c0 in range(0, len(hrt), 4096):
                h, r, t = hrt[c0 : c0 + 4096].unbind(1)
                query, r_rows = scorer.queries("tail", h, r)
                scores += scorer.pairs("tail", query, r_rows, t)[:, 0].tolist()
        e, rel = self.model.entities, self.model.relations
        records = [
            {"head": e[h], "relation": rel[r], "tail": e[t], "score": s}
            for (h, r, t), s in zip(triples, scores, strict=True)
        ]
        return {"dim": dim, "trained_sub_model": self.model.is_trained(dim), "results": records}

    @torch.no_grad()
    def similar(self, entity: int, k: int, dim: int) -> dict[str, Any]:
        """The ``k`` entities nearest to ``entity`` by cosine similarity of their ``dim``-d embeddings
        (all parts, e.g. real and imaginary, flattened), by brute force; the entity itself left out."""
        copy = self._copy(dim) if self.model.croppable else self.model.model_for(dim)
        table = (copy if copy is not None else self.model.models[0]).entity.detach()[..., :dim]
        num = table.shape[0]
        vector = table[entity].reshape(-1)
        vector = vector / vector.norm().clamp_min(1e-30)
        out = table.new_empty(num)
        step = max(1, (8 << 20) // (4 * vector.numel()))  # 8 MiB blocks, as BlockScorer's on the CPU
        for c0 in range(0, num, step):
            block = table[c0 : c0 + step].reshape(-1, vector.numel())
            out[c0 : c0 + step] = (block @ vector) / torch.linalg.vector_norm(block, dim=1).clamp_min(1e-30)
        out[entity] = -torch.inf
        top = torch.topk(out.cpu(), min(k, num - 1))
        labels = self.model.entities
        results = [
            {"rank": i + 1, "entity": labels[j], "id": j, "similarity": s}
            for i, (j, s) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        ]
        return {
            "entity": labels[entity],
            "dim": dim,
            "trained_sub_model": self.model.is_trained(dim),
            "measure": "cosine",
            "results": results,
        }

    def describe(self) -> dict[str, Any]:
        """What GET /models answers."""
        m = self.model
        valid = m._recorded_metrics("valid") or {}  # the run's recorded validation, or a cropped model's
        return {
            "model": m.model_name,
            "dataset": m.source.get("dataset"),
            "method": m.source.get("method"),
            "source": m.source.get("path"),
            "entities": len(m.entities),
            "relations": len(m.relations),
            "dims": self.dims,
            "default_dim": self.default_dim,
            "trained_dims": m.trained_dims,
            "croppable": m.croppable,
            "valid_mrr": {str(d): valid[d]["mrr"] for d in sorted(valid) if "mrr" in valid[d]},
            "exclude_known": self.exclude_known_error is None,
            "limits": {
                "max_k": self.limits.max_k,
                "max_batch": self.limits.max_batch,
                "max_body": self.limits.max_body,
                "max_pending": self.limits.max_pending,
            },
        }


# ---- the worker pool ---------------------------------------------------------------------------------
@dataclass
class _Job:
    run: Callable[[], Any] | None  # a job of its own (POST /predict, /score, /similar)
    query: PredictQuery | None  # or one GET /predict query, to be batched with the others waiting
    future: asyncio.Future
    size: int = 1


@dataclass
class _Pool:
    """Runs scoring jobs on ``workers`` threads, off the event loop; GET /predict queries waiting for a
    worker are scored together when one is free (an even share for each free worker, at most 64)."""

    engine: Engine
    workers: int
    batching: bool = True
    pending: int = 0  # queries waiting or being scored
    active: int = 0  # workers busy
    queue: deque = field(default_factory=deque)
    executor: ThreadPoolExecutor | None = None
    threads: int = 0  # torch threads per worker

    def __post_init__(self):
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medkge-score")
        self.threads = self.executor.submit(torch.get_num_threads).result()  # as a worker sees it

    async def predict(self, query: PredictQuery) -> dict[str, Any]:
        if not self.batching:
            return (await self.run(lambda: self.engine.predict([query])))[0]
        return await self._submit(_Job(None, query, asyncio.get_running_loop().create_future()))

    async def run(self, fn: Callable[[], Any], size: int = 1) -> Any:
        return await self._submit(_Job(fn, None, asyncio.get_running_loop().create_future(), size))

    async def _submit(self, job: _Job) -> Any:
        limit = self.engine.limits.max_pending
        if self.pending + job.size > limit:
            raise ApiError(503, f"server busy: {self.pending} queries waiting or being scored (at most {limit})")
        self.pending += job.size
        self.queue.append(job)
        self._dispatch()
        try:
            return await job.future
        finally:
            self.pending -= job.size

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue and self.active < self.workers:
            first = self.queue.popleft()
            if first.future.done():  # its client went away while it waited
                continue
            jobs = [first]
            if first.query is not None:  # take waiting single queries along: a fair share for each free worker
                waiting = 1 + sum(j.query is not None for j in self.queue)
                share = min(_CHUNK, math.ceil(waiting / (self.workers - self.active)))
                rest: deque = deque()
                while self.queue:
                    job = self.queue.popleft()
                    if not job.future.done():
                        (jobs if job.query is not None and len(jobs) < share else rest).append(job)
                self.queue = rest
                queries = [j.query for j in jobs]
                work = lambda queries=queries: self.engine.predict(queries)  # noqa: E731
            else:
                work = first.run
            self.active += 1
            done = loop.run_in_executor(self.executor, work)
            done.add_done_callback(lambda task, jobs=jobs: self._finish(task, jobs))

    def _finish(self, task: asyncio.Future, jobs: list[_Job]) -> None:
        self.active -= 1
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error:
            results = [None] * len(jobs)
        else:
            results = task.result() if jobs[0].query is not None else [task.result()]
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():  # the client went away
                continue
            if task.cancelled():  # shutting down
                job.future.cancel()
            elif error:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
        self._dispatch()

    def shutdown(self) -> None:
        assert self.executor is not None
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---- the application ---------------------------------------------------------------------------------
class PredictItem(BaseModel):
    """One query of POST /predict: ``head`` to rank tails, or ``tail`` to rank heads (a label or an id)."""

    head: Label | None = None
    tail: Label | None = None
    relation: Label
    k: int | None = Field(None, description="overrides the batch's k")
    dim: int | None = Field(None, description="overrides the batch's dim")
    exclude_known: bool | None = Field(None, description="overrides the batch's exclude_known")


class PredictBatch(BaseModel):
    queries: list[PredictItem]
    k: int = 10
    dim: int | None = Field(None, description="default: the largest served dim")
    exclude_known: bool = False


class ScoreBatch(BaseModel):
    triples: list[tuple[Label, Label, Label]] = Field(description="(head, relation, tail) labels or ids")
    dim: int | None = Field(None, description="default: the largest served dim")


def create_app(engine: Engine, workers: int = 1, batching: bool = True) -> FastAPI:
    """The FastAPI application over ``engine``; scoring runs on ``workers`` threads."""
    pool = _Pool(engine, workers, batching)
    started = time.monotonic()
    counts = {"requests": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="medkge",
        version=_version(),
        summary=f"{engine.model.model_name} on {engine.model.source.get('dataset') or 'its graph'}: "
        f"any dim from {_span(engine.dims)} per request",
        description="Croppable knowledge graph embeddings: one model, every size, chosen per request.",
    )
    app.add_middleware(_BodyLimit, limit=engine.limits.max_body, counts=counts)

    async def resolve(build: Callable[[], Any]) -> Any:
        try:
            return build()
        except _UnknownLabel as unknown:  # the closest-label search is slow on big vocabularies
            raise await run_in_threadpool(engine.unknown_label, unknown) from None

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        problems = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in error.errors()
        ]
        if any(p["type"] == "json_invalid" for p in problems):
            return ApiError(400, "malformed JSON in the request body", detail=problems).response()
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        where = first["loc"][1:] if first["loc"][:1] in (["query"], ["body"]) else first["loc"]
        return ApiError(422, f"{'.'.join(where) or 'request'}: {first['msg']}", detail=problems).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = error.detail if isinstance(error.detail, str) else "error"
        if error.status_code == 404:
            message = f"no such endpoint: {request.url.path} (see /docs)"
        return ApiError(error.status_code, message).response()

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> Response:  # a bug: say so, keep serving
        return _json({"error": f"internal error: {type(error).__name__}: {error}", "status": 500}, 500)

    @app.get("/predict", summary="rank the tails (head=H) or heads (tail=T) of a query")
    async def predict_one(
        relation: str = Query(description="relation label (or id, with ids=true)"),
        head: str | None = Query(None, description="rank the tails of (head, relation, ?)"),
        tail: str | None = Query(None, description="rank the heads of (?, relation, tail)"),
        k: int = Query(10, description="how many answers"),
        dim: int | None = Query(None, description="the dim to use (default: the largest served)"),
        exclude_known: bool = Query(False, description="drop answers that form known triples"),
        ids: bool = Query(False, description="head, tail and relation are ids, not labels"),
    ) -> Response:
        def build() -> PredictQuery:
            values = [
                _id(x, name) if ids else x for x, name in ((head, "head"), (tail, "tail"), (relation, "relation"))
            ]
            return engine.query(*values, k=k, dim=dim, exclude_known=exclude_known)

        return _json(await pool.predict(await resolve(build)))

    @app.post("/predict", summary="rank the answers of a batch of queries, scored together")
    async def predict_many(batch: PredictBatch) -> Response:
        _check_batch(len(batch.queries), "queries", engine.limits.max_batch)

        def build() -> list[PredictQuery]:
            return [
                engine.query(
                    q.head,
                    q.tail,
                    q.relation,
                    batch.k if q.k is None else q.k,
                    batch.dim if q.dim is None else q.dim,
                    batch.exclude_known if q.exclude_known is None else q.exclude_known,
                    where=f"queries[{i}]",
                )
                for i, q in enumerate(batch.queries)
            ]

        queries = await resolve(build)
        results = await pool.run(lambda: engine.predict(queries), size=max(1, len(queries)))
        return _json({"results": results})

    @app.post("/score", summary="scores of (head, relation, tail) triples")
    async def score(batch: ScoreBatch) -> Response:
        _check_batch(len(batch.triples), "triples", engine.limits.max_batch)

        def build() -> tuple[list[tuple[int, int, int]], int]:
            ids = [
                (
                    engine.entity(h, f"triples[{i}][0]"),
                    engine.relation(r, f"triples[{i}][1]"),
                    engine.entity(t, f"triples[{i}][2]"),
                )
                for i, (h, r, t) in enumerate(batch.triples)
            ]
            return ids, engine.dim(batch.dim)

        triples, d = await resolve(build)
        return _json(await pool.run(lambda: engine.score(triples, d), size=max(1, len(triples))))

    @app.get("/similar", summary="the entities nearest to an entity by its d-dim embedding (cosine, brute force)")
    async def similar(
        entity: str = Query(description="entity label (or id, with ids=true)"),
        k: int = Query(10, description="how many neighbours"),
        dim: int | None = Query(None, description="the dim to use (default: the largest served)"),
        ids: bool = Query(False, description="entity is an id, not a label"),
    ) -> Response:
        def build() -> tuple[int, int, int]:
            return engine.entity(_id(entity, "entity") if ids else entity, "entity"), engine.k(k), engine.dim(dim)

        e, k_, d = await resolve(build)
        return _json(await pool.run(lambda: engine.similar(e, k_, d)))

    @app.get("/models", summary="the model: dims served, trained dims, validation MRR per dim, dataset")
    async def models() -> Response:
        return _json(engine.describe())

    @app.get("/health", summary="liveness, load and uptime")
    async def health() -> Response:
        return _json(
            {
                "status": "ok",
                "uptime_s": round(time.monotonic() - started, 3),
                "requests": counts["requests"],
                "pending": pool.pending,
                "workers": pool.workers,
                "busy_workers": pool.active,
                "threads_per_worker": pool.threads,
                "cached_dims": engine.cached_dims,
            }
        )

    return app


class _BodyLimit:
    """Refuses request bodies over ``limit`` bytes (413) before they are read whole; counts requests."""

    def __init__(self, app, limit: int, counts: dict[str, int]):
        self.app, self.limit, self.counts = app, limit, counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.counts["requests"] += 1
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = ApiError(413, f"the request body is over {self.limit:,} bytes").response()
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # a body without a length: FastAPI answers 400
                raise ApiError(413, f"the request body is over {self.limit:,} bytes")
            return message

        return await self.app(scope, limited, send)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    try:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:  # NaN or infinite scores (a damaged model): null, as JSON has no such numbers
        body = json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def _malloc_trim() -> None:
    """Return free heap memory of every glibc arena to the kernel (nothing elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _id(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ApiError(422, f"{name}: with ids=true, give an id (a non-negative integer), got {value!r}")
    return int(value)


def _check_batch(size: int, what: str, limit: int) -> None:
    if size > limit:
        raise ApiError(413, f"a request holds at most {limit} {what}, got {size}")


def _span(dims: Sequence[int]) -> str:
    dims = list(dims)
    if dims == list(range(dims[0], dims[-1] + 1)) and len(dims) > 2:
        return f"{dims[0]} to {dims[-1]}"
    return ", ".join(map(str, dims)) if len(dims) <= 8 else f"{dims[0]}, {dims[1]}, ..., {dims[-1]} ({len(dims)} dims)"


def _version() -> str:
    from . import __version__

    return __version__


def default_workers() -> int:
    """One worker per CPU core this process may use (each runs single-threaded torch ops)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound before the server starts, so that port 0 can be announced)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it a kept-alive
        # connection waits ~40 ms for each response (Nagle's algorithm against the client's delayed ACK)
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise MedkgeError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    return sock


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    dims: Sequence[int] | None = None,
    dataset: str | Path | None = None,
    device: str = "cpu",
    workers: int | None = None,
    threads: int = 1,
    limits: Limits | None = None,
    batching: bool = True,
    cache_mib: float = 256,
    tune_malloc: bool = False,
    max_requests: int | None = None,
    max_seconds: float | None = None,
    access_log: bool = False,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
) -> None:
    """Serve the run or cropped model at ``path`` on http://host:port until interrupted (or until
    ``max_requests`` requests or ``max_seconds`` seconds). Port 0 takes a free port; the first line
    ``announce``\\ d names the address.

    ``workers`` scoring threads (default: one per core) each run torch ops on ``threads`` threads (default
    1: one query is too little work to share, and on a loaded machine a second thread waits for a core;
    README, "How fast is each size?"). ``cache_mib``: memory for contiguous copies of small dims, which
    score faster than slices of the full table (:meth:`Engine._copy`; 0: always slices). ``tune_malloc``
    keeps freed memory for reuse (runtime.py; off by default: a server's blocks are small, and with it the
    memory of dropped copies stays with the process).
    """
    import uvicorn

    from . import runtime

    if threads < 1:
        raise MedkgeError(f"--threads must be at least 1, got {threads}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MedkgeError(f"--workers must be at least 1, got {workers}")
    torch.set_num_threads(threads)
    if tune_malloc:
        runtime.keep_freed_memory()
    model = load(path, device=runtime.resolve_device(device), dataset=dataset)  # checks the files as load does
    engine = Engine(model, dims, limits, cache_bytes=int(cache_mib * 2**20))
    engine.trim_memory = not tune_malloc
    app = create_app(engine, workers=workers, batching=batching)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=access_log,
        limit_max_requests=max_requests,
        limit_concurrency=max(64, engine.limits.max_pending // 4),  # connections beyond: 503 from uvicorn
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    if max_seconds is not None:
        timer = threading.Timer(max_seconds, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    announce(
        f"serving {model.model_name} ({_span(engine.dims)} dims) from {path} on http://{host}:{bound} "
        f"(API docs: http://{host}:{bound}/docs); {workers} worker(s) x {threads} torch thread(s)"
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
