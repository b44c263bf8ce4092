"""Filtered link prediction for every sub-model in one pass.

For each evaluation triple (h, r, t) we rank t among the candidates for (h, r, ?) and h among those for
(?, r, t). Candidates that form a known triple (train, valid or test) other than the one being ranked
are skipped ("filtered" setting). Ties count as the mean of the optimistic rank (1 + number of
candidates scoring higher) and the pessimistic one (1 + number scoring higher or equal): the
"realistic" rank. Every sub-model is ranked in the same pass, from the same blocks of scores.

Memory stays bounded: queries and candidates are processed in blocks sized from a byte budget, and the
filter is a sorted index of known triples, looked up per block of queries.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .datasets import Dataset
from .errors import MedkgeError, MedkgeWarning
from .model import BlockScorer, CroppableModel
from .scoring import Prefix, Side

Ties = Literal["realistic", "optimistic", "pessimistic"]
HITS = (1, 3, 10)
METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


class Metrics(dict):
    """Per-dim link-prediction metrics: ``metrics[d]["mrr"]``, ``metrics[d]["tail.hits@10"]``, ...

    Keys per dim: mrr, mr, hits@1, hits@3, hits@10 over both directions, the same prefixed with
    "head." and "tail." per direction, and "queries" (how many rankings were averaged).
    ``ranks[direction]`` holds the ranks ``[triples, n]`` the figures were computed from.
    """

    def __init__(
        self,
        by_dim: dict[int, dict[str, float]],
        split: str,
        ties: str,
        ranks: dict | None = None,
        protocol: str = "full",
    ):
        super().__init__(by_dim)
        self.split = split
        self.ties = ties
        self.ranks: dict[str, Tensor] = ranks or {}
        # "full", "full, N of M triples (seed S)" (a subset of the split) or "sampled (N candidates per side,
        # seed S)": how the figures were made (is_full: whether they compare with the full protocol's)
        self.protocol = protocol

    @property
    def dims(self) -> list[int]:
        return sorted(self)

    def mean(self, key: str = "mrr") -> float:
        """The mean of a metric over the sub-models (the default early-stopping criterion)."""
        return sum(self[d][key] for d in self) / len(self)

    @classmethod
    def merge(cls, parts: Sequence[Metrics]) -> Metrics:
        """One result from the results of models with disjoint dims (DT: one model per dim)."""
        by_dim = {d: m[d] for m in parts for d in m}
        ranks = {}
        for side in parts[0].ranks:
            ranks[side] = torch.cat([m.ranks[side] for m in parts], dim=1)
        protocol = " / ".join(dict.fromkeys(m.protocol for m in parts))  # one, unless the models differ in it
        return cls(dict(sorted(by_dim.items())), parts[0].split, parts[0].ties, ranks, protocol)

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "ties": self.ties,
            "protocol": self.protocol,
            "dims": {str(d): self[d] for d in self.dims},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Metrics:
        dims = {int(d): v for d, v in data["dims"].items()}
        return cls(dims, data["split"], data["ties"], protocol=data.get("protocol", "full"))

    def describe(self) -> str:
        """How the figures were made, for a table's title: "filtered, realistic ranks[, sampled ...]"."""
        protocol = "" if self.protocol == "full" else f", {self.protocol}"
        return f"filtered, {self.ties} ranks{protocol}"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, keys: Sequence[str] = METRICS, markdown: bool = False) -> str:
        """The per-dim table as text (or markdown)."""
        header = ["dim", *(k.upper() if k in ("mrr", "mr") else k.replace("hits@", "H@") for k in keys)]
        rows = [[str(d), *(_fmt(k, self[d][k]) for k in keys)] for d in self.dims]
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            return "\n".join(lines)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])


def _fmt(key: str, value: float) -> str:
    return f"{value:.1f}" if key.endswith("mr") and not key.endswith("mrr") else f"{value:.4f}"


