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
    kind: str, s_pos: Tensor, s_neg: Tensor, pos_w: Tensor | None, neg_w: Tensor, margin: float = 1.0
) -> Tensor:
    """Per-sub-model loss ``[n]`` of positives ``[B, n]`` and negatives ``[B, K, n]``.

    ``pos_w [B, n]`` weights the positives (summing to 1 over the batch; None: the mean) and
    ``neg_w [B, K, n]`` the negatives of each positive (summing to 1 over a row).
    Logistic kinds: -sum_b pos_w log sigma(s_pos) - mean_b sum_k neg_w log sigma(-s_neg).
    Margin: sum_b pos_w sum_k neg_w max(0, margin - s_pos + s_neg).
    """
    if kind == "margin":
        per_row = ((margin - s_pos.unsqueeze(1) + s_neg).clamp_min(0) * neg_w).sum(1)
        return per_row.mean(0) if pos_w is None else (per_row * pos_w).sum(0)
    pos = F.logsigmoid(s_pos)
    pos = pos.mean(0) if pos_w is None else (pos * pos_w).sum(0)
    neg = (F.logsigmoid(-s_neg) * neg_w).sum(1).mean(0)
    return -pos - neg


def negative_weights(kind: str, s_neg: Tensor, alpha: float) -> Tensor:
    """Weights of each positive's negatives: self-adversarial softmax_k(alpha * s), detached, or uniform."""
    if kind == "self_adversarial" and alpha > 0:
        return torch.softmax(alpha * s_neg.detach(), dim=1)
    return s_neg.new_full((1, 1, 1), 1.0 / s_neg.shape[1])


def independent_loss(scores: Tensor, cfg: LossConfig) -> Tensor:
    """Sum over sub-models of the base loss: each sub-model trained on its own (DT's objective)."""
    s_pos, s_neg = scores[:, 0], scores[:, 1:]
    return base_loss(cfg.kind, s_pos, s_neg, None, negative_weights(cfg.kind, s_neg, cfg.alpha), cfg.margin).sum()


class MEDObjective(nn.Module):
    """MED's loss: L = sum_i ML(i-1, i) + sum_i exp(w3 * d_i / d_n) * EI(i)  (MED.md section 3).

    ML: Huber (delta 1) between sigmoid scores of neighbouring sub-models, gradients into both.
    EI(i), i >= 2: the base loss with positive weights softmax_b(w1 / q_pos) and negative weights
    softmax_k(w2 * q_neg), q the detached sigmoid scores of sub-model i-1; EI(1) is the base loss.
    Switching EI off gives every sub-model the base loss; switching DLW off sets w3 = 0.
    ``w = (w1, w2, w3)`` is a parameter, learned when ``med.weights == "learn"``.
    """

    def __init__(self, dims: Sequence[int], loss: LossConfig, med: MedConfig, fused: bool = True):
        super().__init__()
        self.loss_cfg, self.med_cfg = loss, med
        self.w = nn.Parameter(torch.tensor([med.w1, med.w2, med.w3]), requires_grad=med.weights == "learn")
        self.register_buffer("dim_ratio", torch.tensor([d / dims[-1] for d in dims]), persistent=False)
        # The default objective (logistic base loss, no EI, fixed weights) has a fused forward and backward
        # (_FusedMEDLoss); the general path below is its tested reference.
        self.fusable = fused and loss.kind != "margin" and not med.evolutionary and med.weights == "fixed"

    def forward(self, scores: Tensor, batch: object = None) -> tuple[Tensor, dict[str, Tensor]]:
        cfg, med = self.loss_cfg, self.med_cfg
        n = scores.shape[-1]
        if self.fusable and scores.requires_grad:
            c = torch.exp(self.w[2] * self.dim_ratio) if med.dynamic_weights else self.dim_ratio.new_ones(())
            alpha = cfg.alpha if cfg.kind == "self_adversarial" else 0.0
            loss, hard, mutual = _FusedMEDLoss.apply(scores, c.to(scores.dtype), alpha, med.mutual_learning)
            return loss, {"hard": hard, **({"mutual": mutual} if med.mutual_learning and n > 1 else {})}
        s_pos, s_neg = scores[:, 0], scores[:, 1:]
        w1, w2, w3 = self.w.unbind()
        logs: dict[str, Tensor] = {}

        # hard-label losses of every sub-model, each with its positive and negative weights
        pos_w, neg_w = None, negative_weights(cfg.kind, s_neg, cfg.alpha)
        if med.evolutionary and n > 1:
            prev = scores[..., :-1].detach()
            pos_w, ess = evolutionary_positive_weights(prev[:, 0], w1, med.pos_temperature)
            ei_neg_w = torch.softmax(w2 * torch.sigmoid(prev[:, 1:]), dim=1)
            # sub-model 1 has no smaller neighbour: uniform positives, its own negative weights
            pos_w = torch.cat([torch.full_like(pos_w[:, :1], 1.0 / len(pos_w)), pos_w], dim=1)
            neg_w = torch.cat([neg_w[..., :1].expand_as(s_neg[..., :1]), ei_neg_w], dim=2)
            logs["ess_pos"] = ess.mean() / len(s_pos)
        hard = base_loss(cfg.kind, s_pos, s_neg, pos_w, neg_w, cfg.margin)  # [n]
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


