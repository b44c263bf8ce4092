"""The fused training kernels against their references, forward + backward, side by side (issue 6).

- MED's objective on scores [1024, 1 + 64, 64] (64 sub-models): the autograd reference
  (``MEDObjective(..., fused=False)``), the fused closed-form gradient (the default), and the
  reference compiled with ``torch.compile`` (skipped with a message where compiling fails).
- Scoring 1024 x (1 + 64) triples at d_n = 640 for all 64 sub-models (TransE's l1, RotatE's complex
  modulus, DistMult's product): autograd through the plain composition ``finish(prefix(terms))``
  against ``scoring.training_scores``, and the same for one 640-d model.
- The pieces that 64 sub-models add to one model's scoring, on [1024 x 65, 640] terms: sums within the
  64 segments against one full sum, scaling by each segment's gradient against one gradient per row,
  and the cumulative sums over the 64 segments (forward) and from the right (backward).

    python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import interleaved_medians

from medkge.config import LossConfig, MedConfig
from medkge.losses import MEDObjective
from medkge.runtime import keep_freed_memory
from medkge.scoring import Prefix, get_interaction, plain_scores, training_scores


def timed(fn, make_input):
    def step() -> float:
        inputs = make_input()
        started = time.perf_counter()
        fn(*inputs).backward()
        return time.perf_counter() - started

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    dims = list(range(10, 641, 10))
    B, C = args.batch_size, 1 + args.negatives
    generator = torch.Generator().manual_seed(0)
    print(f"# batch {B} x {C}, 64 sub-models (10..640), {args.threads} threads, torch {torch.__version__}")

    fused = MEDObjective(dims, LossConfig(), MedConfig())
    reference = MEDObjective(dims, LossConfig(), MedConfig(), fused=False)
    variants = {
        "MED objective, autograd reference": lambda s: reference(s)[0],
        "MED objective, fused (default)": lambda s: fused(s)[0],
    }
    if not args.no_compile:
        compiled = torch.compile(lambda s: reference(s)[0])
        try:
            compiled(torch.randn(B, C, len(dims), requires_grad=True)).backward()
            variants["MED objective, reference under torch.compile"] = compiled
        except Exception as error:  # no compiler, unsupported platform
            print(f"torch.compile failed, skipped: {type(error).__name__}: {str(error)[:200]}")

    def scores_input():
        return (torch.randn(B, C, len(dims), generator=generator).mul_(3).requires_grad_(),)

    steps = [timed(fn, scores_input) for fn in variants.values()]
    rows = list(zip(variants, interleaved_medians(steps, args.repeats), strict=True))

    for name in ("transe", "rotate", "distmult"):
        it = get_interaction(name)
        parts = it.entity_parts

        def rows_input(parts=parts):
            query = torch.randn(B, 1, parts, 640, generator=generator).requires_grad_()
            candidate = torch.randn(B, C, parts, 640, generator=generator).requires_grad_()
            return query, candidate

        variants = {}
        for label, prefix in (("64 sub-models", Prefix(dims)), ("one 640-d model", Prefix([640]))):
            margins = torch.tensor([6.0 * d / 640 for d in prefix.dims])
            for path, fn in (("autograd, plain composition", plain_scores), ("training_scores", training_scores)):
                variants[f"{name} scores, {label}, {path}"] = (
                    lambda q, c, fn=fn, prefix=prefix, margins=margins, it=it: fn(it, q, c, prefix, margins).sum()
                )
        steps = [timed(fn, rows_input) for fn in variants.values()]
        rows += list(zip(variants, interleaved_medians(steps, args.repeats), strict=True))

    print("| what (forward + backward) | ms |")
    print("|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.1f} |")

    n = B * C
    terms = torch.rand(n, 640, generator=generator)
    # scales near 1, so that repeated in-place scaling neither overflows nor reaches slow subnormals
    per_segment = torch.empty(n, 64, 1).uniform_(0.999, 1.001, generator=generator)
    per_row = torch.empty(n, 1).uniform_(0.999, 1.001, generator=generator)
    sums = torch.randn(n, 64, generator=generator)
    pieces = {
        "sums within 64 segments of 10": lambda: terms.view(n, 64, 10).sum(-1),
        "one full sum": lambda: terms.sum(-1),
        "scale by each segment's gradient (in place)": lambda: terms.view(n, 64, 10).mul_(per_segment),
        "scale by one gradient per row (in place)": lambda: terms.mul_(per_row),
        "cumulative sum over 64 segments": lambda: sums.cumsum(-1),
        "sums from the right (backward)": lambda: sums.flip(-1).cumsum(-1).flip(-1),
    }

    def clocked(fn):
        def step() -> float:
            started = time.perf_counter()
            fn()
            return time.perf_counter() - started

        return step

    times = interleaved_medians([clocked(fn) for fn in pieces.values()], args.repeats)
    print(f"\n| piece, on [{n}, 640] terms or [{n}, 64] sums | ms |")
    print("|---|---:|")
    for name, seconds in zip(pieces, times, strict=True):
        print(f"| {name} | {seconds * 1000:.2f} |")


if __name__ == "__main__":
    main()
