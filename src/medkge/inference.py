"""One inference path: top-k answers, triple scores and nearest entities of a model, by label or id, any dim.

Everything that asks a trained model for answers goes through :class:`Inference`: ``LabelledModel``'s
methods (so ``medkge predict``), the HTTP server (``medkge.server``, which adds no scoring of its own) and
the recommendation metrics' triple scores. It holds:

- the vocabularies (:class:`Vocabulary`): labels or ids to ids; an unknown label raises
  :class:`UnknownLabel`, a :class:`MedkgeError` that carries the closest labels;
- one bounded crop cache (:class:`CropCache`): contiguous copies of small dims, prefix slices of the one
  full table otherwise, so memory does not grow with the dims asked for;
- the known answers for ``exclude_known``, looked up through evaluation's sorted :class:`FilterIndex`;
- batched top-k (:meth:`Inference.top_k`), exact or through a :class:`Funnel` (score every entity with a
  short prefix, rerank a shortlist at the requested dim).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import difflib
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import MedkgeError
from .evaluation import FilterIndex, unique_triples
from .layout import ENTITIES_FILE, RELATIONS_FILE
from .model import BlockScorer, CroppableModel
from .scoring import Prefix, Side

MAX_ECHO = 80  # characters of a user-given value repeated in an error message
DEFAULT_CACHE_BYTES = 256 << 20
CHUNK = 64  # queries scored at once: a [64, entities] block of scores
_VOCAB_FILES = {"entity": ENTITIES_FILE, "relation": RELATIONS_FILE}


def echo(value: Any) -> str:
    """``repr(value)``, cut to MAX_ECHO characters: an error message never repeats a huge input whole."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."


def format_loc(loc: Sequence[str | int]) -> str:
    """("queries", 0, "head") -> "queries[0].head"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class QueryError(MedkgeError):
    """A query the model cannot answer as given; ``loc`` names the field (the server's error ``loc``)."""

    def __init__(self, message: str, loc: Sequence[str | int] = (), named: bool = False):
        self.loc = tuple(loc)
        where = format_loc(self.loc)
        # ``named``: the message begins with the field's name already ("k must be ...")
        super().__init__(f"{where}: {message}" if where and not named else message)


class NotFound(QueryError):
    """An entity or relation that the model does not have (an unknown label, an id out of range)."""


class UnknownLabel(NotFound):
    """An unknown label; ``closest`` holds the closest labels (found when first asked for: a slow search)."""

    def __init__(self, vocabulary: Vocabulary, value: str, loc: Sequence[str | int] = ()):
        self.vocabulary, self.kind, self.value = vocabulary, vocabulary.kind, value
        self._message: str | None = None
        QueryError.__init__(self, f"unknown {self.kind} {echo(value)}", loc)

    @property
    def closest(self) -> list[str]:
        return self.vocabulary.closest(self.value)

    def __str__(self) -> str:
        if self._message is None:
            near = self.closest
            hint = (
                f"; closest: {', '.join(map(repr, near))}"
                if near
                else f"; no {self.kind} label is close (they are listed in {_VOCAB_FILES[self.kind]})"
            )
            self._message = super().__str__() + hint
        return self._message


class Vocabulary:
    """Labels in id order, with their ids; ``id`` takes a label (str) or an id (int)."""

    def __init__(self, labels: Sequence[str], kind: str):
        self.labels = list(labels)
        self.kind = kind
        self.index = {label: i for i, label in enumerate(self.labels)}
        self._longest = max((len(x) for x in self.labels), default=0)
        self._closest: OrderedDict[str, list[str]] = OrderedDict()  # the last 1024 searches
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.labels)

    def id(self, value: Any, loc: Sequence[str | int] = ()) -> int:
        """The id of a label or id; :class:`UnknownLabel` or :class:`NotFound` when there is none."""
        if isinstance(value, str):
            if value in self.index:
                return self.index[value]
            raise UnknownLabel(self, value, loc)
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = value.item()
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise QueryError(f"{self.kind} must be a label (str) or an id (int), got {echo(value)}", loc)
        i = value.__index__()
        if not 0 <= i < len(self.labels):
            raise NotFound(f"{self.kind} id {i} out of range (0 to {len(self.labels) - 1})", loc)
        return i

    def closest(self, value: str) -> list[str]:
        """Up to 3 labels close to ``value`` (difflib's ratio >= 0.6, as :func:`medkge.errors.closest`)."""
        if len(value) > 2 * self._longest + 8:  # nothing can be close, and the search would cost seconds
            return []
        with self._lock:
            if value in self._closest:
                self._closest.move_to_end(value)
                return self._closest[value]
        near = difflib.get_close_matches(value, self.labels, n=3, cutoff=0.6)  # ~0.1 s on 40,943 labels
        with self._lock:
            self._closest[value] = near
            if len(self._closest) > 1024:
                self._closest.popitem(last=False)
        return near


