"""Negative sampling: K corruptions of each positive triple, of its head or its tail."""

from __future__ import annotations

import torch
from torch import Tensor

# Rounds of redrawing negatives that are known training triples; what is left after them is kept
# (only a query whose every candidate is known can be left; on real graphs two rounds clear all).
_FILTER_ROUNDS = 100


class NegativeSampler:
    """Draws ``negatives`` entities per positive to replace its head or its tail.

    corruption "uniform" replaces the head or the tail with probability 1/2; "bernoulli" replaces the
    head with probability tph / (tph + hpt) of the triple's relation (Wang et al. 2014), so that
    one-to-many relations get fewer false negatives. With ``filter_known`` a negative that is a training
    triple is redrawn.
    """

    def __init__(
        self,
        train: Tensor,
        num_entities: int,
        num_relations: int,
        negatives: int,
        corruption: str = "uniform",
        filter_known: bool = False,
    ):
        self.num_entities = num_entities
        self.num_relations = num_relations
        self.negatives = negatives
        self.corruption = corruption
        self.head_probability = torch.full((num_relations,), 0.5)
        if corruption == "bernoulli":
            self.head_probability = _bernoulli_head_probability(train, num_relations)
        train = train.long()  # keys below overflow int32
        self.known = torch.sort(self._keys(train[:, 0], train[:, 1], train[:, 2])).values if filter_known else None

    def _keys(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (h * self.num_relations + r) * self.num_entities + t

    def sample(self, batch: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(corrupt_head [B] bool, negatives [B, K] entity ids) for positives ``batch [B, 3]`` (on the CPU)."""
        corrupt_head = torch.rand(len(batch), generator=generator) < self.head_probability[batch[:, 1]]
        negatives = torch.randint(self.num_entities, (len(batch), self.negatives), generator=generator)
        if self.known is not None:
            for _ in range(_FILTER_ROUNDS):
                known = self._is_known(batch, corrupt_head, negatives)
                count = int(known.sum())
                if not count:
                    break
                negatives[known] = torch.randint(self.num_entities, (count,), generator=generator)
        return corrupt_head, negatives

    def sample_shared(self, batch: Tensor, chunk: int, generator: torch.Generator) -> tuple[Tensor, list[Tensor]]:
        """(corrupt_head [B] bool, [tail-side negatives, head-side negatives]) with shared negatives: the
        positives of each side, in batch order, form chunks of ``chunk``; each chunk shares one row of
        ``negatives`` entities (a side with b positives gets ``[ceil(b / chunk), negatives]``)."""
        corrupt_head = torch.rand(len(batch), generator=generator) < self.head_probability[batch[:, 1]]
        heads = int(corrupt_head.sum())
        shared = []
        for count in (len(batch) - heads, heads):
            chunks = -(-count // chunk)
            shared.append(torch.randint(self.num_entities, (chunks, self.negatives), generator=generator))
        return corrupt_head, shared

    def _is_known(self, batch: Tensor, corrupt_head: Tensor, negatives: Tensor) -> Tensor:
        h, r, t = (batch[:, i : i + 1].expand_as(negatives) for i in range(3))
        keys = self._keys(
            torch.where(corrupt_head[:, None], negatives, h), r, torch.where(corrupt_head[:, None], t, negatives)
        )
        position = torch.searchsorted(self.known, keys).clamp_max(len(self.known) - 1)
        return self.known[position] == keys


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


def batches(num: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A shuffled split of range(num) into batches (the last one may be smaller)."""
    return list(torch.randperm(num, generator=generator).split(batch_size))
