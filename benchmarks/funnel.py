"""Funnel ranking against exact ranking: filtered MRR and Hits@10 of a trained run at one dim, per (D, K).

For each setting D:K the funnel scores every entity with the D-dim prefix, keeps the best K and reranks them at
``--dim`` (medkge.funnel: a true answer outside the shortlist ranks after all K). Exact is the run's own filtered
evaluation at ``--dim``. Both on the same model and split, so the difference is the funnel's alone. The server's
latency and requests/s per setting come from ``benchmarks/serve.py --run RUN --funnels ...``.

    python benchmarks/funnel.py runs/serve-wn18rr-snapshot --dim 640 --limit 2000 \
        --settings 10:100,10:200,10:500,20:200,40:100,40:200
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

import medkge
from medkge.funnel import evaluate_funnel
from medkge.inference import Funnel


def split_of(dataset: medkge.Dataset, split: str, limit: int | None) -> medkge.Dataset:
    """``dataset`` with ``split`` cut to its first ``limit`` triples; the rest move to train, so that the filter
    (every known triple) stays the same."""
    if limit is None:
        return dataset
    triples = dataset.split(split)
    rest = torch.cat([dataset.train, triples[limit:]])
    return dataclasses.replace(dataset, **{split: triples[:limit], "train": rest})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a MED run folder or a cropped model folder (benchmarks/snapshot.py) of --dim")
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--settings", default="10:100,10:200,10:500,20:100,20:200,40:100,40:200,80:100")
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--limit", type=int, help="only the first N triples of the split (both rankings alike)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    labelled = medkge.load(args.model)
    model, dataset = labelled.models[0], split_of(labelled.dataset(), args.split, args.limit)
    origin = ", ".join(f"{k} {v}" for k, v in labelled.source.items() if k != "dims")
    print(
        f"{model.model_name} ({origin}) on {dataset.name} ({dataset.num_entities:,} entities), "
        f"{len(dataset.split(args.split)):,} {args.split} triples, dim {args.dim}, filtered, realistic ranks; "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f} at start"
    )
    began = time.perf_counter()
    exact = medkge.evaluate(model, dataset, args.split, dims=[args.dim], progress=False)[args.dim]
    exact_s = time.perf_counter() - began
    print("\n| ranking | MRR | MRR - exact | H@1 | H@10 | evaluation (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| exact | {exact['mrr']:.4f} | | {exact['hits@1']:.4f} | {exact['hits@10']:.4f} | {exact_s:.0f} |", flush=True
    )
    for text in args.settings.split(","):
        funnel = Funnel.parse(text)
        assert funnel is not None
        began = time.perf_counter()
        m = evaluate_funnel(model, dataset, funnel, [args.dim], args.split, progress=False)[args.dim]
        seconds = time.perf_counter() - began
        print(
            f"| funnel {funnel} | {m['mrr']:.4f} | {m['mrr'] - exact['mrr']:+.4f} | {m['hits@1']:.4f} | "
            f"{m['hits@10']:.4f} | {seconds:.0f} |",
            flush=True,
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