@dataclass(frozen=True)
class Funnel:
    """Shortlist the ``k`` best candidates with the ``dim``-d prefix, then rerank them at the requested dim."""

    dim: int
    k: int

    @classmethod
    def parse(cls, text: str | Funnel | None, loc: Sequence[str | int] = ("funnel",)) -> Funnel | None:
        """``"D:K"`` (e.g. "10:200") as a Funnel; None stays None."""
        if text is None or isinstance(text, Funnel):
            return text
        d, sep, k = str(text).partition(":")
        if not sep or not d.strip().isdigit() or not k.strip().isdigit() or int(d) < 1 or int(k) < 1:
            raise QueryError(f"expected D:K with positive integers (e.g. 10:200), got {echo(text)}", loc)
        return cls(int(d), int(k))

    def __str__(self) -> str:
        return f"{self.dim}:{self.k}"


@dataclass(frozen=True)
class Query:
    """One ranking query: rank the ``side`` entity of (anchor, relation) by ids, ``k`` answers at ``dim``."""

    side: Side  # "tail": (anchor, relation, ?); "head": (?, relation, anchor)
    anchor: int
    relation: int
    k: int
    dim: int
    exclude_known: bool = False
    funnel: Funnel | None = None


@dataclass
class Answer:
    """The top entities of a query, best first, with their scores at the query's dim."""

    query: Query
    ids: list[int]
    scores: list[float]


def malloc_trim() -> None:
    """Return free heap memory of every glibc arena to the kernel (nothing elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class CropCache:
    """The scorer of any dim of one croppable model, from one copy of its tables plus bounded copies.

    A prefix slice of a wide table reads rows with a stride, which costs most at small dims (3x at dim 10,
    1.3x at 160 on WN18RR with RotatE, 1x at the full width: benchmarks/serve.py), where a contiguous copy is
    cheapest (3 MiB at dim 10). So dims whose copy is at most a quarter of ``budget`` bytes get one, kept
    while it is among the recently used ones that fit; every other dim is a slice.
    """

    def __init__(self, model: CroppableModel, budget: int = DEFAULT_CACHE_BYTES):
        self.model = model
        self.budget = int(budget)
        self.trim_memory = True  # give dropped copies' memory back (off when glibc keeps freed memory)
        self._copies: OrderedDict[int, tuple[CroppableModel, int]] = OrderedDict()  # dim: (copy, bytes)
        self.bytes = 0
        self._lock = threading.Lock()

    def copy_bytes(self, dim: int) -> int:
        m = self.model
        return (m.entity[..., :1].numel() + m.relation[..., :1].numel()) * dim * m.entity.element_size()

    def get(self, dim: int) -> CroppableModel | None:
        """The cached contiguous ``dim``-d copy (made now if it fits), or None: use a slice."""
        size = self.copy_bytes(dim)
        if dim == self.model.dim or 4 * size > self.budget:  # the full width is contiguous already
            return None
        with self._lock:
            if dim in self._copies:
                self._copies.move_to_end(dim)
                return self._copies[dim][0]
            evicted = False
            while self._copies and self.bytes + size > self.budget:
                self.bytes -= self._copies.popitem(last=False)[1][1]
                evicted = True
            if evicted and self.trim_memory:
                malloc_trim()  # glibc's thread arenas keep the dropped copies' memory otherwise
            copy = self.model.crop(dim).eval().requires_grad_(False)
            self._copies[dim] = (copy, size)
            self.bytes += size
            return copy

    def scorer(self, dim: int) -> BlockScorer:
        copy = self.get(dim)
        if copy is not None:
            return BlockScorer(copy)
        # the first ``dim`` coordinates of the one full table: one dim needs no interleaving, so BlockScorer
        # slices and does not copy; the margin is sub-model dim's
        return BlockScorer(self.model, Prefix([dim]))

    def crop(self, dim: int) -> CroppableModel:
        """A standalone ``dim``-d model: the cached copy, or a new crop (not kept)."""
        if self.model.dims == (dim,):
            return self.model
        return self.get(dim) or self.model.crop(dim).eval().requires_grad_(False)

    @property
    def dims(self) -> list[int]:
        """The dims that have a contiguous copy now."""
        with self._lock:
            return sorted(self._copies)


class KnownAnswers:
    """The known answers of (anchor, relation) queries, through evaluation's sorted filter index."""

    def __init__(self, triples: Tensor, num_relations: int):
        known = unique_triples(triples)
        self._index = {
            side: FilterIndex(known, *((0, 2) if side == "tail" else (2, 0)), num_relations=num_relations)
            for side in ("tail", "head")
        }

    def lookup(self, side: Side, anchors: Tensor, relations: Tensor) -> tuple[Tensor, Tensor]:
        """(query index, known answer) pairs of queries (anchor, relation)."""
        return self._index[side].lookup(anchors, relations)


