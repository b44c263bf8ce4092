"""Recommendation evaluation: rank only a candidate set (the items) and score queries that have several
relevant answers by ndcg@k and recall@k, for every sub-model in one pass.

A recommendation graph holds (user, interact, item) triples beside the items' attributes. Evaluating it as
recommendation papers do means, for each query q = (user, interact, ?) of the evaluated split:

- only the candidates are ranked (:class:`Candidates`: a file of labels, or the tails of a relation);
- the relevant answers T_q are all of the query's tails in the split;
- the query's tails in the other splits (train, valid: items already seen) are removed from its list
  ("filtered", as in link prediction); relevance is binary;
- with p_t the position of answer t in that list (1 = best)::

      DCG@k    = sum over t in T_q with p_t <= k of 1 / log2(p_t + 1)
      IDCG@k   = sum over p = 1 .. min(k, |T_q|) of 1 / log2(p + 1)
      ndcg@k   = DCG@k / IDCG@k
      recall@k = |{t in T_q : p_t <= k}| / |T_q|             recall="relevant" (default; LightGCN, RecBole)
               = |{t in T_q : p_t <= k}| / min(k, |T_q|)     recall="min" (e.g. VAE-CF, Liang et al. 2018)

  averaged over the queries (each query counts once, however many answers it has).

The positions come from the filtered one-pass ranking of evaluation.py: p_t is the filtered rank of t among
the candidates (every other known answer removed) plus the number of the query's other relevant answers
ahead of t. Ties with the other candidates follow the evaluation's rule (realistic: half of them count as
ahead); relevant answers that tie with each other are put in a fixed order (by id), so that they hold
distinct places and ndcg stays at most 1. When no scores tie, p_t is exactly t's place in the sorted list.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .datasets import Dataset
from .errors import MedkgeError, brief, closest
from .evaluation import Metrics, Ties, evaluate
from .inference import triple_scores
from .model import BlockScorer, CroppableModel
from .run import Run
from .scoring import Prefix

DEFAULT_KS = (5, 10, 20)
RECALL = ("relevant", "min")
RULE = "tails:"  # --candidates tails:R -- the entities that are the tail of relation R in some triple


@dataclass(frozen=True)
class Candidates:
    """The entities that queries' tails are ranked among, and the relations whose triples are ranked.

    ``entities``: sorted entity ids. ``relations``: relation ids whose triples of the split are ranked
    (None: every triple of the split, each of which must then have a candidate tail).
    """

    entities: Tensor
    relations: tuple[int, ...] | None
    source: str  # where the set came from, for messages: "tails of interact", "items.txt"

    @classmethod
    def tails_of(cls, dataset: Dataset, relations: Sequence[str | int]) -> Candidates:
        """The entities that are the tail of one of ``relations`` in any split (the relations' range);
        the triples of those relations are ranked."""
        ids = _relation_ids(dataset, relations)
        known = dataset.known_triples()
        entities = torch.unique(known[torch.isin(known[:, 1], torch.tensor(ids)), 2])
        names = ", ".join(dataset.relations[r] for r in ids)
        return cls(entities, ids, f"tails of {names}")

    @classmethod
    def from_file(cls, path: str | Path, dataset: Dataset, relations: Sequence[str | int] | None = None) -> Candidates:
        """Entity labels, one per line (blank lines and lines starting with # skipped)."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise MedkgeError(f"{path}: cannot read the candidates ({error})") from None
        ids = []
        for number, line in enumerate(lines, start=1):
            label = line.strip()
            if not label or label.startswith("#"):
                continue
            if label not in dataset.entity_ids:
                raise MedkgeError(f"{path}:{number}: unknown entity {brief(label)}{closest(label, dataset.entities)}")
            ids.append(dataset.entity_ids[label])
        if not ids:
            raise MedkgeError(f"{path}: no candidate entities in the file")
        chosen = None if relations is None else _relation_ids(dataset, relations)
        return cls(torch.unique(torch.tensor(ids)), chosen, path.name)

    @classmethod
    def parse(cls, spec: str, dataset: Dataset, relations: Sequence[str | int] | None = None) -> Candidates:
        """``FILE`` (labels, one per line) or ``tails:R[,R2...]`` (the tails of those relations);
        ``relations`` (optional) chooses the relations whose triples are ranked."""
        if not Path(spec).is_file() and spec.startswith(RULE):
            names = [x.strip() for x in spec[len(RULE) :].split(",") if x.strip()]
            found = cls.tails_of(dataset, names)
            if relations is not None:
                found = dataclasses.replace(found, relations=_relation_ids(dataset, relations))
            return found
        if not Path(spec).is_file():
            raise MedkgeError(f"--candidates {spec}: no such file (or give a rule, {RULE}RELATION)")
        return cls.from_file(spec, dataset, relations)

    def describe(self, dataset: Dataset) -> str:
        which = "every relation" if self.relations is None else ", ".join(dataset.relations[r] for r in self.relations)
        return f"{len(self.entities):,} candidates ({self.source}), triples of {which}"


def restrict(dataset: Dataset, split: str, candidates: Candidates | None) -> Dataset:
    """``dataset`` with ``split`` cut to the triples that are ranked: distinct, of the candidates' relations,
    each with a candidate tail (else an error). The other splits stay whole, so the filter is complete."""
    triples = torch.unique(dataset.split(split), dim=0)
    if candidates is not None:
        if candidates.relations is not None:
            triples = triples[torch.isin(triples[:, 1], torch.tensor(candidates.relations))]
        if not len(triples):
            raise MedkgeError(f"the {split} split has no triples of {candidates.describe(dataset)}")
        outside = ~torch.isin(triples[:, 2], candidates.entities)
        if outside.any():
            h, r, t = triples[outside][0].tolist()
            if candidates.relations is None:
                hint = (
                    f"rank one relation's triples (--relation R) or use its tails as candidates (--candidates {RULE}R)"
                )
            else:  # --relation is given already: the candidates must grow
                names = ",".join(dataset.relations[x] for x in candidates.relations)
                hint = f"add those tails to the candidates, or take all tails of {names} (--candidates {RULE}{names})"
            raise MedkgeError(
                f"{int(outside.sum())} {split} triples have a tail that is not a candidate, e.g. "
                f"({dataset.entities[h]}, {dataset.relations[r]}, {dataset.entities[t]}); {hint}"
            )
    return dataclasses.replace(dataset, **{split: triples})


def evaluate_recommendation(
    source: CroppableModel | Run,
    dataset: Dataset | None = None,
    split: str = "test",
    *,
    candidates: Candidates | None = None,
    dims: Sequence[int] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    recall: str = "relevant",
    ties: Ties | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
) -> Metrics:
    """Filtered ranking of the tails of ``split`` among ``candidates`` (default: all entities) for every
    sub-model in one pass, with ndcg@k and recall@k (module docstring) beside MRR and Hits.

    ``source`` is a model (then give ``dataset``) or a run (its own dataset, ties and memory budget). The
    result has, per dim, the usual keys (over tail queries only) and "ndcg@k", "recall@k" for each k, and
    "lists": how many (head, relation) queries ndcg and recall average over.
    """
    ks = check_ks(ks)
    if recall not in RECALL:
        raise MedkgeError(f"recall must be one of {', '.join(RECALL)}, got {recall!r}")
    if isinstance(source, Run):
        dataset = dataset or source.dataset()
        ties = ties or source.config.eval.ties  # type: ignore[assignment]
        memory_budget = memory_budget or source.config.eval.memory_budget
        if len(source.models) == 1:
            parts = [(source.model, dims)]
        else:  # one model per dim (DT, distillation): each is its own sub-model
            parts = [(source.model_for(d), None) for d in (source.dims if dims is None else dims)]
    else:
        if dataset is None:
            raise MedkgeError("evaluating a model needs its dataset")
        parts = [(source, dims)]
    ties = ties or "realistic"
    subset = restrict(dataset, split, candidates)
    triples = subset.split(split)
    entities = None if candidates is None else candidates.entities
    results = []
    for model, model_dims in parts:
        metrics = evaluate(
            model,
            subset,
            split,
            dims=model_dims,
            ties=ties,
            memory_budget=memory_budget,
            progress=progress,
            candidates=entities,
        )
        prefix = model.prefix if model_dims is None else Prefix(model_dims)
        scores = answer_scores(model, prefix, triples)
        values = ranking_metrics(triples, metrics.ranks["tail"], scores, ks, ties, recall)
        lists = len(torch.unique(triples[:, :2], dim=0))
        for i, d in enumerate(prefix.dims):
            metrics[d].update({key: float(v[i]) for key, v in values.items()})
            metrics[d]["lists"] = lists
        results.append(metrics)
    return results[0] if len(results) == 1 else Metrics.merge(results)


def ranking_metrics(
    triples: Tensor,
    ranks: Tensor,
    scores: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    ties: Ties = "realistic",
    recall: str = "relevant",
) -> dict[str, Tensor]:
    """ndcg@k and recall@k ``[n]`` per sub-model, from distinct triples ``[N, 3]`` grouped by (head, relation).

    ``ranks [N, n]``: each triple's filtered tail rank (every other known answer removed); ``scores [N, n]``:
    the triples' scores in any order-preserving form (higher = better), which place the answers of one
    query among each other (answers that tie: in the order of ``triples``).
    """
    _, group, size = torch.unique(triples[:, :2], dim=0, return_inverse=True, return_counts=True)
    scores = scores.double().nan_to_num(nan=-math.inf)  # NaN ranks last, as in evaluation
    position = ranks.double() + _answers_ahead(group, size, scores)
    num_queries, n = len(size), scores.shape[1]
    gain = 1.0 / torch.log2(position + 1)
    ndcg, recalls = {}, {}
    for k in ks:
        hit = (position <= k).double()
        dcg = scores.new_zeros(num_queries, n).index_add_(0, group, gain * hit)
        found = scores.new_zeros(num_queries, n).index_add_(0, group, hit)
        ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64)), 0)  # IDCG@1..k
        ndcg[f"ndcg@{k}"] = (dcg / ideal[size.clamp(max=k) - 1].unsqueeze(1)).mean(0)
        denominator = size if recall == "relevant" else size.clamp(max=k)
        recalls[f"recall@{k}"] = (found / denominator.unsqueeze(1)).mean(0)
    return ndcg | recalls