def evaluate(
    model: CroppableModel,
    dataset: Dataset,
    split: str = "test",
    *,
    dims: Sequence[int] | None = None,
    ties: Ties = "realistic",
    filtered: bool = True,
    memory_budget: int | None = None,
    progress: bool = True,
    candidates: Tensor | None = None,
    protocol: Literal["full", "sampled"] = "full",
    sampled_candidates: int = 1000,
    sampled_seed: int = 0,
    subset: int | None = None,
    shard: Shard | None = None,
) -> Metrics:
    """Filtered link prediction on ``split`` for every sub-model (or for ``dims``, any d <= d_n).

    Args:
        ties: "realistic" (default), "optimistic" or "pessimistic" rank of the true entity among ties.
        filtered: skip candidates that form known triples (the standard setting); False gives raw ranks.
        memory_budget: bytes for one block of scores; the default suits the device (small blocks on the
            CPU, where they are fastest). Peak memory is a few blocks plus O(triples * dims).
        candidates: entity ids to rank the tails among (e.g. the items of a user-item graph) instead of all
            entities or the dataset's own tail candidates (Countries); only tails are ranked then, and every
            triple of ``split`` must have a candidate tail (medkge.recommend picks such triples).
        protocol: "full" ranks against every candidate entity; "sampled" against ``sampled_candidates``
            distinct entities per query and side, drawn uniformly without replacement (from the candidates,
            where given) with ``sampled_seed``, the same sets at every call (ogbl-wikikg2's protocol, for graphs
            too large to rank fully); candidates that form known triples are skipped, as in the full
            protocol. So a sampled rank is never above the full one. Where ``sampled_candidates`` would cover
            every candidate entity, they are all ranked against (the full protocol), with a warning, and
            ``Metrics.protocol`` says so.
        subset: rank only this many triples of ``split``, drawn once without replacement with ``sampled_seed``
            (the same triples at every call; all of them where None or at least the split's size): the full
            protocol's numbers, estimated at a fraction of its cost, for validation during training.
        shard: ``model`` holds rows [shard.lo, shard.hi) of a table split across processes (distributed
            training): every process ranks every query against its own rows and the counts are summed; every
            process calls this, and gets the same metrics.
    """
    if ties not in ("realistic", "optimistic", "pessimistic"):
        raise MedkgeError(f"ties must be realistic, optimistic or pessimistic, got {ties!r}")
    num_entities = model.num_entities if shard is None else shard.num_entities
    if shard is not None and (candidates is not None or dataset.tail_candidates is not None):
        raise MedkgeError("evaluation across processes ranks against all entities: not a candidate set")
    if num_entities != dataset.num_entities or model.num_relations != dataset.num_relations:
        raise MedkgeError(
            f"the model has {num_entities} entities and {model.num_relations} relations, "
            f"the dataset {dataset.num_entities} and {dataset.num_relations}"
        )
    if protocol not in ("full", "sampled"):
        raise MedkgeError(f"protocol must be full or sampled, got {protocol!r}")
    directions = dataset.directions
    if candidates is not None:
        candidates, directions = torch.unique(torch.as_tensor(candidates, dtype=torch.long)), ("tail",)
        if not len(candidates) or candidates[0] < 0 or candidates[-1] >= dataset.num_entities:
            raise MedkgeError(f"candidates must be a non-empty set of entity ids (0 to {dataset.num_entities - 1})")
    else:
        candidates = dataset.tail_candidates
    prefix = model.prefix if dims is None else Prefix(dims)
    scorer = BlockScorer(model, prefix, memory_budget)
    device = model.entity.device
    triples = dataset.split(split).long()
    total = len(triples)
    if subset is not None:
        if subset < 1:
            raise MedkgeError(f"subset must be at least 1 triple, got {subset}")
        if subset < total:  # the same triples at every call and in every process: a fixed seed
            chosen = torch.randperm(total, generator=torch.Generator().manual_seed(sampled_seed))[:subset]
            triples = triples[chosen.sort().values]
    triples = triples.to(device)
    known = unique_triples(dataset.known_triples()).to(device) if filtered else triples
    ranks: dict[str, Tensor] = {}
    bar = tqdm(
        total=len(triples) * len(directions),
        desc=f"evaluate {split}",
        unit="query",
        disable=not progress,
        leave=False,
    )
    shard = shard or Shard(0, model.num_entities, model.num_entities)
    covered = []  # sides whose sampled candidates would cover the pool: ranked against all of it
    with torch.no_grad(), bar:
        for side in directions:
            ranked = candidates if side == "tail" else None
            pool = ranked if ranked is not None else dataset.num_entities
            draw = None
            if protocol == "sampled":
                draw = sampled_candidates_of(pool, sampled_candidates, sampled_seed, side)
                covered += [] if draw is not None else [pool if isinstance(pool, int) else len(pool)]
            if draw is not None:
                ranks[side] = _rank_sampled(scorer, side, triples, known, draw, ties, filtered, bar, shard)
            else:
                ranks[side] = _rank(scorer, side, triples, known, ranked, ties, filtered, bar, shard)
    everywhere = max(covered) if len(covered) == len(directions) else 0
    described = describe_protocol(protocol, sampled_candidates, sampled_seed, everywhere)
    if len(triples) < total:
        described += f", {len(triples):,} of {total:,} triples (seed {sampled_seed})"
    if covered:
        warn_covered(sampled_candidates, max(covered), split)
    return _metrics(ranks, prefix.dims, split, ties, described)


