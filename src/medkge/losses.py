"""Training objectives: the base losses, MED's objective (ML + EI + DLW), the distillation losses of the
baselines (BKD, DualDE) and regularisers.

All losses take the scores of one batch for every sub-model, ``scores [B, 1 + K, n]``: column 0 holds the
B positive triples, columns 1..K their negatives, the last axis the n sub-models (MED.md section 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .config import LossConfig, MedConfig

# exp(-s) for s below -700 overflows float64; positives scored that badly all get the top EI weight.
_MAX_NEG_SCORE = 700.0


def base_loss(
    kind: str,
    s_pos: Tensor,
    s_neg: Tensor,
    pos_w: Tensor | None,
    neg_w: Tensor,
    margin: float = 1.0,
    row_w: Tensor | None = None,
) -> Tensor:
    """Per-sub-model loss ``[n]`` of positives ``[B, n]`` and negatives ``[B, K, n]``.

    ``pos_w [B, n]`` weights the positives (summing to 1 over the batch; None: the mean) and
    ``neg_w [B, K, n]`` the negatives of each positive (summing to 1 over a row); ``row_w [B]`` (mean 1:
    subsampling) weights each positive with its negatives in the means over the batch.
    Logistic kinds: -sum_b pos_w log sigma(s_pos) - mean_b sum_k neg_w log sigma(-s_neg).
    Margin: sum_b pos_w sum_k neg_w max(0, margin - s_pos + s_neg).
    """
    rows = (lambda x: x) if row_w is None else (lambda x: x * row_w.unsqueeze(1))
    if kind == "margin":
        per_row = rows(((margin - s_pos.unsqueeze(1) + s_neg).clamp_min(0) * neg_w).sum(1))
        return per_row.mean(0) if pos_w is None else (per_row * pos_w).sum(0)
    pos = F.logsigmoid(s_pos)
    pos = rows(pos).mean(0) if pos_w is None else (pos * pos_w).sum(0)
    neg = rows((F.logsigmoid(-s_neg) * neg_w).sum(1)).mean(0)
    return -pos - neg


def negative_weights(kind: str, s_neg: Tensor, alpha: float) -> Tensor:
    """Weights of each positive's negatives: self-adversarial softmax_k(alpha * s), detached, or uniform."""
    if kind == "self_adversarial" and alpha > 0:
        return torch.softmax(alpha * s_neg.detach(), dim=1)
    return s_neg.new_full((1, 1, 1), 1.0 / s_neg.shape[1])


def independent_loss(scores: Tensor, cfg: LossConfig, weights: Tensor | None = None) -> Tensor:
    """Sum over sub-models of the base loss: each sub-model trained on its own (DT's objective); ``weights``
    are the batch's subsampling weights (Batch.weights)."""
    s_pos, s_neg = scores[:, 0], scores[:, 1:]
    neg_w = negative_weights(cfg.kind, s_neg, cfg.alpha)
    return base_loss(cfg.kind, s_pos, s_neg, None, neg_w, cfg.margin, weights).sum()


