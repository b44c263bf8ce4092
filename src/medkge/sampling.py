"""Negative sampling and training batches: which triples an epoch visits, and K corruptions of each.

Every draw comes from a generator keyed by (seed, purpose, step, block) (seeding.py): the order of an epoch
by (seed, epoch), the side and negatives of batch position p at step s by (seed, s, p // BLOCK), a chunk of
shared negatives by (seed, s, side, chunk). A process that trains positions [lo, hi) of a batch draws exactly
what one process draws for them, and a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .model import Group
from .seeding import BLOCK, NEGATIVES, ORDER, REDRAW, SHARED, SIDES, keyed_generator

# Rounds of redrawing negatives that are known training triples; what is left after them is kept
# (only a query whose every candidate is known can be left; on real graphs two rounds clear all).
_FILTER_ROUNDS = 100


@dataclass
class Batch:
    """One training batch: positives and their negatives, grouped by the side that was corrupted.

    ``groups`` holds one :class:`~medkge.model.Group` per side; its candidate column 0 is the positive,
    followed by its own negatives or by the negatives its chunk shares. Objectives that need another
    model's scores on the same triples (distillation) score the batch with ``model.score_groups(batch.groups)``.
    """

    groups: list[Group]
    positives: Tensor
    # each positive's weight in the loss (with its negatives), mean 1 over the whole batch, in the order of the
    # scores' rows (the groups', tail side first); None: all 1
    weights: Tensor | None = None

    def entity_ids(self) -> Tensor:
        """Every entity id the batch reads, the positives' heads and tails included (with repeats)."""
        ids = [x for g in self.groups for x in g.entity_ids()]
        return torch.cat([*ids, self.positives[:, 0], self.positives[:, 2]])

    def to(self, device: torch.device) -> Batch:
        weights = None if self.weights is None else self.weights.to(device)
        return Batch([g.to(device) for g in self.groups], self.positives.to(device), weights)

    def rows(self, groups: list[Group]) -> Batch:
        """The same batch scoring other groups (the same positives, e.g. remapped to a leaf's rows)."""
        return Batch(groups, self.positives, self.weights)