def sampled_candidates_of(pool: int | Tensor, count: int, seed: int, side: str) -> SampledCandidates | None:
    """The sampled protocol's candidate sets of one side: ``count`` distinct entities per query from ``pool``
    (a number of entities, or candidate ids), or None where ``count`` covers the pool: rank against all of
    it then, which is the same ranking without drawing. Distributed evaluation calls this too."""
    size = pool if isinstance(pool, int) else len(pool)
    if count >= size:
        return None
    return SampledCandidates(pool, count, seed * 2 + ("head", "tail").index(side))


def warn_covered(count: int, pool: int, split: str) -> None:
    """The warning where the sampled protocol's ``count`` candidates would cover the ``pool`` ranked against."""
    warnings.warn(
        f"the sampled protocol's {count:,} candidates per side would cover all {pool:,} candidates: {split} "
        "ranked against all of them (the full protocol)",
        MedkgeWarning,
        stacklevel=3,
    )


def is_full(protocol: str) -> bool:
    """Whether figures recorded with ``protocol`` ranked every triple of the split against every candidate (the
    sampled protocol whose candidates would cover them all included): comparable with the full protocol's."""
    return (
        re.fullmatch(r"full( \(the [\d,]+ sampled candidates per side would cover all [\d,]+ candidates\))?", protocol)
        is not None
    )


def describe_protocol(protocol: str, count: int, seed: int, covered: int = 0) -> str:
    """The protocol as Metrics.protocol records it; ``covered``: the entities ranked against instead where
    the sampled protocol's candidates would cover them (0: none)."""
    if protocol == "full":
        return "full"
    if covered:
        return f"full (the {count:,} sampled candidates per side would cover all {covered:,} candidates)"
    return f"sampled ({count} candidates per side, seed {seed})"


