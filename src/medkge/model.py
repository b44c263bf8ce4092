"""The croppable model: one pair of embedding tables whose prefixes are the sub-models.

``CroppableModel("rotate", num_entities, num_relations, dims=[10, 20, ..., 640])`` holds an entity table
``[E, parts, 640]`` and a relation table ``[R, parts, 640]``. Sub-model i uses coordinates [0, d_i) of
every row. All scoring methods return every sub-model's score at once (last axis, one per dim);
``crop(d)`` gives a standalone d-dimensional model whose scores equal sub-model d's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .errors import MedkgeError
from .scoring import (
    Interaction,
    Prefix,
    Side,
    check_dims,
    dot_block,
    dot_block_batched,
    get_interaction,
    plain_scores,
    training_scores,
)
from .seeding import RELATION_INIT, init_entity_rows, keyed_generator

DEFAULT_DIMS: tuple[int, ...] = tuple(range(10, 641, 10))
DEFAULT_GAMMA = 12.0


class CroppableModel(nn.Module):
    """A KGE model whose first d_i coordinates form a working d_i-dimensional model, for every d_i.

    Args:
        model: one of transe, distmult, complex, rotate, simple, pairre.
        num_entities: rows of the entity table.
        num_relations: rows of the relation table.
        dims: increasing sub-model dimensions; the tables are ``dims[-1]`` wide. "Dimension" follows each
            model's convention: complex coordinates for RotatE/ComplEx, vector length for SimplE/PairRE.
        gamma: margin of the distance models (TransE, RotatE, PairRE); unused by the bilinear ones.
        gamma_scaling: "sqrt" (default) gives sub-model i the margin gamma * sqrt(d_i / d_n), near the
            margin a model of that width does best with alone (docs/choices.md); "linear" gamma * d_i / d_n,
            so that every coordinate carries the same share of the margin in every sub-model (the default
            before 2026-12-07); "none" uses gamma for all of them (MED.md's literal formula). A margin shifts
            scores, not rankings: it matters in training.
        gamma_width: the width d_n that gamma belongs to (default: the tables' width). A cropped model
            keeps its source's, so its margin is the sub-model's.
        p: TransE's norm (1 or 2).
        normalize_entities: scale entity rows to unit L2 norm over the full width before scoring
            (always on for PairRE; optional for TransE). A cropped model stores normalised prefixes.
        init_scale: entries start uniform in [-init_scale, init_scale]; default (margin + 2) / D for the
            distance models (RotatE's choice, margin = gamma for the full width) and 0.1 for the bilinear ones.
        phase_scale: RotatE only; phase = stored relation value * phase_scale, the stored values starting
            uniform in +-pi / phase_scale (phases uniform in [-pi, pi]). With Adam a step moves a phase by
            about lr * phase_scale. None: pi / init_scale, RotatE's code, whose phase step grows with the
            width (config model.phase_scale; docs/choices.md).
        generator: random generator for the initialisation.
        seed: initialise from streams keyed by (seed, row block) instead (seeding.py): the training pipeline's
            choice, so that a table sharded across processes starts with the values one process gives it.
        entity_table: False leaves the entity table a placeholder on the meta device (no memory), for a table
            held elsewhere, sharded across processes (distributed.py); scoring then takes the batch's rows.
    """

    def __init__(
        self,
        model: str,
        num_entities: int,
        num_relations: int,
        dims: Sequence[int] | range = DEFAULT_DIMS,
        *,
        gamma: float | None = None,
        gamma_scaling: str = "sqrt",
        gamma_width: int | None = None,
        p: int = 1,
        normalize_entities: bool | None = None,
        init_scale: float | None = None,
        phase_scale: float | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        entity_table: bool = True,
    ):
        super().__init__()
        self.interaction: Interaction = get_interaction(model, p)
        self.model_name = model
        self.p = p
        self.dims = check_dims(dims)
        self.prefix = Prefix(self.dims)
        # training uses the fused kernels (scoring.training_scores, gather_rows); False: the plain autograd
        # reference they are tested against (train.fused_kernels)
        self.fused_kernels = True
        self.gamma = float(DEFAULT_GAMMA if gamma is None else gamma)
        if gamma_scaling not in ("linear", "sqrt", "none"):
            raise MedkgeError(f"gamma_scaling must be linear, sqrt or none, got {gamma_scaling!r}")
        self.gamma_scaling = gamma_scaling
        self.gamma_width = int(self.dims[-1] if gamma_width is None else gamma_width)
        if normalize_entities is None:
            normalize_entities = self.interaction.normalizes_entities
        self.normalize_entities = bool(normalize_entities)
        if num_entities < 1 or num_relations < 1:
            raise MedkgeError("a model needs at least one entity and one relation")
        width = self.dims[-1]
        if init_scale is None:  # RotatE's (margin + 2) / width, with this model's own margin
            margin = self._margin(width)
            init_scale = (margin + 2.0) / width if self.interaction.uses_gamma else 0.1
        self.init_scale = float(init_scale)
        if phase_scale is None:  # RotatE's code: phases start uniform in [-pi, pi] from the entities' range
            phase_scale = math.pi / self.init_scale
        if phase_scale <= 0:
            raise MedkgeError(f"phase_scale must be greater than 0, got {phase_scale}")
        self.phase_scale = float(phase_scale) if model == "rotate" else 1.0
        it = self.interaction
        where = None if entity_table else "meta"
        self.entity = nn.Parameter(torch.empty(num_entities, it.entity_parts, width, device=where))
        self.relation = nn.Parameter(torch.empty(num_relations, it.relation_parts, width))
        # RotatE's phases start uniform in [-pi, pi] whatever phase_scale is
        bound = math.pi / self.phase_scale if model == "rotate" else self.init_scale
        with torch.no_grad():
            if seed is not None:
                if entity_table:
                    init_entity_rows(self.entity.data, 0, num_entities, seed, self.init_scale)
                self.relation.uniform_(-bound, bound, generator=keyed_generator(seed, RELATION_INIT))
            else:
                if entity_table:
                    self.entity.uniform_(-self.init_scale, self.init_scale, generator=generator)
                self.relation.uniform_(-bound, bound, generator=generator)

    # ---- description -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """The full width d_n."""
        return self.dims[-1]

    @property
    def num_entities(self) -> int:
        return self.entity.shape[0]

    @property
    def num_relations(self) -> int:
        return self.relation.shape[0]

    def spec(self) -> dict:
        """What is needed, with the tables, to rebuild this model (saved next to them)."""
        return {
            "model": self.model_name,
            "dims": list(self.dims),
            "gamma": self.gamma,
            "gamma_scaling": self.gamma_scaling,
            "gamma_width": self.gamma_width,
            "p": self.p,
            "normalize_entities": self.normalize_entities,
            "init_scale": self.init_scale,
            "phase_scale": self.phase_scale,
            "num_entities": self.num_entities,
            "num_relations": self.num_relations,
        }

    @classmethod
    def from_spec(cls, spec: dict, entity: Tensor | None = None, relation: Tensor | None = None) -> CroppableModel:
        """Rebuild a model from :meth:`spec` and (optionally) its tables."""
        model = cls(
            spec["model"],
            int(spec["num_entities"]),
            int(spec["num_relations"]),
            spec["dims"],
            gamma=spec["gamma"],
            gamma_scaling=spec.get("gamma_scaling", "none"),
            gamma_width=spec.get("gamma_width"),
            p=int(spec.get("p", 1)),
            normalize_entities=spec["normalize_entities"],
            init_scale=spec["init_scale"],
            phase_scale=spec["phase_scale"],
        )
        if entity is not None:
            model = model.to(dtype=entity.dtype)
        with torch.no_grad():
            for param, value in ((model.entity, entity), (model.relation, relation)):
                if value is None:
                    continue
                if value.shape != param.shape:
                    raise MedkgeError(
                        f"table shape {tuple(value.shape)} does not match the model's {tuple(param.shape)}"
                    )
                param.copy_(value)
        return model

    def extra_repr(self) -> str:
        dims = self.dims if len(self.dims) <= 6 else f"({self.dims[0]}, {self.dims[1]}, ..., {self.dims[-1]})"
        return f"{self.model_name}, entities={self.num_entities}, relations={self.num_relations}, dims={dims}"

    # ---- rows in the form the interaction expects ----------------------------------------------
    def entity_rows(self, index: Tensor) -> Tensor:
        """Entity rows ``[*index.shape, parts, D]`` (normalised over the full width where the model does)."""
        rows = self.entity.index_select(0, index.reshape(-1)).view(*index.shape, *self.entity.shape[1:])
        return self._normalize(rows)

    def relation_rows(self, index: Tensor) -> Tensor:
        """Relation rows ``[*index.shape, parts, D]`` (RotatE: phases)."""
        rows = self.relation.index_select(0, index.reshape(-1)).view(*index.shape, *self.relation.shape[1:])
        return rows * self.phase_scale if self.phase_scale != 1.0 else rows

    def entity_table(self) -> Tensor:
        return self._normalize(self.entity)

    def relation_table(self) -> Tensor:
        return self.relation * self.phase_scale if self.phase_scale != 1.0 else self.relation

    def margins(self, dims: Sequence[int] | None = None) -> float | Tensor:
        """The margin of each sub-model in ``dims`` (default: the model's), broadcastable over scores."""
        dims = self.dims if dims is None else dims
        if self.gamma_scaling == "none" or (len(dims) == 1 and dims[0] == self.gamma_width):
            return self.gamma
        values = [self._margin(d) for d in dims]
        return torch.tensor(values, dtype=self.relation.dtype, device=self.relation.device)

    def _margin(self, dim: int) -> float:
        """The margin of the ``dim``-dimensional sub-model (gamma belongs to the width ``gamma_width``)."""
        ratio = dim / self.gamma_width
        return self.gamma * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[self.gamma_scaling]

    def _normalize(self, rows: Tensor) -> Tensor:
        if not self.normalize_entities:
            return rows
        return F.normalize(rows.flatten(-2), dim=-1).view_as(rows)

    # ---- scoring -----------------------------------------------------------------------------
    def score_hrt(self, hrt: Tensor, dim: int | None = None) -> Tensor:
        """Scores of triples ``[B, 3]`` for every sub-model: ``[B, n]`` (``[B]`` for one ``dim``)."""
        hrt = self._check_ids(hrt, "hrt")
        if hrt.ndim != 2 or hrt.shape[1] != 3:
            raise MedkgeError(f"score_hrt expects triples of shape [B, 3], got {tuple(hrt.shape)}")
        scores = self.score_candidates("tail", hrt[:, 0], hrt[:, 1], hrt[:, 2:3])[:, 0]
        return self._pick(scores, dim)

    def score_t(self, h: Tensor, r: Tensor, tails: Tensor | None = None, dim: int | None = None) -> Tensor:
        """Scores of (h, r, t) for every tail t (or the given ``tails``): ``[B, num_tails, n]``.

        Computed in blocks of bounded memory, without gradients (an inference method).
        """
        return self._score_all("tail", h, r, tails, dim)

    def score_h(self, r: Tensor, t: Tensor, heads: Tensor | None = None, dim: int | None = None) -> Tensor:
        """Scores of (h, r, t) for every head h (or the given ``heads``): ``[B, num_heads, n]``."""
        return self._score_all("head", t, r, heads, dim)

    def score_candidates(self, side: Side, anchor: Tensor, r: Tensor, candidates: Tensor) -> Tensor:
        """Scores ``[B, C, n]`` with ``candidates [B, C]`` as the ``side`` entity of (anchor, r).

        ``anchor [B]`` is the head when ``side`` is "tail" and the tail when it is "head". The query is
        formed once per anchor and broadcast against its C candidates.
        """
        return self.score_groups([Group(side, anchor, r, candidates)])

    def score_groups(self, groups: Sequence[Group | tuple], entity: Tensor | None = None) -> Tensor:
        """Scores of several :class:`Group` s, stacked: ``[sum b, C (+ N), n]``.

        The training path: a batch of positives and negatives is one group per corrupted side. Rows are
        gathered with one index per table, so the backward pass builds one gradient per table.
        ``entity`` replaces the entity table (the sparse optimisers score from a leaf holding only the
        batch's rows; the groups' entity ids then index that leaf). Tuples (side, anchor, r, candidates)
        are read as groups without shared negatives.
        """
        it = self.interaction
        groups = [g if isinstance(g, Group) else Group(*g) for g in groups]
        table = self.entity if entity is None else entity
        entity_ids = [x for g in groups for x in g.entity_ids()]
        if self.fused_kernels:
            rows = [self._normalize(r) for r in gather_rows(table, entity_ids)]
        else:  # the plain autograd reference (train.fused_kernels: false)
            rows = list(
                self._normalize(table.index_select(0, torch.cat(entity_ids))).split([len(x) for x in entity_ids])
            )
        score = training_scores if self.fused_kernels else plain_scores
        relation = self.relation_rows(torch.cat([g.relation for g in groups])).split([len(g.relation) for g in groups])
        scores, margins = [], self.margins()
        for i, g in enumerate(groups):
            anchor_rows = rows[3 * i].unsqueeze(1)
            cand_rows = rows[3 * i + 1].view(*g.candidates.shape, *rows[0].shape[1:])
            r_rows = relation[i].unsqueeze(1)
            query = it.query(g.side, anchor_rows, r_rows)
            own = score(it, query, it.candidate(g.side, cand_rows, r_rows), self.prefix, margins)
            if g.shared is None:
                scores.append(own)
                continue
            shared = self._score_shared(g, query, r_rows, rows[3 * i + 2], margins, score)
            scores.append(torch.cat([own, shared], dim=1))
        return scores[0] if len(scores) == 1 else torch.cat(scores)

    def _score_shared(self, g: Group, query: Tensor, r_rows: Tensor, shared_rows: Tensor, margins, score) -> Tensor:
        """Scores ``[b, N, n]`` of each anchor's query against the N negatives its chunk shares.

        The b queries are laid out as [chunks, chunk] (the first chunk padded by ``g.offset`` places and the
        last one to its end, the padding scored and dropped) against [chunks, N] candidate rows: a dense
        block per chunk, one product per segment for the bilinear models that do not transform candidates
        by the relation, terms otherwise.
        """
        it, b, (chunks, n_neg) = self.interaction, len(g.anchor), g.shared.shape
        front, pad = g.offset, chunks * g.chunk - b - g.offset
        if front or pad:
            query = torch.cat(
                [query[:1].expand(front, *query.shape[1:]), query, query[-1:].expand(pad, *query.shape[1:])]
            )
            r_rows = torch.cat(
                [r_rows[:1].expand(front, *r_rows.shape[1:]), r_rows, r_rows[-1:].expand(pad, *r_rows.shape[1:])]
            )
        query = query.view(chunks, g.chunk, *query.shape[2:])  # [chunks, chunk, parts, D]
        cand = shared_rows.view(chunks, 1, n_neg, *shared_rows.shape[1:])  # [chunks, 1, N, parts, D]
        if it.kernel == "dot" and not it.candidates_depend_on_relation:
            sums = dot_block_batched(query, cand[:, 0], self.prefix)  # [chunks, chunk, N, n]
            out = it.finish(sums, margins)
        else:
            r_rows = r_rows.view(chunks, g.chunk, 1, *r_rows.shape[2:])
            out = score(it, query.unsqueeze(2), it.candidate(g.side, cand, r_rows), self.prefix, margins)
        return out.reshape(chunks * g.chunk, n_neg, -1)[front : front + b]

    @torch.no_grad()
    def _score_all(self, side: Side, anchor: Tensor, r: Tensor, candidates: Tensor | None, dim: int | None) -> Tensor:
        anchor = self._check_ids(anchor, "entity").reshape(-1)
        r = self._check_ids(r, "relation").reshape(-1)
        if candidates is None:
            candidates = torch.arange(self.num_entities, device=self.entity.device)
        candidates = self._check_ids(candidates, "entity").reshape(-1)
        if len(anchor) != len(r):
            raise MedkgeError(f"got {len(anchor)} entities but {len(r)} relations")
        scorer = BlockScorer(self)
        scores = self.entity.new_empty(len(anchor), len(candidates), len(self.dims))
        q_step, c_step = scorer.block_shape(len(anchor), len(candidates))
        for q0 in range(0, len(anchor), q_step):
            q = slice(q0, q0 + q_step)
            query, r_rows = scorer.queries(side, anchor[q], r[q])
            for c0 in range(0, len(candidates), c_step):
                c = slice(c0, c0 + c_step)
                scores[q, c] = scorer.block(side, query, r_rows, candidates[c])
        return self._pick(scores, dim)

    def _pick(self, scores: Tensor, dim: int | None) -> Tensor:
        if dim is None:
            return scores
        if dim not in self.dims:
            raise MedkgeError(f"dim {dim} is not a sub-model of this model (dims {list(self.dims)}); use crop({dim})")
        return scores[..., self.dims.index(dim)]

    def _check_ids(self, ids: Tensor | Sequence[int], kind: str) -> Tensor:
        ids = torch.as_tensor(ids, device=self.entity.device)
        if ids.dtype not in (torch.int64, torch.int32):
            raise MedkgeError(f"{kind} ids must be integers, got {ids.dtype}")
        ids = ids.long()
        if ids.numel():
            limits = {"entity": self.num_entities, "relation": self.num_relations}
            if kind == "hrt":
                bad = (ids < 0).any() or (ids[..., [0, 2]] >= self.num_entities).any()
                bad = bad or (ids[..., 1] >= self.num_relations).any()
            else:
                bad = (ids < 0).any() or (ids >= limits[kind]).any()
            if bad:
                raise MedkgeError(
                    f"{kind} id out of range (model has {self.num_entities} entities, {self.num_relations} relations)"
                )
        return ids

    # ---- cropping ----------------------------------------------------------------------------
    def crop(self, dim: int) -> CroppableModel:
        """A standalone ``dim``-dimensional model: the tables' first ``dim`` coordinates.

        Any 1 <= dim <= d_n is allowed. Entity normalisation (PairRE) was applied over the full width
        in training, so the cropped model stores the normalised prefix and does not normalise again;
        its margin is the sub-model's.
        """
        dim = int(dim)
        if not 1 <= dim <= self.dim:
            raise MedkgeError(f"crop dimension must be between 1 and {self.dim}, got {dim}")
        spec = self.spec() | {"dims": [dim], "normalize_entities": False}
        with torch.no_grad():
            entity = self.entity_table()[..., :dim].detach().clone()
            relation = self.relation[..., :dim].detach().clone()
        cropped = CroppableModel.from_spec(spec, entity, relation)
        return cropped.to(self.entity.device).train(self.training)


@dataclass
class Group:
    """Triples to score: every anchor against its own candidates, and optionally against shared negatives.

    ``side`` is the entity the candidates stand for ("tail": (anchor, r, candidate); "head": (candidate,
    r, anchor)); ``anchor`` and ``relation`` are ``[b]`` ids; ``candidates [b, C]`` each anchor's own
    candidates (in training column 0 is the true entity). ``shared [chunks, N]`` holds negatives that
    each chunk of ``chunk`` consecutive anchors shares (PyTorch-BigGraph's and DGL-KE's batched negatives:
    far fewer rows to gather); their scores follow the own candidates' along the candidate axis.
    """

    side: Side
    anchor: Tensor
    relation: Tensor
    candidates: Tensor
    shared: Tensor | None = None
    chunk: int = 0
    offset: int = 0  # places of the first chunk taken by anchors held elsewhere (another rank's share)

    def shared_ids(self) -> Tensor:
        return self.anchor[:0] if self.shared is None else self.shared.reshape(-1)

    def entity_ids(self) -> list[Tensor]:
        """Every entity id the group reads (anchors, own candidates, shared negatives)."""
        return [self.anchor, self.candidates.reshape(-1), self.shared_ids()]

    def to(self, device: torch.device) -> Group:
        shared = None if self.shared is None else self.shared.to(device)
        moved = (self.anchor.to(device), self.relation.to(device), self.candidates.to(device), shared)
        return Group(self.side, *moved, self.chunk, self.offset)

    def remap(self, index) -> Group:
        """The same group with entity ids passed through ``index`` (ids into a table of the batch's rows)."""
        shared = None if self.shared is None else index(self.shared)
        return Group(
            self.side, index(self.anchor), self.relation, index(self.candidates), shared, self.chunk, self.offset
        )


def gather_rows(table: Tensor, indices: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``table[index]`` for each index, whose backward pass adds every piece's gradient straight into one
    table-shaped gradient (autograd's index_select of the concatenated ids, then split, would first
    concatenate the pieces' gradients: a copy of every gathered row)."""
    if not (torch.is_grad_enabled() and table.requires_grad):
        return tuple(table.index_select(0, index) for index in indices)
    return _GatherRows.apply(table, *indices)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, *indices: Tensor):  # type: ignore[override]
        ctx.save_for_backward(*indices)
        ctx.table_shape = table.shape
        return tuple(table.index_select(0, index) for index in indices)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        grad = grads[0].new_zeros(ctx.table_shape)
        for index, piece in zip(ctx.saved_tensors, grads, strict=True):  # unused pieces arrive as zeros
            grad.index_add_(0, index, piece)
        return grad, *(None for _ in grads)


class BlockScorer:
    """Scores many queries against many candidates with a model's tables, in blocks (no gradients).

    The tables are prepared once (normalised, phases scaled, cropped to the widest dim needed and, for
    the element-wise kernels, with coordinates interleaved for fast segment sums), so that per block
    only the query-candidate terms are computed. Used by ``score_t``/``score_h`` and by evaluation.
    """

    def __init__(self, model: CroppableModel, prefix: Prefix | None = None, budget: int | None = None):
        self.model = model
        self.interaction = it = model.interaction
        dims = model.dims if prefix is None else prefix.dims
        if dims[-1] > model.dim:
            raise MedkgeError(f"dims go up to {dims[-1]} but the model is {model.dim} wide")
        self.use_matmul = it.kernel == "dot" and not it.candidates_depend_on_relation
        self.prefix = Prefix(dims, interleaved=not self.use_matmul)
        with torch.no_grad():
            # the table as scored, a view where nothing needs to change; its interleaved copy (a second table
            # in memory) is made when a block of candidates is first scored, not for rows gathered by id
            self.source = model.entity_table().detach()[..., : dims[-1]]
            self.relation = self.prefix.interleave(model.relation_table().detach()[..., : dims[-1]])
        self._entity: Tensor | None = None
        self.margins = model.margins(dims)
        self.budget = budget

    @property
    def entity(self) -> Tensor:
        """The whole entity table in this scorer's layout (made on first use)."""
        if self._entity is None:
            with torch.no_grad():
                self._entity = self.prefix.interleave(self.source)
        return self._entity

    @property
    def num_entities(self) -> int:
        return self.source.shape[0]

    def rows(self, ids: Tensor) -> Tensor:
        """Entity rows of ``ids`` in this scorer's layout (from the full copy if it exists, else gathered)."""
        if self._entity is not None:
            return self._entity[ids]
        with torch.no_grad():
            return self.prefix.interleave(self.source[ids])

    def block_shape(self, num_queries: int, num_candidates: int) -> tuple[int, int]:
        """Queries and candidates per block so that a block's working set stays near the budget.

        The default budget is small on the CPU: blocks that stay in cache and under glibc's mmap
        threshold run several times faster than big ones here; on a GPU it is 512 MiB.
        """
        it, prefix, budget = self.interaction, self.prefix, self.budget
        if budget is None:
            on_cpu = self.source.device.type == "cpu"
            budget = (32 << 20 if self.use_matmul else 8 << 20) if on_cpu else 512 << 20
        n = len(prefix.dims)
        if self.use_matmul:
            pair_bytes = 4 * (2 * prefix.segments + 2 * n)  # the [G, Q, C] products and their prefix sums
        else:
            pair_bytes = 4 * (it.entity_parts * prefix.width + prefix.segments + 2 * n)
        pairs = max(1, budget // pair_bytes)
        # a few hundred candidates per query keep the inner loops long; queries fill the rest
        queries = max(1, min(num_queries, pairs // min(num_candidates, 256)))
        return queries, max(1, min(num_candidates, pairs // queries))

    def prepare(self, rows: Tensor) -> Tensor:
        """Entity rows from elsewhere (another shard of a distributed table) laid out as this scorer's table."""
        with torch.no_grad():
            return self.prefix.interleave(self.model._normalize(rows)[..., : self.prefix.width])

    def queries(
        self, side: Side, anchor: Tensor, r: Tensor, anchor_rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Query rows ``[Q, parts, W]`` for (anchor, r), and the relation rows they were made from.

        ``anchor_rows`` (prepared, see :meth:`prepare`) replace the table's rows of ``anchor``."""
        r_rows = self.relation[r]
        rows = self.rows(anchor) if anchor_rows is None else anchor_rows
        return self.interaction.query(side, rows, r_rows), r_rows

    @torch.no_grad()
    def block(
        self, side: Side, query: Tensor, r_rows: Tensor, candidates: Tensor | slice, finish: bool = True
    ) -> Tensor:
        """Scores ``[Q, C, n]`` of every query against every candidate (ids, or a slice of ids).

        ``finish=False`` returns the prefix sums before the model's final monotone step (gamma - s, ...):
        enough to rank, as ``interaction.sum_sign`` says which way.
        """
        it = self.interaction
        cand = self.entity[candidates]
        if self.use_matmul:
            sums = dot_block(query, cand, self.prefix)
        else:
            # [Q, 1, parts, W] against [1, C, parts, W] (or [Q, C, ...] when candidates depend on r)
            cand = it.candidate(side, cand.unsqueeze(0), r_rows.unsqueeze(1))
            sums = self.prefix(it.terms(query.unsqueeze(1), cand, inplace=True), inplace=True)
        return it.finish(sums, self.margins, inplace=True) if finish else sums

    @torch.no_grad()
    def per_query(self, side: Side, query: Tensor, r_rows: Tensor, candidates: Tensor, finish: bool = True) -> Tensor:
        """Scores ``[Q, C, n]`` of query i against its own candidates ``candidates[i]`` (ids ``[Q, C]``)."""
        it = self.interaction
        cand = self.rows(candidates)  # [Q, C, parts, W]
        if self.use_matmul:
            sums = dot_block_batched(query.unsqueeze(1), cand, self.prefix)[:, 0]
        else:
            cand = it.candidate(side, cand, r_rows.unsqueeze(1))
            sums = self.prefix(it.terms(query.unsqueeze(1), cand, inplace=True), inplace=True)
        return it.finish(sums, self.margins, inplace=True) if finish else sums

    @torch.no_grad()
    def pairs(
        self,
        side: Side,
        query: Tensor,
        r_rows: Tensor,
        candidates: Tensor,
        finish: bool = True,
        candidate_rows: Tensor | None = None,
    ) -> Tensor:
        """Scores ``[Q, n]`` of query i against candidate i (``finish`` as in :meth:`block`); prepared
        ``candidate_rows`` replace the table's rows of ``candidates``."""
        it = self.interaction
        rows = self.rows(candidates) if candidate_rows is None else candidate_rows
        cand = it.candidate(side, rows, r_rows)
        sums = self.prefix(it.terms(query, cand, inplace=True), inplace=True)
        return it.finish(sums, self.margins, inplace=True) if finish else sums
