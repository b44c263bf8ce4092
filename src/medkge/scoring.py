"""Score functions of the six models, written once at full width; every sub-model is a prefix of them.

Every model here scores a triple (h, r, t) as

    score = finish( sum_k kernel(query, candidate)_k )        k = 0 .. D-1, the coordinates

For tail prediction the *query* folds head and relation together (TransE: h + r, RotatE: h * e^(i theta))
and the *candidate* is the tail; head prediction uses the mirrored query (TransE: t - r, RotatE:
t * e^(-i theta)), so both directions cost the same. The kernel is one of four per-coordinate terms
(|q - c|, (q - c)^2, complex |q - c|, q * c). Because the score is a function of a sum over coordinates,
the scores of *all* sub-models come from one pass: compute the per-coordinate terms at full width, sum
them within the segments between consecutive dims, take a cumulative sum over segments and read it at
each d_i (:class:`Prefix`). Cropping a model is slicing its tables.

Tensor layout: an entity row is ``[parts, D]`` and a relation row ``[parts, D]``. Complex models keep
(real, imaginary) as two parts, so ``row[..., :d]`` is a complex prefix of d coordinates; SimplE keeps
(head role, tail role) for entities and (r, r_inverse) for relations; PairRE keeps (r_head, r_tail).
All functions broadcast over leading axes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .errors import MedkgeError

Kernel = Literal["l1", "sq", "cabs", "dot"]
Side = Literal["head", "tail"]
# Squared moduli below this are clamped before the square root so that its gradient stays finite
# when a candidate coincides with the query (a self-loop under a zero rotation, say).
_TINY = 1e-30


def cmul(a: Tensor, b: Tensor) -> Tensor:
    """Complex product of ``[..., 2, D]`` tensors holding (real, imaginary) parts."""
    a_re, a_im = a.unbind(-2)
    b_re, b_im = b.unbind(-2)
    return torch.stack((a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re), dim=-2)


def conj(a: Tensor) -> Tensor:
    """Complex conjugate of a ``[..., 2, D]`` tensor."""
    return torch.stack((a[..., 0, :], -a[..., 1, :]), dim=-2)


def rotation(theta: Tensor) -> Tensor:
    """Unit complex numbers e^(i theta) as ``[..., 2, D]`` from phases ``[..., 1, D]``."""
    return torch.cat((theta.cos(), theta.sin()), dim=-2)


@dataclass(frozen=True)
class Interaction:
    """How one model turns (h, r, t) rows into per-coordinate terms and a score."""

    name: str
    entity_parts: int
    relation_parts: int
    kernel: Kernel
    tail_query: Callable[[Tensor, Tensor], Tensor]  # (h, r) -> query for ranking tails
    head_query: Callable[[Tensor, Tensor], Tensor]  # (r, t) -> query for ranking heads
    finish: Callable[..., Tensor]  # (prefix sums, gamma, inplace=False) -> score
    # Candidate transforms that depend on the relation (PairRE); None means the entity row itself.
    tail_candidate: Callable[[Tensor, Tensor], Tensor] | None = None  # (t, r) -> candidate
    head_candidate: Callable[[Tensor, Tensor], Tensor] | None = None  # (h, r) -> candidate
    uses_gamma: bool = True
    normalizes_entities: bool = False
    complex_entities: bool = False  # entity parts are (real, imaginary)
    phase_relations: bool = False  # relation rows are rotation angles (modulus one), not coordinates

    @property
    def sum_sign(self) -> int:
        """+1 if a larger sum of terms means a higher score (bilinear models), -1 for distances."""
        return -1 if self.uses_gamma else 1

    @property
    def finish_slope(self) -> float | None:
        """d finish / d sums where that is a constant (gamma - s: -1), None otherwise (gamma - sqrt(s)).

        training_scores folds a constant slope into its backward pass and leaves other finishes to autograd.
        """
        return _FINISH_SLOPES.get(self.finish)

    @property
    def candidates_depend_on_relation(self) -> bool:
        return self.tail_candidate is not None or self.head_candidate is not None

    def query(self, side: Side, anchor: Tensor, r: Tensor) -> Tensor:
        """The query for ranking ``side``: anchor is the head when ranking tails, the tail otherwise."""
        return self.tail_query(anchor, r) if side == "tail" else self.head_query(r, anchor)

    def candidate(self, side: Side, e: Tensor, r: Tensor) -> Tensor:
        transform = self.tail_candidate if side == "tail" else self.head_candidate
        return e if transform is None else transform(e, r)

    def terms(self, query: Tensor, candidate: Tensor, inplace: bool = False) -> Tensor:
        """Per-coordinate terms ``[..., D]`` of the kernel, broadcasting query against candidate."""
        return kernel_terms(self.kernel, query, candidate, inplace)

    def terms_hrt(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """Per-coordinate terms of triples (the definition; used as the reference in tests)."""
        return self.terms(self.tail_query(h, r), self.candidate("tail", t, r))


def kernel_terms(kernel: Kernel, q: Tensor, c: Tensor, inplace: bool = False) -> Tensor:
    """Per-coordinate terms of ``q`` against ``c`` (``[..., parts, D]`` each) as ``[..., D]``.

    ``inplace`` (only without gradients) reuses the first intermediate: half the memory traffic.
    """
    if kernel == "dot":
        return _sum_parts(q * c)
    diff = q - c
    if kernel == "l1":
        return _sum_parts(diff.abs_() if inplace else diff.abs())
    if kernel == "sq":
        return _sum_parts(diff.square_() if inplace else diff.square())
    # cabs: complex modulus of the difference, parts are (real, imaginary)
    if inplace:
        return _sum_parts(diff.square_()).sqrt_()
    return _sum_parts(diff.square()).clamp_min(_TINY).sqrt()


def _sum_parts(x: Tensor) -> Tensor:
    return x.squeeze(-2) if x.shape[-2] == 1 else x.sum(-2)


# finish(s, gamma, inplace): in place only where no gradient is needed (evaluation blocks)
def _gamma_minus(s: Tensor, gamma: float, inplace: bool = False) -> Tensor:
    return s.neg_().add_(gamma) if inplace else gamma - s


def _gamma_minus_sqrt(s: Tensor, gamma: float, inplace: bool = False) -> Tensor:
    return s.sqrt_().neg_().add_(gamma) if inplace else gamma - s.clamp_min(_TINY).sqrt()


def _identity(s: Tensor, gamma: float, inplace: bool = False) -> Tensor:
    return s


def _half(s: Tensor, gamma: float, inplace: bool = False) -> Tensor:
    return s.mul_(0.5) if inplace else 0.5 * s


# the finishes that are affine in the sums, with their constant slope (Interaction.finish_slope)
_FINISH_SLOPES: dict[Callable[..., Tensor], float] = {_gamma_minus: -1.0, _identity: 1.0, _half: 0.5}


def _simple_tail_query(h: Tensor, r: Tensor) -> Tensor:
    # s = 1/2 (<hH, r, tT> + <tH, r_inv, hT>): the coefficients of (tH, tT)
    return torch.stack((r[..., 1, :] * h[..., 1, :], r[..., 0, :] * h[..., 0, :]), dim=-2)


def _simple_head_query(r: Tensor, t: Tensor) -> Tensor:
    # the coefficients of (hH, hT)
    return torch.stack((r[..., 0, :] * t[..., 1, :], r[..., 1, :] * t[..., 0, :]), dim=-2)


def _pairre_head_side(e: Tensor, r: Tensor) -> Tensor:
    return e * r[..., 0:1, :]


def _pairre_tail_side(e: Tensor, r: Tensor) -> Tensor:
    return e * r[..., 1:2, :]


def _rotate_tail_query(h: Tensor, r: Tensor) -> Tensor:
    return cmul(h, rotation(r))


def _rotate_head_query(r: Tensor, t: Tensor) -> Tensor:
    # |h e^(i theta) - t| = |h - t e^(-i theta)| because |e^(i theta)| = 1
    return cmul(t, rotation(-r))


MODELS = ("transe", "distmult", "complex", "rotate", "simple", "pairre")


def get_interaction(name: str, p: int = 1) -> Interaction:
    """The interaction of model ``name`` (``p`` is TransE's norm, 1 or 2)."""
    if name == "transe":
        if p not in (1, 2):
            raise MedkgeError(f"model.p: TransE's norm must be 1 or 2, got {p}")
        return Interaction(
            "transe",
            1,
            1,
            "l1" if p == 1 else "sq",
            tail_query=lambda h, r: h + r,
            head_query=lambda r, t: t - r,
            finish=_gamma_minus if p == 1 else _gamma_minus_sqrt,
        )
    if name == "distmult":
        return Interaction("distmult", 1, 1, "dot", lambda h, r: h * r, lambda r, t: r * t, _identity, uses_gamma=False)
    if name == "complex":
        # Re(<h, r, conj(t)>) = <h*r, t> over (re, im) = <conj(r)*t, h> over (re, im)
        return Interaction(
            "complex",
            2,
            2,
            "dot",
            cmul,
            lambda r, t: cmul(conj(r), t),
            _identity,
            uses_gamma=False,
            complex_entities=True,
        )
    if name == "rotate":
        return Interaction(
            "rotate",
            2,
            1,
            "cabs",
            _rotate_tail_query,
            _rotate_head_query,
            _gamma_minus,
            complex_entities=True,
            phase_relations=True,
        )
    if name == "simple":
        return Interaction("simple", 2, 2, "dot", _simple_tail_query, _simple_head_query, _half, uses_gamma=False)
    if name == "pairre":
        return Interaction(
            "pairre",
            1,
            2,
            "l1",
            tail_query=_pairre_head_side,
            head_query=lambda r, t: _pairre_tail_side(t, r),
            finish=_gamma_minus,
            tail_candidate=_pairre_tail_side,
            head_candidate=_pairre_head_side,
            normalizes_entities=True,
        )
    raise MedkgeError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


class Prefix:
    """Reads per-coordinate terms ``[..., D]`` as prefix sums at each of ``dims``: ``[..., n]``.

    Coordinates are summed within segments of width g = gcd(dims) (cheap, like one full-width sum),
    then a cumulative sum over the D / g segments gives every prefix; we read it at d_i / g - 1.

    With ``interleaved=True`` the coordinates are expected in the order of :meth:`interleave`
    (coordinate j of every segment, then j + 1, ...), which makes the segment sums a sum of g
    contiguous rows instead of many short sums: evaluation stores its tables that way.
    """

    def __init__(self, dims: Sequence[int], interleaved: bool = False):
        self.dims = check_dims(dims)
        self.width = self.dims[-1]
        self.segment = reduce(math.gcd, self.dims)
        self.segments = self.width // self.segment
        self.interleaved = interleaved and self.segment > 1 and self.segments > 1
        wanted = [d // self.segment - 1 for d in self.dims]
        self.index = None if wanted == list(range(self.segments)) else torch.tensor(wanted)

    def interleave(self, table: Tensor) -> Tensor:
        """A copy of ``table [..., D]`` with its coordinates in interleaved order (see above)."""
        if not self.interleaved:
            return table
        table = table[..., : self.width]
        return table.unflatten(-1, (self.segments, self.segment)).transpose(-1, -2).flatten(-2).contiguous()

    def __call__(self, terms: Tensor, inplace: bool = False) -> Tensor:
        sums = self.segment_sums(terms)
        return self.read(sums, dim=-1, inplace=inplace)

    def segment_sums(self, terms: Tensor) -> Tensor:
        """Sums of the terms within each segment: ``[..., D]`` -> ``[..., D / g]``."""
        if terms.shape[-1] != self.width:
            terms = terms[..., : self.width]
        if self.segment == 1:
            return terms
        if self.interleaved:
            return terms.unflatten(-1, (self.segment, self.segments)).sum(-2)
        return terms.unflatten(-1, (self.segments, self.segment)).sum(-1)

    def read(self, sums: Tensor, dim: int, inplace: bool = False) -> Tensor:
        """Prefix sums along axis ``dim`` of segment sums, read at the dims."""
        outer = dim not in (-1, sums.ndim - 1)
        if self.segments > 1 and (not outer or (sums.requires_grad and torch.is_grad_enabled())):
            sums = sums.cumsum_(dim) if inplace else sums.cumsum(dim)
        elif self.segments > 1:
            # cumsum along an outer axis walks memory with a stride; adding whole slices in turn gives the
            # same sums (in the same order), several times faster on the CPU (DistMult's evaluation of 64
            # sub-models on WN18RR: 78 s before, 8-10 s after; benchmarks/README.md)
            sums = sums if inplace else sums.clone()
            slices = sums.unbind(dim)
            for previous, current in itertools.pairwise(slices):
                current.add_(previous)
        if self.index is not None:
            sums = sums.index_select(dim, self.index.to(sums.device))
        return sums


def plain_scores(it: Interaction, query: Tensor, candidate: Tensor, prefix: Prefix, margins: float | Tensor) -> Tensor:
    """``it.finish(prefix(it.terms(query, candidate)), margins)`` through autograd: the reference of
    :func:`training_scores` (and the training path with ``train.fused_kernels: false``)."""
    return it.finish(prefix(it.terms(query, candidate)), margins)


def training_scores(
    it: Interaction, query: Tensor, candidate: Tensor, prefix: Prefix, margins: float | Tensor
) -> Tensor:
    """``it.finish(prefix(it.terms(query, candidate)), margins)`` with a leaner backward pass: the training path.

    Autograd would keep the [..., D] differences and terms alive between the passes and, in the
    backward pass, copy the segment gradients out to [..., D] before multiplying; here the forward pass
    keeps only its inputs and the backward pass recomputes the difference once and scales it in place
    by each segment's gradient, broadcast (:class:`_PrefixTerms`). The plain composition, which runs
    where no gradient is needed, is the tested reference.
    """
    needs_grad = torch.is_grad_enabled() and (query.requires_grad or candidate.requires_grad)
    if not needs_grad or prefix.interleaved:
        sums = prefix(it.terms(query, candidate, inplace=not needs_grad), inplace=not needs_grad)
        return it.finish(sums, margins, inplace=not needs_grad)
    if it.finish_slope is None:  # a finish that is not affine goes through autograd
        return it.finish(_PrefixTerms.apply(query, candidate, it, prefix, None), margins)
    return _PrefixTerms.apply(query, candidate, it, prefix, margins)


class _PrefixTerms(torch.autograd.Function):
    """Prefix sums of an interaction's terms (finished, unless ``margins`` is None); see training_scores."""

    @staticmethod
    def forward(ctx, query: Tensor, candidate: Tensor, it: Interaction, prefix: Prefix, margins):  # type: ignore[override]
        ctx.save_for_backward(query, candidate)
        ctx.it, ctx.prefix = it, prefix
        ctx.slope = 1.0 if margins is None else it.finish_slope
        sums = prefix(it.terms(query, candidate, inplace=True), inplace=True)
        return sums if margins is None else it.finish(sums, margins, inplace=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        query, candidate = ctx.saved_tensors
        kernel, prefix, slope = ctx.it.kernel, ctx.prefix, ctx.slope
        q, c = query[..., : prefix.width], candidate[..., : prefix.width]
        # d score_i / d segment_j = slope for j <= d_i / g - 1: scatter, then sums from the right
        if prefix.index is not None:
            grad = grad.new_zeros(*grad.shape[:-1], prefix.segments).index_add_(-1, prefix.index.to(grad.device), grad)
        # sum_{i >= j} g_i by a cumulative sum from the right (total - cumsum + g would cancel digits)
        segment = grad.flip(-1).cumsum(-1).flip(-1) if prefix.segments > 1 else grad
        segment = segment * slope if slope != 1.0 else segment
        # one gradient per coordinate, as a broadcast view: [..., 1 (parts), G, 1] against [..., parts, G, g]
        scale = segment.unsqueeze(-2).unsqueeze(-1)
        if kernel == "dot":  # d (q c) / d c = q, d / d q = c
            grad_c = _times(q, scale) if ctx.needs_input_grad[1] else None
            grad_q = _times(c, scale) if ctx.needs_input_grad[0] else None
        else:
            diff = c - q  # d / d c = kernel'(c - q), d / d q = -that
            segments = (scale.shape[-2], -1)
            if kernel == "cabs":  # (c - q) / |c - q| per complex coordinate, the scale folded into 1 / |c - q|
                re, im = diff.unbind(-2)
                inverse = (re * re).addcmul_(im, im).clamp_min_(_TINY).rsqrt_().unsqueeze(-2)
                inverse.unflatten(-1, segments).mul_(scale)
                diff.mul_(inverse)
            else:
                diff.sign_() if kernel == "l1" else diff.mul_(2.0)
                diff.unflatten(-1, segments).mul_(scale)
            grad_q = _reduce_like(diff, query).neg() if ctx.needs_input_grad[0] else None
            grad_c = diff
        return _reduce_like(grad_q, query), _reduce_like(grad_c, candidate), None, None, None


def _times(x: Tensor, scale: Tensor) -> Tensor:
    """``x [..., parts, G * g]`` times a per-segment ``scale [..., 1, G, 1]``, broadcast."""
    return (x.unflatten(-1, (scale.shape[-2], -1)) * scale).flatten(-2)


def _reduce_like(grad: Tensor | None, like: Tensor) -> Tensor | None:
    """A gradient summed over the axes along which ``like`` was broadcast, zero past the widest dim."""
    if grad is None:
        return None
    if grad.ndim > like.ndim:
        grad = grad.sum(tuple(range(grad.ndim - like.ndim)))
    axes = tuple(i for i in range(like.ndim - 1) if like.shape[i] == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axes, keepdim=True)
    if grad.shape[-1] != like.shape[-1]:
        grad = torch.nn.functional.pad(grad, (0, like.shape[-1] - grad.shape[-1]))
    return grad


def check_dims(dims: Sequence[int] | range) -> tuple[int, ...]:
    """Validate a dims list: positive integers, strictly increasing."""
    try:
        values = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise MedkgeError(f"dims must be a list of integers, got {dims!r}") from None
    if not values:
        raise MedkgeError("dims must not be empty")
    if any(d < 1 for d in values):
        raise MedkgeError(f"dims must be positive, got {list(values)}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise MedkgeError(f"dims must be strictly increasing, got {list(values)}")
    return values


def dot_block(query: Tensor, candidates: Tensor, prefix: Prefix) -> Tensor:
    """Prefix sums of <query, candidate> for every query against every candidate, by matrix products.

    query ``[Q, parts, D]``, candidates ``[C, parts, D]`` -> ``[Q, C, n]``. One batched product per
    segment (the whole width at once when there is one segment), then a cumulative sum over segments.
    """
    return dot_block_batched(query.unsqueeze(0), candidates.unsqueeze(0), prefix)[0]


def dot_block_batched(query: Tensor, candidates: Tensor, prefix: Prefix) -> Tensor:
    """:func:`dot_block` for a batch of blocks: ``[B, Q, parts, D]`` against ``[B, C, parts, D]`` -> ``[B, Q, C, n]``.

    Differentiable (training with shared negatives scores each chunk's queries against its negatives so).
    """
    width, g, segments = prefix.width, prefix.segment, prefix.segments
    q = query[..., :width]
    c = candidates[..., :width]
    blocks, num_q, parts = q.shape[0], q.shape[1], q.shape[-2]
    num_c = c.shape[1]
    if segments == 1:
        return (q.reshape(blocks, num_q, -1) @ c.reshape(blocks, num_c, -1).transpose(1, 2)).unsqueeze(-1)
    # [B, Q, parts, G, g] -> [B * G, Q, parts * g] and [B * G, parts * g, C]
    qs = q.unflatten(-1, (segments, g)).permute(0, 3, 1, 2, 4).reshape(blocks * segments, num_q, parts * g)
    cs = c.unflatten(-1, (segments, g)).permute(0, 3, 2, 4, 1).reshape(blocks * segments, parts * g, num_c)
    sums = torch.bmm(qs, cs).view(blocks, segments, num_q, num_c)  # [B, G, Q, C]
    return prefix.read(sums, dim=1).permute(0, 2, 3, 1)