def _rank(
    scorer: BlockScorer,
    side: Side,
    triples: Tensor,
    known: Tensor,
    candidates: Tensor | None,
    ties: Ties,
    filtered: bool,
    bar: tqdm,
    shard: Shard,
) -> Tensor:
    """Ranks ``[N, n]`` of the true ``side`` entity of each triple, for every sub-model."""
    device = triples.device
    num_entities = shard.num_entities
    anchor_col, true_col = (0, 2) if side == "tail" else (2, 0)
    # position of each entity among the candidates scored here (-1: not a candidate, or another process's row)
    if candidates is None:
        position = torch.arange(num_entities, device=device) - shard.lo
        position[(position < 0) | (position >= shard.hi - shard.lo)] = -1
        num_candidates = shard.hi - shard.lo
    else:
        candidates = candidates.to(device)
        position = torch.full((num_entities,), -1, dtype=torch.long, device=device)
        position[candidates] = torch.arange(len(candidates), device=device)
        num_candidates = len(candidates)
        if (position[triples[:, true_col]] < 0).any():
            raise MedkgeError(f"an evaluation triple's {side} is not among the {side} candidates")
    index = FilterIndex(known, anchor_col, true_col, num_relations=scorer.relation.shape[0])
    # the same blocks of queries in every process (each block is a collective across processes)
    q_step, _ = scorer.block_shape(len(triples), num_entities if candidates is None else num_candidates)
    out = torch.empty(len(triples), len(scorer.prefix.dims), dtype=torch.float64, device=device)
    for q0 in range(0, len(triples), q_step):
        chunk = triples[q0 : q0 + q_step]
        anchor, rel, true = chunk[:, anchor_col], chunk[:, 1], chunk[:, true_col]
        # rank on the sums before the final monotone step (gamma - s, ...): same order, one pass less
        query, r_rows, true_scores = _queries(scorer, side, anchor, rel, true, shard)
        if torch.isnan(true_scores).any():
            warnings.warn("NaN scores in evaluation: NaN is ranked last", stacklevel=3)
        # Filtered (query, candidate) pairs of this chunk, sorted by candidate. The true entity is always
        # among them, so it is never compared with itself.
        if filtered:
            pair_query, pair_entity = index.lookup(anchor, rel)
        else:
            pair_query, pair_entity = torch.arange(len(chunk), device=device), true
        pair_pos = position[pair_entity]
        keep = pair_pos >= 0
        pair_query, pair_pos = pair_query[keep], pair_pos[keep]
        order = torch.argsort(pair_pos)
        pair_query, pair_pos = pair_query[order], pair_pos[order]
        among, balance, equal = count_against(
            scorer,
            side,
            query,
            r_rows,
            true_scores,
            pair_query,
            pair_pos,
            num_candidates,
            candidates,
            ties != "realistic",
            reduce=shard.all_sum,
        )
        out[q0 : q0 + len(chunk)] = ranks_from_counts(among, balance, equal, ties, scorer.interaction.sum_sign)
        bar.update(len(chunk))
    return out.cpu()


@dataclass
class Shard:
    """The rows [lo, hi) of a table of ``num_entities`` that the model being evaluated holds: all of them, or
    this process's share of a table split across processes, whose other rows ``rows`` fetches (a collective)
    and whose counts ``all_sum`` adds up."""

    lo: int
    hi: int
    num_entities: int
    rows: Callable[[Tensor], Tensor] | None = None
    all_sum: Callable[..., tuple] = field(default=lambda *tensors: tensors)


def _queries(
    scorer: BlockScorer, side: Side, anchor: Tensor, rel: Tensor, true: Tensor, shard: Shard
) -> tuple[Tensor, Tensor, Tensor]:
    """(query rows, relation rows, the true entity's sums ``[Q, n]``) of a block of queries."""
    if shard.rows is None:
        query, r_rows = scorer.queries(side, anchor, rel)
        return query, r_rows, scorer.pairs(side, query, r_rows, true, finish=False)
    rows = scorer.prepare(shard.rows(torch.cat([anchor, true])).to(anchor.device))
    query, r_rows = scorer.queries(side, anchor, rel, anchor_rows=rows[: len(anchor)])
    return query, r_rows, scorer.pairs(side, query, r_rows, true, finish=False, candidate_rows=rows[len(anchor) :])


def ranks_from_counts(among: Tensor, balance: Tensor, equal: Tensor | None, ties: Ties, sign: int) -> Tensor:
    """Ranks ``[Q, n]`` from the candidates each query is ranked among ``[Q]``, the balance of higher minus
    lower sums ``[Q, n]`` and the ties ``[Q, n]`` (not needed for realistic ranks); ``sign`` says whether
    a higher sum is a higher score (interaction.sum_sign)."""
    balance = balance * sign  # higher - lower scores; among = higher + lower + equal
    among = among.unsqueeze(1)
    if ties == "realistic":
        return 1 + (among + balance) / 2
    assert equal is not None
    if ties == "optimistic":
        return 1 + (among - equal + balance) / 2
    return 1 + (among + equal + balance) / 2


