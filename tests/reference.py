"""Naive reference implementations: each sub-model scored from scratch from tables sliced to d.

Written straight from the formulas of MED.md section 2 with complex dtypes, independent of the
engine's query/candidate decomposition and prefix sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkge import CroppableModel


def reference_scores(model: CroppableModel, hrt: torch.Tensor, d: int) -> torch.Tensor:
    """Scores [B] of triples for the d-dimensional sub-model, computed from sliced tables."""
    entity = model.entity.detach()
    if model.normalize_entities:
        entity = F.normalize(entity.flatten(-2), dim=-1).view_as(entity)
    entity = entity[..., :d]
    relation = model.relation.detach()[..., :d]
    h, r, t = entity[hrt[:, 0]], relation[hrt[:, 1]], entity[hrt[:, 2]]
    name = model.model_name
    share = {"linear": d / model.gamma_width, "sqrt": (d / model.gamma_width) ** 0.5, "none": 1.0}
    gamma = model.gamma * share[model.gamma_scaling]
    if name == "transe":
        return gamma - torch.linalg.vector_norm(h[:, 0] + r[:, 0] - t[:, 0], ord=model.p, dim=-1)
    if name == "distmult":
        return (h[:, 0] * r[:, 0] * t[:, 0]).sum(-1)
    if name == "complex":
        hc, rc, tc = (torch.complex(x[:, 0], x[:, 1]) for x in (h, r, t))
        return (hc * rc * tc.conj()).sum(-1).real
    if name == "rotate":
        hc, tc = torch.complex(h[:, 0], h[:, 1]), torch.complex(t[:, 0], t[:, 1])
        rot = torch.polar(torch.ones_like(r[:, 0]), r[:, 0] * model.phase_scale)
        return gamma - (hc * rot - tc).abs().sum(-1)
    if name == "simple":
        return 0.5 * ((h[:, 0] * r[:, 0] * t[:, 1]).sum(-1) + (t[:, 0] * r[:, 1] * h[:, 1]).sum(-1))
    if name == "pairre":
        return gamma - (h[:, 0] * r[:, 0] - t[:, 0] * r[:, 1]).abs().sum(-1)
    raise ValueError(name)


def reference_all(model: CroppableModel, hrt: torch.Tensor) -> torch.Tensor:
    """[B, n] reference scores for every sub-model."""
    return torch.stack([reference_scores(model, hrt, d) for d in model.dims], dim=-1)


def brute_force_ranks(
    score_fn, triples: torch.Tensor, known: set, num_entities: int, side: str, ties: str = "realistic"
) -> torch.Tensor:
    """Filtered ranks [N] by looping over every candidate; score_fn maps [C, 3] triples to [C] scores."""
    ranks = []
    for h, r, t in triples.tolist():
        cands = torch.arange(num_entities)
        if side == "tail":
            batch = torch.stack([torch.full_like(cands, h), torch.full_like(cands, r), cands], 1)
            true = t
        else:
            batch = torch.stack([cands, torch.full_like(cands, r), torch.full_like(cands, t)], 1)
            true = h
        scores = score_fn(batch)
        s_true = scores[true].item()
        higher = equal = 0
        for e in range(num_entities):
            triple = (h, r, e) if side == "tail" else (e, r, t)
            if e == true or triple in known:
                continue
            higher += scores[e].item() > s_true
            equal += scores[e].item() == s_true
        optimistic, pessimistic = 1 + higher, 1 + higher + equal
        ranks.append({"optimistic": optimistic, "pessimistic": pessimistic}.get(ties, (optimistic + pessimistic) / 2))
    return torch.tensor(ranks, dtype=torch.float64)