class _FusedMEDLoss(torch.autograd.Function):
    """MED's loss without EI and with fixed weights, its gradient computed in the forward pass.

    L = sum_i c_i base_i + sum_i mean_{b,k} huber(q_i - q_{i+1}), q = sigmoid(s), c_i = exp(w3 d_i / d_n).
    Autograd would keep a dozen [B, 1 + K, n] intermediates and walk them back; here the gradient is
    written in closed form in a few in-place passes (d base / d s_pos = (q - 1) / B, d base / d s_neg =
    p q / B with p the detached negative weights; as q lies in [0, 1], the Huber term is x^2 / 2 with
    x = q_i - q_{i+1}, its gradient x q (1 - q) / (B (1 + K))). Returns (loss, hard part, mutual part).
    """

    @staticmethod
    def forward(ctx, scores: Tensor, c: Tensor, alpha: float, mutual_learning: bool):  # type: ignore[override]
        B, columns, n = scores.shape
        s_pos, s_neg = scores[:, 0], scores[:, 1:]
        q = torch.sigmoid(scores)
        grad = torch.empty_like(scores)
        torch.sub(q[:, 0], 1.0, out=grad[:, 0])
        if alpha > 0:
            p = torch.softmax(s_neg * alpha if alpha != 1.0 else s_neg, dim=1)
        else:
            p = s_neg.new_full((1, 1, 1), 1.0 / s_neg.shape[1])
        # base loss: -mean_b log sigma(s_pos) + mean_b sum_k p softplus(s_neg); softplus(s) = -log sigma(-s),
        # exact in float64 up to its threshold (log1p(e^-50) is below float64's resolution at 50)
        neg_terms = F.softplus(s_neg, threshold=50.0).mul_(p)
        hard = (neg_terms.sum(dim=(0, 1)) - F.logsigmoid(s_pos).sum(0)) / B
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
        return (grad if unit else grad * grad_loss), None, None, None


def evolutionary_positive_weights(s_prev: Tensor, w1: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """EI positive weights ``softmax_b(w1 / q)``, q = sigmoid(s_prev), and their effective sample size.

    1 / q = 1 + exp(-s) is huge where the smaller model scores a positive very low; the softmax is
    computed in float64 from the logits directly (shift-invariant), so nothing overflows for s > -700.
    The effective number of weighted positives 1 / sum_b u_b^2 is returned per sub-model to watch for
    collapse onto a handful of triples.
    """
    inv_q = 1.0 + torch.exp((-s_prev.double()).clamp_max(_MAX_NEG_SCORE))
    weights = torch.softmax(w1.double() * inv_q / temperature, dim=0)
    ess = 1.0 / weights.detach().square().sum(0)
    return weights.to(s_prev.dtype), ess


def soft_loss(scores: Tensor, target: Tensor) -> Tensor:
    """Per-triple Huber (delta 1) between sigmoid scores and a detached target's sigmoid scores."""
    return F.huber_loss(torch.sigmoid(scores), torch.sigmoid(target.detach()), reduction="none", delta=1.0)


def bkd_loss(student: Tensor, teacher: Tensor, cfg: LossConfig, soft_weight: float) -> Tensor:
    """BKD: the student's base loss + soft_weight * mean over all B(1+K) triples of Huber(q_S, q_T).

    ``student`` and ``teacher`` are scores ``[B, 1 + K, n]`` of the same triples; the teacher is a target.
    """
    return independent_loss(student, cfg) + soft_weight * soft_loss(student, teacher).mean()


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
