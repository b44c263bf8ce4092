"""Deployment benchmark: latency of one ``predict_tails`` query and size on disk, per cropped dim.

Builds a RotatE croppable model for WN18RR (40,943 entities, 11 relations) with dims 10, 20, ..., 640,
crops it to each dim measured, saves every crop as a cropped model folder, loads it back with
``medkge.load`` (as a deployment would) and times ``predict_tails(head_label, relation_label, k=10)``:
the median over N queries (random heads and relations, fixed seed) after a few warm-up queries, on the CPU.

The tables are randomly initialised, not trained: a query's cost depends on the dim and the number of
entities, not on the values in the tables (no early exit, no sparsity), so training first would change
nothing here but the time the benchmark takes.

    python benchmarks/predict.py                         # WN18RR, dims 10, 40, 160, 640, 50 queries, 1 thread
    python benchmarks/predict.py --dims 10,640 --queries 200 --threads 0   # torch's default threads
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import medkge
from medkge.deploy import LabelledModel, folder_size


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="wn18rr")
    p.add_argument("--model", default="rotate")
    p.add_argument("--dims", default="10,40,160,640", help="the cropped dims to measure")
    p.add_argument("--full-dims", default="10:640:10", help="the croppable model's sub-model dims")
    p.add_argument("--queries", type=int, default=50, help="timed queries per dim")
    p.add_argument("--warmup", type=int, default=5, help="untimed queries per dim first")
    p.add_argument("--k", type=int, default=10)
    # One query is a few milliseconds of work: too little to gain from more threads, and on a shared machine
    # waking a second thread that another process keeps busy costs more than the query (README: "How fast...").
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start, stop, step = (int(x) for x in args.full_dims.split(":"))
    dataset = medkge.load_dataset(args.dataset)
    full = medkge.CroppableModel(
        args.model,
        dataset.num_entities,
        dataset.num_relations,
        range(start, stop + 1, step),
        generator=torch.Generator().manual_seed(0),
    )
    source = LabelledModel(full, dataset.entities, dataset.relations)
    g = torch.Generator().manual_seed(1)
    total = args.warmup + args.queries
    heads = torch.randint(dataset.num_entities, (total,), generator=g).tolist()
    relations = torch.randint(dataset.num_relations, (total,), generator=g).tolist()
    queries = [(dataset.entities[h], dataset.relations[r]) for h, r in zip(heads, relations, strict=True)]

    print(
        f"{args.model} on {args.dataset} ({dataset.num_entities:,} entities), predict_tails k={args.k}, "
        f"CPU, {torch.get_num_threads()} thread(s), median of {args.queries} queries after {args.warmup} warm-up"
    )
    print()
    print("| dim | size on disk (MB) | latency median (ms) | latency p90 (ms) |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for dim in (int(d) for d in args.dims.split(",")):
            folder = source.crop(dim).save(Path(tmp) / f"dim_{dim}")
            model = medkge.load(folder)
            times = []
            for i, (head, relation) in enumerate(queries):
                began = time.perf_counter()
                model.predict_tails(head, relation, k=args.k)
                if i >= args.warmup:
                    times.append(time.perf_counter() - began)
            times.sort()
            median = statistics.median(times) * 1e3
            p90 = times[min(len(times) - 1, int(0.9 * len(times)))] * 1e3
            size = folder_size(folder) / 1e6
            print(f"| {dim} | {size:.2f} | {median:.2f} | {p90:.2f} |", flush=True)


if __name__ == "__main__":
    main()
