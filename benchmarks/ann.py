"""Approximate nearest entities at scale: hnswlib against faiss-cpu (HNSW and IVF) against exact cosine, at 2M entities.

The vectors follow the synthetic graph's structure (benchmarks/synthetic.py: entities in about sqrt(E) latent
clusters): a cluster centre plus noise, complex RotatE-like rows ``[E, 2, D]`` flattened, cosine similarity
(inner product of unit rows), the same as GET /similar. Training a model on 2M entities is beyond this machine's
budget; an index's recall depends on how clustered the vectors are, so the noise is set so that neighbours are
mostly, not only, from the same cluster (``--noise``). For each index: build time, resident memory it added,
recall@10 against exact top-10 over ``--queries`` random entities (the entity itself left out), and query p50.

    python benchmarks/ann.py --entities 2000000 --dim 32        # the README's table
    python benchmarks/ann.py --entities 200000 --dim 32 --libraries hnswlib
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time

import numpy as np
import torch


def vectors(entities: int, dim: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clusters = max(2, round(entities**0.5))
    cluster_of = rng.permutation(np.repeat(np.arange(clusters), -(-entities // clusters))[:entities])
    centres = rng.standard_normal((clusters, 2 * dim), dtype=np.float32)
    x = centres[cluster_of]
    x += noise * rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def exact_top(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    table = torch.from_numpy(x)
    out, times = [], []
    for q in queries:
        began = time.perf_counter()
        sims = table @ table[q]
        sims[q] = -2
        out.append(torch.topk(sims, k).indices.numpy())
        times.append(time.perf_counter() - began)
    return np.stack(out), statistics.median(times) * 1e3


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def measure(name: str, build, search, x, queries, truth, k, tune=None, settings=(None,)) -> None:
    """Build once; then, for each search setting (``tune(index, setting)``: HNSW's ef), recall and p50."""
    gc.collect()
    before = rss_mb()
    began = time.perf_counter()
    index = build(x)
    built = time.perf_counter() - began
    memory = rss_mb() - before
    for setting in settings:
        if tune is not None and setting is not None:
            tune(index, setting)
        found, times = [], []
        for q in queries:
            t0 = time.perf_counter()
            ids = search(index, x[q : q + 1], k + 1)
            times.append(time.perf_counter() - t0)
            found.append([i for i in ids if i != q][:k])
        label = name if setting is None else f"{name}, ef {setting}"
        p50 = statistics.median(times) * 1e3
        print(
            f"| {label} | {built:.0f} | {memory:.0f} | {recall(np.array(found), truth):.4f} | {p50:.2f} |", flush=True
        )
    del index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entities", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=32, help="complex coordinates (the rows hold 2 * dim floats)")
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--libraries", default="hnswlib,faiss-hnsw,faiss-ivf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ef", default="64", help="HNSW search breadths to measure on each built index, e.g. 64,128,256")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    k = 10
    x = vectors(args.entities, args.dim, args.noise, args.seed)
    queries = np.random.default_rng(args.seed + 1).choice(args.entities, args.queries, replace=False)
    truth, exact_ms = exact_top(x, queries, k)
    print(
        f"{args.entities:,} entities, {2 * args.dim} floats per row, {args.threads} thread(s), {args.queries} queries"
    )
    print(f"exact cosine (torch, brute force): p50 {exact_ms:.1f} ms per query\n")
    print("| index | build (s) | memory (MB) | recall@10 | query p50 (ms) |")
    print("|---|---:|---:|---:|---:|")
    libraries = args.libraries.split(",")
    efs = [int(e) for e in args.ef.split(",")]
    if "hnswlib" in libraries:
        import hnswlib

        def build_hnswlib(x):
            index = hnswlib.Index(space="ip", dim=x.shape[1])
            index.init_index(max_elements=len(x), M=16, ef_construction=100, random_seed=args.seed)
            index.set_num_threads(args.threads)
            index.add_items(x, np.arange(len(x)))
            index.set_ef(64)
            return index

        measure(
            "hnswlib HNSW (M 16, efC 100)",
            build_hnswlib,
            lambda i, q, n: i.knn_query(q, n)[0][0],
            x,
            queries,
            truth,
            k,
            lambda i, ef: i.set_ef(ef),
            efs,
        )
    if "faiss-hnsw" in libraries or "faiss-ivf" in libraries:
        import faiss

        faiss.omp_set_num_threads(args.threads)

        def build_faiss_hnsw(x):
            index = faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 100
            index.add(x)
            index.hnsw.efSearch = 64
            return index

        def build_faiss_ivf(x):
            lists = int(4 * len(x) ** 0.5)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
            index.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 64 * lists), replace=False)])
            index.add(x)
            index.nprobe = 32
            return index

        def search_faiss(index, q, n):
            return index.search(q, n)[1][0]

        if "faiss-hnsw" in libraries:
            measure(
                "faiss HNSWFlat (M 16, efC 100)",
                build_faiss_hnsw,
                search_faiss,
                x,
                queries,
                truth,
                k,
                lambda i, ef: setattr(i.hnsw, "efSearch", ef),
                efs,
            )
        if "faiss-ivf" in libraries:
            measure("faiss IVFFlat (4 sqrt(E) lists, nprobe 32)", build_faiss_ivf, search_faiss, x, queries, truth, k)


if __name__ == "__main__":
    main()