@torch.no_grad()
def triple_scores(scorer: BlockScorer, triples: Tensor, finish: bool = True, chunk: int = 4096) -> Tensor:
    """Scores ``[N, n]`` of (h, r, t) id triples for the scorer's dims; ``finish=False``: the sums before the
    model's final monotone step (oriented by ``interaction.sum_sign``). The one triple scorer of medkge."""
    triples = triples.to(scorer.source.device).long().reshape(-1, 3)
    out = []
    for c0 in range(0, len(triples), chunk):
        h, r, t = triples[c0 : c0 + chunk].unbind(1)
        query, r_rows = scorer.queries("tail", h, r)
        out.append(scorer.pairs("tail", query, r_rows, t, finish=finish))
    if not out:
        return scorer.source.new_zeros(0, len(scorer.prefix.dims))
    return torch.cat(out).cpu()


@torch.no_grad()
def score_all(scorer: BlockScorer, side: Side, anchors: Tensor, relations: Tensor, finish: bool = True) -> Tensor:
    """Scores ``[B, entities]`` of every entity as the ``side`` of (anchor, relation), the scorer's first dim."""
    num = scorer.num_entities
    device = scorer.source.device
    anchors, relations = anchors.to(device), relations.to(device)
    out = scorer.source.new_empty(len(anchors), num)
    q_step, c_step = scorer.block_shape(len(anchors), num)
    for q0 in range(0, len(anchors), q_step):
        q = slice(q0, q0 + q_step)
        query, r_rows = scorer.queries(side, anchors[q], relations[q])
        for c0 in range(0, num, c_step):  # candidates as slices: views of the table, never gathered copies
            out[q, c0 : c0 + c_step] = scorer.block(side, query, r_rows, slice(c0, c0 + c_step), finish)[..., 0]
    return out.cpu()


@torch.no_grad()
def score_own(scorer: BlockScorer, side: Side, anchors: Tensor, relations: Tensor, candidates: Tensor) -> Tensor:
    """Scores ``[B, C]`` of each query's own candidates ``[B, C]`` for the scorer's sub-models ``[B, C, n]``."""
    device = scorer.source.device
    query, r_rows = scorer.queries(side, anchors.to(device), relations.to(device))
    return scorer.per_query(side, query, r_rows, candidates.to(device)).cpu()