class MEDObjective(nn.Module):
    """MED's loss: L = sum_i ML(i-1, i) + sum_i exp(w3 * d_i / d_n) * EI(i)  (MED.md section 3).

    ML: Huber (delta 1) between sigmoid scores of neighbouring sub-models, gradients into both.
    EI(i), i >= 2: the base loss with positive and negative weights from the detached scores of
    sub-model i-1 (:func:`evolutionary_weights`; ``med.ei_positives`` and ``med.ei_negatives`` pick the
    reading); EI(1) is the base loss. Switching EI off gives every sub-model the base loss; switching DLW
    off sets w3 = 0. ``w = (w1, w2, w3)`` is a parameter, learned when ``med.weights == "learn"``.
    """

    def __init__(self, dims: Sequence[int], loss: LossConfig, med: MedConfig, fused: bool = True):
        super().__init__()
        self.loss_cfg, self.med_cfg = loss, med
        self.w = nn.Parameter(torch.tensor([med.w1, med.w2, med.w3]), requires_grad=med.weights == "learn")
        self.register_buffer("dim_ratio", torch.tensor([d / dims[-1] for d in dims]), persistent=False)
        # With fixed weights the logistic objective has a fused forward and backward (_FusedMEDLoss), EI's
        # weights (detached) computed beforehand; the general path below is its tested reference.
        self.fusable = fused and loss.kind != "margin" and med.weights == "fixed"

    def forward(self, scores: Tensor, batch: object = None) -> tuple[Tensor, dict[str, Tensor]]:
        cfg, med = self.loss_cfg, self.med_cfg
        n = scores.shape[-1]
        row_w = getattr(batch, "weights", None)  # subsampling (config refuses it with EI)
        alpha = cfg.alpha if cfg.kind == "self_adversarial" else 0.0
        ei = med.evolutionary and n > 1
        if self.fusable and scores.requires_grad:
            c = torch.exp(self.w[2] * self.dim_ratio) if med.dynamic_weights else self.dim_ratio.new_ones(())
            pos_w = neg_w = None
            logs: dict[str, Tensor] = {}
            if ei:  # EI's weights are detached: computed here, used as constants by the fused loss
                with torch.no_grad():
                    s = scores.detach()
                    # the sub-models' own negative weights: all of them, or only sub-model 1's
                    own = negative_weights(cfg.kind, s[:, 1:] if med.ei_negatives == "own" else s[:, 1:, :1], cfg.alpha)
                    pos_w, neg_w, logs = evolutionary_weights(s, med, self.w[0], self.w[1], own)
            elif row_w is not None:  # subsampling: each row's positive and negatives weighted
                B = scores.shape[0]
                pos_w = (row_w / B).unsqueeze(1).expand(B, n)
                with torch.no_grad():
                    neg_w = negative_weights(cfg.kind, scores.detach()[:, 1:], alpha) * row_w.view(B, 1, 1)
            loss, hard, mutual = _FusedMEDLoss.apply(
                scores, c.to(scores.dtype), alpha, med.mutual_learning, pos_w, neg_w
            )
            mutual_log = {"mutual": mutual} if med.mutual_learning and n > 1 else {}
            return loss, {"hard": hard, **mutual_log, **logs}
        s_pos, s_neg = scores[:, 0], scores[:, 1:]
        w1, w2, w3 = self.w.unbind()
        logs = {}

        # hard-label losses of every sub-model, each with its positive and negative weights
        pos_w, neg_w = None, negative_weights(cfg.kind, s_neg, cfg.alpha)
        if ei:
            pos_w, neg_w, logs = evolutionary_weights(scores.detach(), med, w1, w2, neg_w)
        hard = base_loss(cfg.kind, s_pos, s_neg, pos_w, neg_w, cfg.margin, row_w)  # [n]
        if med.dynamic_weights:
            hard = hard * torch.exp(w3 * self.dim_ratio)
        loss = hard.sum()
        logs["hard"] = hard.detach().sum()

        if med.mutual_learning and n > 1:
            q = torch.sigmoid(scores)
            mutual = F.huber_loss(q[..., :-1], q[..., 1:], reduction="none", delta=1.0).mean(dim=(0, 1))
            loss = loss + mutual.sum()
            logs["mutual"] = mutual.detach().sum()
        return loss, logs


