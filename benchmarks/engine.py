"""Engine benchmark: all sub-models in one pass against one full-width model and a naive loop.

Measures, side by side in one process, for one model on one dataset (default RotatE on WN18RR, 1024
positives with 64 negatives each, d_n = 640, 64 sub-models):

- a training step (forward + backward of the base loss) of the one-pass engine for all sub-models,
  of a single d_n-dimensional model, and of the naive loop that scores each sub-model from scratch;
- filtered evaluation of all sub-models on the test split against evaluating the d_n model alone.

Target (issue 2): all sub-models cost at most 1.2x the single d_n model, in training and evaluation.

    python benchmarks/engine.py                      # the full benchmark (about 10 minutes on 2 cores)
    python benchmarks/engine.py --eval-queries 300   # evaluation on the first 300 test triples only
    python benchmarks/engine.py --eval-queries 300 --eval-subsets 10,40,160 10,40,160,640   # eval.valid_dims
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from timing import interleaved_medians

import medkge
from medkge.evaluation import evaluate
from medkge.losses import base_loss, negative_weights
from medkge.runtime import keep_freed_memory
from medkge.sampling import make_batch
from medkge.training import score_batch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="wn18rr")
    p.add_argument("--model", default="rotate")
    p.add_argument("--dims", default="10:640:10")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9, help="timed steps per variant (after one warm-up)")
    p.add_argument("--eval-queries", type=int, default=0, help="evaluate on the first N test triples (0: all)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument(
        "--eval-subsets", nargs="*", metavar="DIMS", help="also evaluate these sub-models only, e.g. 10,40,160"
    )
    p.add_argument("--no-tune-malloc", action="store_true", help="leave glibc's allocator as it is")
    return p.parse_args()


def loss_of(scores: torch.Tensor) -> torch.Tensor:
    s_pos, s_neg = scores[:, 0], scores[:, 1:]
    return base_loss("self_adversarial", s_pos, s_neg, None, negative_weights("self_adversarial", s_neg, 1.0)).sum()


def one_pass_step(model: medkge.CroppableModel, batch) -> None:
    loss_of(score_batch(model, batch)).backward()


def naive_step(model: medkge.CroppableModel, batch) -> None:
    """The reference: every sub-model scored from scratch from tables sliced to its dim, one at a time.

    Each sub-model's loss is back-propagated before the next is built: the same gradient as the sum,
    in memory that fits (all 64 graphs at once would need ~100 GB here).
    """
    it = model.interaction
    for d in model.dims:
        per_side = []
        for group in batch.groups:
            side, anchor, r, cands = group.side, group.anchor, group.relation, group.candidates
            entity, relation = model.entity_table()[..., :d], model.relation_table()[..., :d]
            r_rows = relation[r].unsqueeze(1)
            query = it.query(side, entity[anchor].unsqueeze(1), r_rows)
            cand = it.candidate(side, entity[cands], r_rows)
            per_side.append(it.finish(it.terms(query, cand).sum(-1, keepdim=True), model.margins([d])))
        loss_of(torch.cat(per_side)).backward()


def step_seconds(variants: list[tuple], repeats: int) -> list[float]:
    """Median seconds of a step of each (model, batch, step function), the variants interleaved."""

    def step(model, batch, step_fn) -> float:
        started = time.perf_counter()
        model.zero_grad(set_to_none=True)
        step_fn(model, batch)
        return time.perf_counter() - started

    return interleaved_medians([functools.partial(step, *variant) for variant in variants], repeats)


def main() -> None:
    args = parse_args()
    tuned = False if args.no_tune_malloc else keep_freed_memory()
    torch.manual_seed(0)
    ds = medkge.load_dataset(args.dataset)
    dims = medkge.Config().with_overrides({"model.dims": args.dims}).model.dims
    model = medkge.CroppableModel(args.model, ds.num_entities, ds.num_relations, dims)
    single = model.crop(dims[-1]).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    positives = ds.train[torch.randperm(len(ds.train), generator=g)[: args.batch_size]]
    corrupt_head = torch.rand(len(positives), generator=g) < 0.5
    negatives = torch.randint(ds.num_entities, (len(positives), args.negatives), generator=g)
    batch = make_batch(positives, corrupt_head, negatives)

    print(
        f"# {args.model} on {args.dataset}: {len(dims)} sub-models, d_n = {dims[-1]}, batch {len(positives)} x "
        f"(1 + {args.negatives}); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"malloc tuned: {tuned}"
    )
    rows = []
    one_pass, alone = step_seconds([(model, batch, one_pass_step), (single, batch, one_pass_step)], args.repeats)
    (naive,) = step_seconds([(model, batch, naive_step)], max(1, args.repeats // 3))
    rows += [
        (f"train step, one pass, {len(dims)} sub-models", one_pass, one_pass / alone),
        (f"train step, single {dims[-1]}-d model", alone, 1.0),
        (f"train step, naive loop over {len(dims)} sub-models", naive, naive / alone),
    ]
    if not args.skip_eval:
        if args.eval_queries:
            ds.test = ds.test[: args.eval_queries]
        with torch.no_grad():
            started = time.perf_counter()
            evaluate(model, ds, "test", progress=False)
            all_dims = time.perf_counter() - started
            started = time.perf_counter()
            evaluate(single, ds, "test", progress=False)
            one_dim = time.perf_counter() - started
            subsets = []  # eval.valid_dims: a few of the sub-models, in the same one pass
            for subset in args.eval_subsets or []:
                chosen = [int(d) for d in subset.split(",")]
                started = time.perf_counter()
                evaluate(model, ds, "test", dims=chosen, progress=False)
                subsets.append((chosen, time.perf_counter() - started))
        label = f"{len(ds.test)} test triples"
        rows += [
            (f"evaluate {len(dims)} sub-models ({label})", all_dims, all_dims / one_dim),
            (f"evaluate the {dims[-1]}-d model alone ({label})", one_dim, 1.0),
        ]
        rows += [(f"evaluate sub-models {chosen} ({label})", t, t / one_dim) for chosen, t in subsets]
    print(f"| {'what':60s} | seconds | ratio to one {dims[-1]}-d model |")
    print(f"|{'-' * 62}|--------:|---------------------:|")
    for name, seconds, ratio in rows:
        print(f"| {name:60s} | {seconds:7.3f} | {ratio:20.2f}x |")


if __name__ == "__main__":
    main()