def _answers_ahead(group: Tensor, size: Tensor, scores: Tensor, pairs: int = 1 << 20) -> Tensor:
    """Per answer and sub-model: how many other answers of its query score higher, or tie and come first."""
    order = torch.argsort(group, stable=True)
    start = torch.cumsum(size, 0) - size  # each query's first answer in ``order``
    out = torch.zeros_like(scores)
    per_answer = size[group]  # an answer is compared with every answer of its query (itself included)
    chunk = max(1, pairs // max(1, int(per_answer.max())))
    for a0 in range(0, len(group), chunk):
        answers = torch.arange(a0, min(a0 + chunk, len(group)))
        counts = per_answer[answers]
        i = torch.repeat_interleave(answers, counts)  # pairs (i, j): j runs over the answers of i's query
        offset = torch.arange(len(i)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        j = order[start[group[i]] + offset]
        si, sj = scores[i], scores[j]
        out.index_add_(0, i, ((sj > si) | ((sj == si) & (j < i).unsqueeze(1))).double())
    return out


def answer_scores(model: CroppableModel, prefix: Prefix, triples: Tensor) -> Tensor:
    """Scores ``[N, n]`` of triples for the sub-models ``prefix.dims``, as the sums evaluation ranks on,
    oriented so that higher is better (the model's final monotone step left out)."""
    return triple_scores(BlockScorer(model, prefix), triples, finish=False) * model.interaction.sum_sign


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Cut-offs k: positive integers, distinct, in increasing order."""
    try:
        values = sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        raise MedkgeError(f"k must be positive integers, got {ks!r}") from None
    if not values or values[0] < 1:
        raise MedkgeError(f"k must be positive integers, got {list(ks)}")
    return tuple(values)


def _relation_ids(dataset: Dataset, relations: Sequence[str | int]) -> tuple[int, ...]:
    ids = []
    for relation in relations:
        if isinstance(relation, int) and not isinstance(relation, bool):
            if not 0 <= relation < dataset.num_relations:
                raise MedkgeError(f"relation id {relation} out of range (0 to {dataset.num_relations - 1})")
            ids.append(relation)
        elif relation in dataset.relation_ids:
            ids.append(dataset.relation_ids[relation])
        else:
            raise MedkgeError(f"unknown relation {brief(relation)}{closest(str(relation), dataset.relations)}")
    if not ids:
        raise MedkgeError("name at least one relation")
    return tuple(sorted(set(ids)))
