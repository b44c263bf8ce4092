"""Filtered link prediction of the funnel procedure (``medkge evaluate RUN --funnel D:K``).

The funnel answers a query in two steps: score every entity with the D-dim prefix (a cheap pass), keep the K
best, rerank those K with the requested dim d. It never scores the other entities at d, so its ranking is:

- the K shortlisted candidates first, in the order of their d-dim scores;
- then every other candidate, in the order of their D-dim scores.

The filtered rank of a true answer is therefore its rank among the shortlist at dim d when it was shortlisted,
and otherwise its rank at dim D (every shortlisted candidate ranks before it: a true answer outside the
shortlist ranks after all K, whatever its d-dim score). Filtering is the evaluation's: candidates forming
other known triples are removed before the shortlist is drawn, so they take no place in it. Ties count as in
evaluation.py (realistic: half of the tied candidates ahead). With K = all entities, the funnel ranks exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .datasets import Dataset
from .errors import MedkgeError
from .evaluation import FilterIndex, Metrics, Ties, _metrics, unique_triples
from .inference import Funnel, score_all, score_own
from .model import BlockScorer, CroppableModel
from .scoring import Prefix, Side

_TIE_WEIGHT = {"realistic": 0.5, "optimistic": 0.0, "pessimistic": 1.0}


def evaluate_funnel(
    model: CroppableModel,
    dataset: Dataset,
    funnel: Funnel,
    dims: Sequence[int],
    split: str = "test",
    *,
    ties: Ties = "realistic",
    chunk: int = 64,
    progress: bool = True,
) -> Metrics:
    """Filtered metrics of the funnel ``funnel`` (shortlist by its D-dim prefix, rerank at each of ``dims``)."""
    if ties not in _TIE_WEIGHT:
        raise MedkgeError(f"ties must be realistic, optimistic or pessimistic, got {ties!r}")
    dims = sorted({int(d) for d in dims})
    if not dims or dims[0] < 1 or dims[-1] > model.dim or funnel.dim > model.dim:
        raise MedkgeError(f"the funnel's and the evaluated dims must be between 1 and {model.dim}")
    if dataset.tail_candidates is not None:
        raise MedkgeError("the funnel ranks all entities: not for datasets with their own tail candidates (Countries)")
    first = BlockScorer(model, Prefix([funnel.dim]))
    second = BlockScorer(model, Prefix(dims))
    known = unique_triples(dataset.known_triples())
    triples = dataset.split(split).long()
    size = min(funnel.k, model.num_entities)
    ranks: dict[str, Tensor] = {}
    bar = tqdm(total=len(triples) * len(dataset.directions), desc=f"funnel {funnel}", disable=not progress)
    with torch.no_grad(), bar:
        for side in dataset.directions:
            anchor_col, true_col = (0, 2) if side == "tail" else (2, 0)
            index = FilterIndex(known, anchor_col, true_col, num_relations=model.num_relations)
            out = []
            for q0 in range(0, len(triples), chunk):
                part = triples[q0 : q0 + chunk]
                anchor, rel, true = part[:, anchor_col], part[:, 1], part[:, true_col]
                out.append(_chunk_ranks(first, second, side, anchor, rel, true, index, size, _TIE_WEIGHT[ties]))
                bar.update(len(part))
            ranks[side] = torch.cat(out)
    return _metrics(ranks, dims, split, ties, f"funnel {funnel} (shortlist by the {funnel.dim}-d prefix)")


def _chunk_ranks(
    first: BlockScorer,
    second: BlockScorer,
    side: Side,
    anchor: Tensor,
    rel: Tensor,
    true: Tensor,
    index: FilterIndex,
    size: int,
    tie: float,
) -> Tensor:
    """Funnel ranks ``[Q, n]`` of the true answers of one chunk of queries."""
    rows = torch.arange(len(anchor))
    scores = score_all(first, side, anchor, rel).double()  # [Q, E] at dim D
    query, answer = index.lookup(anchor, rel)
    other = answer != true[query]  # the other known answers are filtered; the true one is ranked
    scores[query[other], answer[other]] = -torch.inf
    true_first = scores[rows, true].unsqueeze(1)
    outside = _rank(scores, true_first, tie, exclude_self=True)  # its rank at dim D, among all filtered
    shortlist = torch.topk(scores, size).indices  # [Q, K]
    listed = shortlist == true.unsqueeze(1)
    dropped = torch.gather(scores, 1, shortlist) == -torch.inf  # filtered entries shortlisted for want of others
    second_scores = score_own(second, side, anchor, rel, shortlist).double()  # [Q, K, n]
    second_scores[dropped] = -torch.inf
    true_second = score_own(second, side, anchor, rel, true.unsqueeze(1)).double()  # [Q, 1, n]
    higher = (second_scores > true_second).sum(1)
    equal = ((second_scores == true_second) & ~listed.unsqueeze(2)).sum(1)
    inside = 1 + higher + tie * equal  # [Q, n]
    outside = torch.clamp(outside, min=size + 1).unsqueeze(1).expand_as(inside)
    return torch.where(listed.any(1, keepdim=True), inside, outside)


def _rank(scores: Tensor, true: Tensor, tie: float, exclude_self: bool) -> Tensor:
    """Rank ``[Q]`` of ``true [Q, 1]`` among ``scores [Q, E]`` (which hold the true answer once)."""
    higher = (scores > true).sum(1)
    equal = (scores == true).sum(1) - int(exclude_self)
    return (1 + higher + tie * equal).double()