def default_k(num_entities: int) -> int:
    """The shortlist of the default funnel: 0.5 % of the entities, at least 200 (docs/serving.md: the 40-d
    prefix shortlisting 200 kept filtered MRR at 640 dims within 0.003 of exact on WN18RR and FB15k-237)."""
    return max(200, -(-num_entities // 200))


def default_funnel(num_entities: int, trained_dims: Sequence[int]) -> Funnel | None:
    """The default funnel D:K: D the smallest trained dim from 40 up (20 lost 0.006 MRR on FB15k-237; the
    10-d sub-model is the last to train well), K :func:`default_k`. /similar uses it where no index is built
    from 1M entities up (where brute force at the full dim costs ~1 s a query here); None below, where exact
    is cheap enough."""
    if num_entities < 1_000_000 or not trained_dims:
        return None
    dims = sorted(trained_dims)
    return Funnel(next((d for d in dims if d >= 40), dims[-1]), default_k(num_entities))


class Inference:
    """Answers of ``models`` (one croppable model, or one model per dim for DT runs) by label or id.

    ``known`` supplies the known triples ``[N, 3]`` for ``exclude_known`` when first needed (it may raise a
    MedkgeError saying why there are none). Thread-safe for scoring: the tables are only read. Models that
    normalise their entities (PairRE) get their rows normalised once, in place, which leaves every score as it
    was (a cropped model stores them so) and keeps one copy of the tables in memory.
    """

    def __init__(
        self,
        models: Sequence[CroppableModel],
        entities: Vocabulary,
        relations: Vocabulary,
        trained_dims: Sequence[int],
        known: Callable[[], Tensor] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        self.models = sorted(models, key=lambda m: m.dim)
        self.entities, self.relations = entities, relations
        self.trained_dims = sorted(trained_dims)
        for m in self.models:
            if m.normalize_entities:
                with torch.no_grad():
                    m.entity.copy_(m.entity_table())
                m.normalize_entities = False
        self.cache = CropCache(self.models[0], cache_bytes) if len(self.models) == 1 else None
        self.indexes: dict[int, Any] = {}  # dim: medkge.ann.NearestIndex
        self.similar_funnel: Funnel | None = None  # similar()'s default where a dim has no index
        self._known_source = known
        self._known: KnownAnswers | None = None
        self._lock = threading.RLock()  # the known triples' source may call use_known (a cropped model's dataset)

    # ---- dims ------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.models[-1].dim

    @property
    def dims(self) -> list[int]:
        """Every dim that can be asked for: 1 to the widest for a croppable model, else the trained ones."""
        if self.cache is not None:
            return list(range(1, self.dim + 1))
        return sorted({d for m in self.models for d in m.dims})

    def check_dim(self, dim: Any, loc: Sequence[str | int] = ("dim",)) -> int:
        if dim is None:
            return self.dim
        if isinstance(dim, bool) or not hasattr(dim, "__index__"):
            raise QueryError(f"{format_loc(loc)} must be a positive integer, got {echo(dim)}", loc, named=True)
        dim = dim.__index__()
        if self.cache is not None and not 1 <= dim <= self.dim:
            raise QueryError(f"{format_loc(loc)} must be between 1 and {self.dim}, got {dim}", loc, named=True)
        if self.cache is None and dim not in self.dims:
            raise QueryError(f"this model has no {dim}-d sub-model: it trained only dims {self.dims}", loc)
        return dim

    def model_for(self, dim: int) -> CroppableModel:
        """The standalone ``dim``-d model (a crop from the cache, or a DT run's own model)."""
        if self.cache is not None:
            return self.cache.crop(dim)
        return next(m for m in self.models if m.dims == (dim,))

    def scorer(self, dim: int) -> BlockScorer:
        return self.cache.scorer(dim) if self.cache is not None else BlockScorer(self.model_for(dim))

    # ---- queries -----------------------------------------------------------------------------------------
    def query(
        self,
        head: Any = None,
        tail: Any = None,
        relation: Any = None,
        k: Any = 10,
        dim: Any = None,
        exclude_known: bool = False,
        funnel: Funnel | str | None = None,
        loc: Sequence[str | int] = (),
    ) -> Query:
        """A checked :class:`Query`: exactly one of ``head`` (rank tails) and ``tail`` (rank heads)."""
        loc = tuple(loc)
        if (head is None) == (tail is None):
            raise QueryError("give head (to rank tails) or tail (to rank heads), one of them", loc)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise QueryError(f"{format_loc((*loc, 'k'))} must be a positive integer, got {echo(k)}", (*loc, "k"), True)
        side, anchor, name = ("tail", head, "head") if head is not None else ("head", tail, "tail")
        d = self.check_dim(dim, (*loc, "dim"))
        shortlist = Funnel.parse(funnel, (*loc, "funnel"))
        if shortlist is not None:
            self.check_dim(shortlist.dim, (*loc, "funnel"))
        if exclude_known:
            try:
                self.known()
            except QueryError:
                raise
            except MedkgeError as error:
                raise QueryError(str(error), (*loc, "exclude_known")) from None
        return Query(
            side,
            self.entities.id(anchor, (*loc, name)),
            self.relations.id(relation, (*loc, "relation")),
            k,
            d,
            bool(exclude_known),
            shortlist,
        )

    def use_known(self, known: Callable[[], Tensor] | None) -> None:
        """Take the known triples from ``known`` from now on."""
        with self._lock:
            self._known_source, self._known = known, None

    def known(self) -> KnownAnswers:
        with self._lock:
            if self._known is None:
                if self._known_source is None:
                    raise MedkgeError("excluding known triples needs the dataset")
                self._known = KnownAnswers(self._known_source(), len(self.relations))
            return self._known

    # ---- scoring -----------------------------------------------------------------------------------------
    def scores(self, side: Side, anchors: Tensor, relations: Tensor, dim: int, finish: bool = True) -> Tensor:
        """Scores ``[B, entities]`` of every entity as the ``side`` of (anchor, relation) at ``dim``."""
        return score_all(self.scorer(dim), side, anchors, relations, finish)

    def rescore(self, side: Side, anchors: Tensor, relations: Tensor, candidates: Tensor, dim: int) -> Tensor:
        """Scores ``[B, C]`` of each query's own candidates ``[B, C]`` at ``dim``."""
        return score_own(self.scorer(dim), side, anchors, relations, candidates)[..., 0]

    def score_triples(self, triples: Tensor, dim: int) -> Tensor:
        """Scores ``[N]`` of (h, r, t) id triples ``[N, 3]`` at ``dim``."""
        return triple_scores(self.scorer(dim), triples)[:, 0]

    def top_k(self, queries: Sequence[Query]) -> list[Answer]:
        """The answers of ``queries``; those of one side, dim and funnel are scored together, 64 at a time."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            groups[(q.side, q.dim, q.funnel)].append(i)
        out: list[Answer | None] = [None] * len(queries)
        for (side, dim, funnel), members in groups.items():
            for c0 in range(0, len(members), CHUNK):  # bounded memory: [chunk, entities] scores at a time
                chunk = [queries[i] for i in members[c0 : c0 + CHUNK]]
                for i, answer in zip(members[c0 : c0 + CHUNK], self._top_chunk(side, dim, funnel, chunk), strict=True):
                    out[i] = answer
        return out  # type: ignore[return-value]

    def _top_chunk(self, side: Side, dim: int, funnel: Funnel | None, chunk: list[Query]) -> list[Answer]:
        anchors = torch.tensor([q.anchor for q in chunk])
        relations = torch.tensor([q.relation for q in chunk])
        first = dim if funnel is None or funnel.dim >= dim else funnel.dim
        scores = self.scores(side, anchors, relations, first)
        available = torch.full((len(chunk),), scores.shape[1])
        excluded = [i for i, q in enumerate(chunk) if q.exclude_known]
        if excluded:
            rows = torch.tensor(excluded)
            query, answer = self.known().lookup(side, anchors[rows], relations[rows])
            scores[rows[query], answer] = -torch.inf
            available[rows] -= torch.bincount(query, minlength=len(rows))
        shortlist = None
        if first != dim:  # the funnel: a shortlist by the short prefix, reranked at the requested dim
            size = min(funnel.k, scores.shape[1])  # type: ignore[union-attr]
            first_scores, shortlist = torch.topk(scores, size)
            scores = self.rescore(side, anchors, relations, shortlist, dim)
            scores[first_scores == -torch.inf] = -torch.inf  # excluded answers shortlisted for want of others
            available = available.clamp(max=size)
        top = torch.topk(scores, min(max(q.k for q in chunk), scores.shape[1]))
        answers = []
        for row, q in enumerate(chunk):
            n = min(q.k, int(available[row]))
            ids = top.indices[row, :n]
            if shortlist is not None:
                ids = shortlist[row, ids]
            answers.append(Answer(q, ids.tolist(), top.values[row, :n].tolist()))
        return answers

    def build_index(self, dim: int) -> None:
        """Build the approximate nearest-neighbour index of the ``dim``-d rows (medkge.ann) for :meth:`similar`."""
        from .ann import NearestIndex

        self.indexes[dim] = NearestIndex(self.entity_vectors(self.check_dim(dim)))

    @torch.no_grad()
    def similar(
        self, entity: int, k: int, dim: int, funnel: Funnel | None = None
    ) -> tuple[list[int], list[float], str]:
        """The ``k`` entities nearest to ``entity`` by cosine similarity of their ``dim``-d embeddings (all
        parts, e.g. real and imaginary, flattened), the entity itself left out, and how they were found:
        through ``funnel`` (shortlist by the cosine of the ``funnel.dim`` prefix) when given, else through the
        dim's approximate index when one was built (:meth:`build_index`), else through :attr:`similar_funnel`
        where it is set and shorter than ``dim``, else exactly ("exact")."""
        if funnel is None and dim in self.indexes:
            ids, values = self.indexes[dim].search(entity, k)
            return ids, values, self.indexes[dim].name
        if funnel is None and self.similar_funnel is not None and self.similar_funnel.dim < dim:
            funnel = self.similar_funnel
        first = dim if funnel is None or funnel.dim >= dim else funnel.dim
        cosine = self._cosine(entity, first, None)
        cosine[entity] = -torch.inf
        num = len(cosine)
        if first != dim:
            assert funnel is not None
            shortlist = torch.topk(cosine, min(funnel.k, num - 1)).indices
            cosine = self._cosine(entity, dim, shortlist)
            top = torch.topk(cosine, min(k, len(shortlist)))
            return shortlist[top.indices].tolist(), top.values.tolist(), f"funnel {funnel}"
        top = torch.topk(cosine, min(k, num - 1))
        return top.indices.tolist(), top.values.tolist(), "exact"

    def entity_vectors(self, dim: int) -> Tensor:
        """The ``dim``-d entity rows ``[entities, parts, dim]`` (a view of the one table, or a cached copy)."""
        return self.model_for(dim).entity.detach()[..., :dim] if self.cache is None else self._table(dim)

    def _table(self, dim: int) -> Tensor:
        assert self.cache is not None
        copy = self.cache.get(dim)
        return (copy if copy is not None else self.cache.model).entity.detach()[..., :dim]

    def _cosine(self, entity: int, dim: int, candidates: Tensor | None) -> Tensor:
        table = self.entity_vectors(dim)
        vector = table[entity].reshape(-1)
        vector = vector / vector.norm().clamp_min(1e-30)
        if candidates is not None:
            block = table[candidates].reshape(len(candidates), -1)
            return ((block @ vector) / torch.linalg.vector_norm(block, dim=1).clamp_min(1e-30)).cpu()
        num = table.shape[0]
        out = table.new_empty(num)
        step = max(1, (8 << 20) // (4 * vector.numel()))  # 8 MiB blocks, as BlockScorer's on the CPU
        for c0 in range(0, num, step):
            block = table[c0 : c0 + step].reshape(-1, vector.numel())
            out[c0 : c0 + step] = (block @ vector) / torch.linalg.vector_norm(block, dim=1).clamp_min(1e-30)
        return out.cpu()