class NegativeSampler:
    """Draws ``negatives`` entities per positive to replace its head or its tail, from keyed streams.

    corruption "uniform" replaces the head or the tail with probability 1/2; "bernoulli" replaces the
    head with probability tph / (tph + hpt) of the triple's relation (Wang et al. 2014), so that
    one-to-many relations get fewer false negatives. With ``filter_known`` a negative that is a training
    triple is redrawn (not with shared negatives, which many positives share).
    """

    def __init__(
        self,
        train: Tensor,
        num_entities: int,
        num_relations: int,
        negatives: int,
        corruption: str = "uniform",
        filter_known: bool = False,
        seed: int = 0,
        subsampling: bool = False,
    ):
        self.num_entities = num_entities
        self.num_relations = num_relations
        self.negatives = negatives
        self.corruption = corruption
        self.seed = seed
        self.head_probability = torch.full((num_relations,), 0.5)
        if corruption == "bernoulli":
            self.head_probability = _bernoulli_head_probability(train, num_relations)
        train = train.long()  # keys below overflow int32
        self.known = torch.sort(self._keys(train[:, 0], train[:, 1], train[:, 2])).values if filter_known else None
        # RotatE's subsampling: how often (h, r) and (t, r^-1) occur in the training triples
        self.frequency = None
        if subsampling:
            self.frequency = [
                torch.unique(train[:, col] * num_relations + train[:, 1], return_counts=True) for col in (0, 2)
            ]

    def _keys(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (h * self.num_relations + r) * self.num_entities + t

    def epoch_order(self, num: int, batch_size: int, epoch: int) -> list[Tensor]:
        """The batches of ``range(num)`` that epoch ``epoch`` visits (shuffled; the last may be smaller)."""
        return list(torch.randperm(num, generator=keyed_generator(self.seed, ORDER, epoch)).split(batch_size))

    def sides(self, positives: Tensor, step: int) -> Tensor:
        """corrupt_head ``[B]`` of a whole batch ``positives [B, 3]`` at ``step`` (one float per position)."""
        out = []
        for b in range(0, len(positives), BLOCK):
            rel = positives[b : b + BLOCK, 1]
            draw = torch.rand(BLOCK, generator=keyed_generator(self.seed, SIDES, step, b // BLOCK))[: len(rel)]
            out.append(draw < self.head_probability[rel])
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def own(self, positives: Tensor, corrupt_head: Tensor, lo: int, hi: int, step: int) -> Tensor:
        """Negatives ``[hi - lo, K]`` of positions lo..hi-1 of the batch ``positives [B, 3]`` (whose sides are
        ``corrupt_head [B]``); filtered block by block over the whole batch, so that any split agrees."""
        k, out = self.negatives, []
        for block in range(lo // BLOCK, (hi - 1) // BLOCK + 1) if hi > lo else ():
            start, stop = block * BLOCK, min((block + 1) * BLOCK, len(positives))
            ids = torch.randint(
                self.num_entities, (BLOCK, k), generator=keyed_generator(self.seed, NEGATIVES, step, block)
            )
            ids = ids[: stop - start]
            if self.known is not None:
                self._redraw_known(positives[start:stop], corrupt_head[start:stop], ids, step, block)
            out.append(ids[max(lo, start) - start : min(hi, stop) - start])
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)

    def _redraw_known(self, positives: Tensor, corrupt_head: Tensor, ids: Tensor, step: int, block: int) -> None:
        for round_ in range(_FILTER_ROUNDS):
            known = self._is_known(positives, corrupt_head, ids)
            count = int(known.sum())
            if not count:
                return
            generator = keyed_generator(self.seed, REDRAW, step, block, round_)
            ids[known] = torch.randint(self.num_entities, (count,), generator=generator)

    def shared(self, side: int, chunks: range, step: int) -> Tensor:
        """Negatives ``[len(chunks), K]`` that the given chunks of one side (0: tail, 1: head) share."""
        k, n = self.negatives, self.num_entities
        rows = [torch.randint(n, (k,), generator=keyed_generator(self.seed, SHARED, step, side, c)) for c in chunks]
        return torch.stack(rows) if rows else torch.zeros(0, k, dtype=torch.long)

    def batch(self, positives: Tensor, step: int, lo: int = 0, hi: int | None = None, chunk: int = 0) -> Batch:
        """Positions [lo, hi) of the batch ``positives [B, 3]`` (all of it by default) with their negatives: each
        its own K, or with ``chunk`` > 0 the K that each chunk of ``chunk`` consecutive positives of a side
        shares (chunks numbered over the whole batch, so a chunk may begin before ``lo``)."""
        positives = positives.long()
        hi = len(positives) if hi is None else hi
        corrupt_all = self.sides(positives, step)
        local, corrupt_head = positives[lo:hi], corrupt_all[lo:hi]
        weights = None
        if self.frequency is not None:  # in the order of the groups' rows: the tail side's positives first
            mine = self.weights(positives)[lo:hi]
            weights = torch.cat([mine[~corrupt_head], mine[corrupt_head]])
        if not chunk:
            batch = make_batch(local, corrupt_head, self.own(positives, corrupt_all, lo, hi, step))
            batch.weights = weights
            return batch
        groups = []
        for i, (side, mask) in enumerate((("tail", ~corrupt_all), ("head", corrupt_all))):
            before, count = int(mask[:lo].sum()), int(mask[lo:hi].sum())
            if not count:
                continue
            first, last = before // chunk, (before + count - 1) // chunk
            p = local[corrupt_head if side == "head" else ~corrupt_head]
            anchor, true = (p[:, 0], p[:, 2]) if side == "tail" else (p[:, 2], p[:, 0])
            shared = self.shared(i, range(first, last + 1), step)
            groups.append(Group(side, anchor, p[:, 1], true[:, None], shared, chunk, before - first * chunk))
        return Batch(groups, local, weights)

    def weights(self, positives: Tensor) -> Tensor:
        """RotatE's subsampling weights of a whole batch, 1 / sqrt(count(h, r) + count(t, r^-1)) with each count
        starting at 4 (its code's ``start``: 3 + occurrences), scaled to mean 1 over the batch."""
        assert self.frequency is not None
        count = torch.zeros(len(positives), dtype=torch.float64)
        for col, (keys, counts) in zip((0, 2), self.frequency, strict=True):
            key = positives[:, col] * self.num_relations + positives[:, 1]
            at = torch.searchsorted(keys, key).clamp_max(len(keys) - 1)
            count += 3 + torch.where(keys[at] == key, counts[at], 0)
        weights = count.rsqrt()
        return (weights * (len(weights) / weights.sum())).float()

    def _is_known(self, batch: Tensor, corrupt_head: Tensor, negatives: Tensor) -> Tensor:
        h, r, t = (batch[:, i : i + 1].expand_as(negatives) for i in range(3))
        keys = self._keys(
            torch.where(corrupt_head[:, None], negatives, h), r, torch.where(corrupt_head[:, None], t, negatives)
        )
        position = torch.searchsorted(self.known, keys).clamp_max(len(self.known) - 1)
        return self.known[position] == keys


def make_batch(positives: Tensor, corrupt_head: Tensor, negatives: Tensor) -> Batch:
    """A batch of ``positives [B, 3]`` whose head (``corrupt_head``) or tail is replaced by its own negatives
    ``negatives [B, K]``."""
    groups = []
    for side, mask in (("tail", ~corrupt_head), ("head", corrupt_head)):
        if not bool(mask.any()):
            continue
        p = positives[mask]
        anchor, true = (p[:, 0], p[:, 2]) if side == "tail" else (p[:, 2], p[:, 0])
        groups.append(Group(side, anchor, p[:, 1], torch.cat([true.unsqueeze(1), negatives[mask]], dim=1)))
    return Batch(groups, positives)


def _bernoulli_head_probability(train: Tensor, num_relations: int) -> Tensor:
    """tph / (tph + hpt) per relation: tails per head and heads per tail, averaged."""
    probability = torch.full((num_relations,), 0.5)
    for r in torch.unique(train[:, 1]).tolist():
        triples = train[train[:, 1] == r]
        heads = torch.unique(triples[:, 0]).numel()
        tails = torch.unique(triples[:, 2]).numel()
        tph, hpt = len(triples) / heads, len(triples) / tails
        probability[r] = tph / (tph + hpt)
    return probability