def evolutionary_weights(
    scores: Tensor, med: MedConfig, w1: Tensor, w2: Tensor, own_neg_w: Tensor
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """EI's weights of every sub-model from the detached scores ``[B, 1 + K, n]`` (MED.md section 3).

    ``own_neg_w`` (broadcastable to ``[B, K, n]``) are the sub-models' own negative weights
    (:func:`negative_weights`). Returns positive weights ``[B, n]`` (summing to 1 over the batch), negative
    weights (summing to 1 over a row) and the logs ``ess_pos``, the effective number of weighted positives
    1 / sum_b u_b^2 as a fraction of the batch, averaged over sub-models 2..n, and ``ess_neg``, the same
    for each row of EI's negative weights as a fraction of K. Sub-model 1 has no smaller neighbour: uniform
    positives and its own negative weights. ``w1``, ``w2`` may require gradients (``med.weights: learn``).
    """
    B, K = scores.shape[0], scores.shape[1] - 1
    prev = scores[..., :-1].detach()
    pos_w, ess = evolutionary_positive_weights(prev[:, 0], w1, med.pos_temperature, med.ei_positives)
    pos_w = torch.cat([torch.full_like(pos_w[:, :1], 1.0 / B), pos_w], dim=1)
    logs = {"ess_pos": ess.mean() / B}
    if med.ei_negatives == "own":  # EI's positive weights only
        return pos_w, own_neg_w, logs
    # paper-literal: softmax_k(w2 * sigmoid(s)), nearly uniform for w2 = 1 as sigmoid(s) lies in [0, 1];
    # raw: RotatE's self-adversarial weights softmax_k(w2 * s) (its eq. 5) on sub-model i-1's scores
    logits = torch.sigmoid(prev[:, 1:]) if med.ei_negatives == "paper-literal" else prev[:, 1:]
    ei_neg = torch.softmax(w2 * logits, dim=1)
    logs["ess_neg"] = (1.0 / ei_neg.detach().square().sum(1)).mean() / K
    first = own_neg_w[..., :1].expand(B, K, 1).to(ei_neg.dtype)
    return pos_w, torch.cat([first, ei_neg], dim=2), logs


class _FusedMEDLoss(torch.autograd.Function):
    """MED's logistic loss with fixed weights, its gradient computed in the forward pass.

    L = sum_i c_i base_i + sum_i mean_{b,k} huber(q_i - q_{i+1}), q = sigmoid(s), c_i = exp(w3 d_i / d_n).
    Autograd would keep a dozen [B, 1 + K, n] intermediates and walk them back; here the gradient is
    written in closed form in a few in-place passes (d base / d s_pos = (q - 1) u with u the positive
    weights, 1 / B without EI; d base / d s_neg = p q / B with p the detached negative weights; as q lies
    in [0, 1], the Huber term is x^2 / 2 with x = q_i - q_{i+1}, its gradient x q (1 - q) / (B (1 + K))).
    ``pos_w [B, n]`` and ``neg_w [B, K, n]`` are EI's detached weights (None: uniform positives and the
    self-adversarial weights of each sub-model's own scores). Returns (loss, hard part, mutual part).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        scores: Tensor,
        c: Tensor,
        alpha: float,
        mutual_learning: bool,
        pos_w: Tensor | None = None,
        neg_w: Tensor | None = None,
    ):
        B, columns, n = scores.shape
        s_pos, s_neg = scores[:, 0], scores[:, 1:]
        q = torch.sigmoid(scores)
        grad = torch.empty_like(scores)
        torch.sub(q[:, 0], 1.0, out=grad[:, 0])
        if neg_w is not None:
            p = neg_w
        elif alpha > 0:
            p = torch.softmax(s_neg * alpha if alpha != 1.0 else s_neg, dim=1)
        else:
            p = s_neg.new_full((1, 1, 1), 1.0 / s_neg.shape[1])
        # base loss: -mean_b log sigma(s_pos) + mean_b sum_k p softplus(s_neg); softplus(s) = -log sigma(-s),
        # exact in float64 up to its threshold (log1p(e^-50) is below float64's resolution at 50)
        neg_terms = F.softplus(s_neg, threshold=50.0).mul_(p)
        if pos_w is None:
            hard = (neg_terms.sum(dim=(0, 1)) - F.logsigmoid(s_pos).sum(0)) / B
        else:  # EI: weighted positives; the gradient is scaled by B here and by 1 / B below
            hard = neg_terms.sum(dim=(0, 1)) / B - (F.logsigmoid(s_pos) * pos_w).sum(0)
            grad[:, 0].mul_(pos_w).mul_(B)
        torch.mul(q[:, 1:], p, out=grad[:, 1:])
        grad.mul_(c / B)
        hard = (hard * c).sum()
        mutual = scores.new_zeros(())
        if mutual_learning and n > 1:
            x = q[..., :-1] - q[..., 1:]
            flat = x.reshape(-1)  # x follows the layout of scores, which may be strided
            mutual = torch.dot(flat, flat) / (2 * B * columns)
            slope = q.addcmul_(q, q, value=-1.0)  # q (1 - q), overwrites q
            grad[..., :-1].addcmul_(x, slope[..., :-1], value=1.0 / (B * columns))
            grad[..., 1:].addcmul_(x, slope[..., 1:], value=-1.0 / (B * columns))
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(hard, mutual)
        return hard + mutual, hard, mutual

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, *_: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        unit = grad_loss.device.type == "cpu" and bool(grad_loss == 1.0)  # no device sync on a GPU
        return (grad if unit else grad * grad_loss), None, None, None, None, None


def evolutionary_positive_weights(
    s_prev: Tensor, w1: Tensor, temperature: float = 1.0, reading: str = "paper-literal"
) -> tuple[Tensor, Tensor]:
    """EI positive weights ``[B, m]`` from the smaller models' scores ``s_prev [B, m]``, and their
    effective sample size ``1 / sum_b u_b^2`` per column (to watch for collapse onto a handful of triples).

    Every reading is a softmax over the batch of ``w1 * f(q) / temperature``, q = sigmoid(s_prev), rising
    where q is low; the weights sum to 1 (B times them have mean one):

    - "paper-literal": f = 1 / q (MED.md section 3). 1 / q = 1 + exp(-s) is huge where a positive is
      scored very low, so the weights collapse onto the worst positives.
    - "power": f = -log q, i.e. weights proportional to q^(-w1 / temperature): 1 / q itself normalised to
      mean one at w1 = temperature = 1; unbounded, but polynomial in 1 / q rather than exponential.
    - "error": f = 1 - q: bounded, no weight more than exp(w1 / temperature) times another.
    - "uniform": 1 / B (EI's negative weights only).

    Computed in float64 from the logits (shift-invariant): nothing overflows for s > -700.
    """
    s = s_prev.double()
    if reading == "paper-literal":
        f = 1.0 + torch.exp((-s).clamp_max(_MAX_NEG_SCORE))
    elif reading == "power":
        f = F.softplus(-s)
    elif reading == "error":
        f = 1.0 - torch.sigmoid(s)
    elif reading == "uniform":
        f = torch.zeros_like(s)
    else:
        raise ValueError(f"unknown EI positive reading {reading!r}")
    weights = torch.softmax(w1.double() * f / temperature, dim=0)
    ess = 1.0 / weights.detach().square().sum(0)
    return weights.to(s_prev.dtype), ess


def soft_loss(scores: Tensor, target: Tensor) -> Tensor:
    """Per-triple Huber (delta 1) between sigmoid scores and a detached target's sigmoid scores."""
    return F.huber_loss(torch.sigmoid(scores), torch.sigmoid(target.detach()), reduction="none", delta=1.0)


def bkd_loss(
    student: Tensor, teacher: Tensor, cfg: LossConfig, soft_weight: float, weights: Tensor | None = None
) -> Tensor:
    """BKD: the student's base loss + soft_weight * mean over all B(1+K) triples of Huber(q_S, q_T).

    ``student`` and ``teacher`` are scores ``[B, 1 + K, n]`` of the same triples; the teacher is a target.
    """
    return independent_loss(student, cfg, weights) + soft_weight * soft_loss(student, teacher).mean()


class DualDELoss(nn.Module):
    """DualDE's loss of one model learning from another (Zhu et al. 2022; MED.md section 6).

    Every triple mixes a soft term Huber(q_own, q_other) and the hard term (-log sigma(s) for a positive,
    -log sigma(-s) for a negative), weighted by how much the other model's score deserves trust: a
    learnable sigmoid ``t = 1 / (1 + exp(-a (x + b)))`` of the other model's score x (a = 1, b = 0 at
    start). A positive takes ``t`` of the soft term (a high score is a reliable soft label), a negative
    ``1 - t`` (a low score is). Negatives are summed with the self-adversarial weights of the own scores
    (``loss.alpha``), positives averaged, as in the base loss.
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        other = other.detach()
        trust = torch.sigmoid(self.a * (other + self.b))
        soft_w = torch.cat([trust[:, :1], 1.0 - trust[:, 1:]], dim=1)
        hard = torch.cat([-F.logsigmoid(own[:, :1]), -F.logsigmoid(-own[:, 1:])], dim=1)
        per_triple = soft_w * soft_loss(own, other) + (1.0 - soft_w) * hard
        neg_w = negative_weights(self.cfg.kind, own[:, 1:], self.cfg.alpha)
        return (per_triple[:, 0].mean(0) + (per_triple[:, 1:] * neg_w).sum(1).mean(0)).sum()


def regularization(kind: str, rows: Sequence[Tensor], complex_parts: Sequence[bool]) -> Tensor:
    """L2 (mean squared norm) or N3 (mean cubed moduli, Lacroix et al. 2018) of a batch's rows.

    ``rows`` are ``[B, parts, D]`` tensors; where ``complex_parts`` is set, parts are (re, im) and N3
    uses the complex modulus.
    """
    total = rows[0].new_zeros(())
    for x, is_complex in zip(rows, complex_parts, strict=True):
        if kind == "l2":
            total = total + x.square().sum(dim=(-2, -1)).mean()
        elif kind == "n3":
            modulus = x.square().sum(-2).sqrt() if is_complex else x.abs()
            total = total + modulus.pow(3).sum(dim=tuple(range(1, modulus.ndim))).mean()
    return total