def count_against(
    scorer: BlockScorer,
    side: Side,
    query: Tensor,
    r_rows: Tensor,
    true_scores: Tensor,
    pair_query: Tensor,
    pair_pos: Tensor,
    num_candidates: int,
    candidates: Tensor | None,
    need_equal: bool,
    reduce=None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(among [Q], balance [Q, n], equal) of queries against a scorer's candidates, filtered pairs skipped.

    ``reduce`` sums partial counts across processes (distributed evaluation: each holds some candidates);
    NaN or infinite scores are counted again with plain comparisons, everywhere at once.
    """
    _, c_step = scorer.block_shape(len(query), num_candidates)
    among = num_candidates - torch.bincount(pair_query, minlength=len(query)).to(torch.float64)
    blocks = (scorer, side, query, r_rows, candidates, num_candidates, c_step, pair_query, pair_pos)
    balance, equal = _count(*blocks, true_scores, need_equal=need_equal, nan_safe=False)
    reduce = reduce or (lambda *x: x)
    among, balance, equal = reduce(among, balance, equal)
    if torch.isnan(balance).any():  # NaN or infinite scores: count again with plain comparisons
        balance, equal = _count(*blocks, true_scores, need_equal=need_equal, nan_safe=True)
        _, balance, equal = reduce(among.new_zeros(among.shape), balance, equal)
    return among, balance, equal


def _count(
    scorer: BlockScorer,
    side: Side,
    query: Tensor,
    r_rows: Tensor,
    candidates: Tensor | None,
    num_candidates: int,
    c_step: int,
    pair_query: Tensor,
    pair_pos: Tensor,
    true_scores: Tensor,
    need_equal: bool,
    nan_safe: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per query and sub-model: (candidates scoring higher - candidates scoring lower, ties), filtered.

    sign(score - true) summed over a block counts both at once in one cheap pass. The nan_safe pass
    compares instead, treating NaN scores as lowest; it runs only where the fast pass met NaN or inf.
    """
    device = true_scores.device
    true = true_scores.unsqueeze(1)  # [Q, 1, n]
    if nan_safe:  # NaN ranks last: -inf in the orientation of the sums
        true = true.nan_to_num(nan=-math.inf * scorer.interaction.sum_sign)
    balance = torch.zeros(true_scores.shape, dtype=torch.float64, device=device)
    equal = torch.zeros_like(balance) if need_equal else None
    starts = list(range(0, num_candidates, c_step))
    edges = torch.searchsorted(pair_pos, torch.tensor([*starts, num_candidates], device=device)).tolist()

    def sign(scores: Tensor, reference: Tensor) -> Tensor:  # overwrites scores
        if nan_safe:
            scores = scores.nan_to_num_(nan=-math.inf * scorer.interaction.sum_sign)
            return (scores > reference).to(scores.dtype) - (scores < reference).to(scores.dtype)
        return scores.sub_(reference).sign_()

    for block, c0 in enumerate(starts):
        c1 = min(c0 + c_step, num_candidates)
        ids = slice(c0, c1) if candidates is None else candidates[c0:c1]
        scores = scorer.block(side, query, r_rows, ids, finish=False)  # [Q, C, n]
        lo, hi = edges[block], edges[block + 1]
        if hi > lo:  # the filtered candidates of this block, to take back out
            q_idx = pair_query[lo:hi]
            filtered = scores[q_idx, pair_pos[lo:hi] - c0]  # [P, n]
            if equal is not None:
                equal.index_add_(0, q_idx, -(filtered == true[q_idx, 0]).to(equal.dtype))
            balance.index_add_(0, q_idx, -sign(filtered, true[q_idx, 0]).to(balance.dtype))
        if equal is not None:
            equal += (scores == true).sum(1)
        balance += sign(scores, true).sum(1)
    return balance, equal


def unique_triples(triples: Tensor) -> Tensor:
    """The distinct rows of ``triples [N, 3]`` as int64 (sorted by one packed key: much faster than
    ``torch.unique(dim=0)`` on tens of millions of triples)."""
    triples = triples.long()
    if not len(triples):
        return triples
    e = int(triples[:, [0, 2]].max()) + 1
    r = int(triples[:, 1].max()) + 1
    if e * e * r >= 2**63:  # the packed key would overflow
        return torch.unique(triples, dim=0)
    keys = torch.unique((triples[:, 0] * r + triples[:, 1]) * e + triples[:, 2])
    return torch.stack([keys // (r * e), keys // e % r, keys % e], dim=1)


class FilterIndex:
    """Known triples sorted by (anchor, relation), to list the known answers of many queries at once
    (filtered ranking here, ``exclude_known`` in medkge.inference)."""

    def __init__(self, known: Tensor, anchor_col: int, answer_col: int, num_relations: int):
        self.num_relations = num_relations
        keys = known[:, anchor_col] * num_relations + known[:, 1]
        order = torch.argsort(keys)
        self.keys = keys[order]
        self.answers = known[order, answer_col]

    def lookup(self, anchor: Tensor, rel: Tensor) -> tuple[Tensor, Tensor]:
        """(query index, known answer) pairs for queries (anchor, rel)."""
        keys = anchor * self.num_relations + rel
        lo = torch.searchsorted(self.keys, keys)
        hi = torch.searchsorted(self.keys, keys, right=True)
        counts = hi - lo
        query = torch.repeat_interleave(torch.arange(len(keys), device=keys.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        offset = torch.arange(len(query), device=keys.device) - starts[query]
        return query, self.answers[lo[query] + offset]


class SampledCandidates:
    """The fixed candidate sets of the sampled protocol: ``count`` distinct entities per query, uniform over
    ``pool`` (a number of entities, or a tensor of candidate ids) and drawn without replacement (duplicates
    would count one entity several times, pushing ranks past the pool's size), per block of _SAMPLE_BLOCK
    queries from a generator seeded by (seed, block), so a query's set does not depend on how evaluation is
    blocked. ``count`` must be below the pool's size (:func:`sampled_candidates_of` decides)."""

    def __init__(self, pool: int | Tensor, count: int, seed: int):
        size = pool if isinstance(pool, int) else len(pool)
        if not 1 <= count < size:
            raise MedkgeError(f"the sampled protocol draws 1 to {size - 1} candidates from {size}, not {count}")
        self.pool, self.count, self.seed = pool, count, seed

    def for_queries(self, start: int, stop: int) -> Tensor:
        """Candidate ids ``[stop - start, count]`` of queries start..stop-1, distinct within each row."""
        size = self.pool if isinstance(self.pool, int) else len(self.pool)
        out = []
        for block in range(start // _SAMPLE_BLOCK, (stop - 1) // _SAMPLE_BLOCK + 1):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
            ids = _distinct(size, self.count, g)
            lo, hi = max(start, block * _SAMPLE_BLOCK), min(stop, (block + 1) * _SAMPLE_BLOCK)
            out.append(ids[lo - block * _SAMPLE_BLOCK : hi - block * _SAMPLE_BLOCK])
        ids = torch.cat(out)
        return ids if isinstance(self.pool, int) else self.pool[ids]


def _distinct(size: int, count: int, g: torch.Generator) -> Tensor:
    """``[_SAMPLE_BLOCK, count]`` ids, each row ``count`` distinct draws from ``range(size)`` (count < size)."""
    if count * 4 >= size:  # a large share of the pool: a random permutation per row, in pieces of ~16M ids
        rows = max(1, (1 << 24) // size)
        parts = [
            torch.rand(min(rows, _SAMPLE_BLOCK - r), size, generator=g).argsort(dim=1)[:, :count]
            for r in range(0, _SAMPLE_BLOCK, rows)
        ]
        return torch.cat(parts)
    # a small share: draw with replacement, then draw again where a row repeats an id (each draw repeats
    # with probability below 1/4, so few rounds)
    ids = torch.randint(size, (_SAMPLE_BLOCK, count), generator=g)
    while True:
        ids = ids.sort(dim=1).values
        repeated = torch.zeros_like(ids, dtype=torch.bool)
        repeated[:, 1:] = ids[:, 1:] == ids[:, :-1]
        n = int(repeated.sum())
        if not n:
            return ids
        ids[repeated] = torch.randint(size, (n,), generator=g)


_SAMPLE_BLOCK = 256


def _rank_sampled(
    scorer: BlockScorer,
    side: Side,
    triples: Tensor,
    known: Tensor,
    draw: SampledCandidates,
    ties: Ties,
    filtered: bool,
    bar: tqdm,
    shard: Shard,
) -> Tensor:
    """Ranks ``[N, n]`` of the true ``side`` entity of each triple among its own sampled candidates."""
    device = triples.device
    anchor_col, true_col = (0, 2) if side == "tail" else (2, 0)
    num_entities, num_relations = shard.num_entities, scorer.relation.shape[0]
    if num_entities * num_entities * num_relations >= 2**63:
        raise MedkgeError("the sampled protocol packs (anchor, relation, candidate) in 63 bits: too many entities")
    # known (anchor, relation, answer) as one sorted key each, to skip candidates that form known triples
    known_keys = torch.sort((known[:, anchor_col] * num_relations + known[:, 1]) * num_entities + known[:, true_col])[0]
    width = scorer.source.shape[1] * scorer.source.shape[2]
    budget = scorer.budget or (8 << 20 if device.type == "cpu" else 512 << 20)
    q_step = max(1, min(len(triples), budget // (4 * draw.count * (width + 2 * len(scorer.prefix.dims)))))
    out = torch.empty(len(triples), len(scorer.prefix.dims), dtype=torch.float64, device=device)
    sign = scorer.interaction.sum_sign
    # NaN scores rank last: in the sums' orientation, -inf for bilinear models and +inf for distances
    worst = -math.inf * sign
    for q0 in range(0, len(triples), q_step):
        chunk = triples[q0 : q0 + q_step]
        anchor, rel, true = chunk[:, anchor_col], chunk[:, 1], chunk[:, true_col]
        cands = draw.for_queries(q0, q0 + len(chunk)).to(device)  # [Q, C]
        query, r_rows, true_scores = _queries(scorer, side, anchor, rel, true, shard)
        true_scores = true_scores.unsqueeze(1)  # [Q, 1, n]
        if filtered:
            keys = ((anchor * num_relations + rel) * num_entities).unsqueeze(1) + cands
            position = torch.searchsorted(known_keys, keys).clamp_max(len(known_keys) - 1)
            valid = known_keys[position] != keys
        else:
            valid = cands != true.unsqueeze(1)
        if shard.rows is None:
            scores = scorer.per_query(side, query, r_rows, cands, finish=False)  # [Q, C, n]
        else:  # only the candidates among this process's rows; the others' counts are summed below
            mine = (cands >= shard.lo) & (cands < shard.hi)
            valid &= mine
            q_idx, c_idx = mine.nonzero(as_tuple=True)
            scores = true_scores.new_full((*cands.shape, true_scores.shape[2]), worst)
            local = cands[q_idx, c_idx] - shard.lo
            scores[q_idx, c_idx] = scorer.pairs(side, query[q_idx], r_rows[q_idx], local, finish=False)
        scores, true_scores = scores.nan_to_num(nan=worst), true_scores.nan_to_num(nan=worst)
        higher = ((scores * sign > true_scores * sign) & valid.unsqueeze(2)).sum(1).double()
        equal = ((scores == true_scores) & valid.unsqueeze(2)).sum(1).double()
        higher, equal = shard.all_sum(higher, equal)
        if ties == "realistic":
            rank = 1 + higher + equal / 2
        elif ties == "optimistic":
            rank = 1 + higher
        else:
            rank = 1 + higher + equal
        out[q0 : q0 + len(chunk)] = rank
        bar.update(len(chunk))
    return out.cpu()


def _metrics(ranks: dict[str, Tensor], dims: Sequence[int], split: str, ties: str, protocol: str = "full") -> Metrics:
    by_dim: dict[int, dict[str, float]] = {d: {} for d in dims}
    groups = {"": torch.cat(list(ranks.values()))} | {f"{side}.": r for side, r in ranks.items()}
    for prefix_key, r in groups.items():
        r = r.double()
        values = {
            "mrr": (1.0 / r).mean(0),
            "mr": r.mean(0),
            **{f"hits@{k}": (r <= k).double().mean(0) for k in HITS},
        }
        for i, d in enumerate(dims):
            for key, v in values.items():
                by_dim[d][prefix_key + key] = float(v[i])
    for d in dims:
        by_dim[d]["queries"] = sum(len(r) for r in ranks.values())
    return Metrics(by_dim, split, ties, ranks, protocol)
