"""Dense or sparse embedding gradients, fused Adam or not? One update of WN18RR's entity table
(40,943 x 640) from 1024 x 66 gathered rows: a dense gradient with fused Adam, as medkge trains, against
PyTorch's default (unfused) Adam and against a sparse gradient with SparseAdam (which updates only the
gathered rows' moments: a different optimiser, "lazy Adam"). Steps interleaved, medians.

    python benchmarks/gradients.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from timing import interleaved_medians

from medkge.optim import adam
from medkge.runtime import keep_freed_memory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entities", type=int, default=40943)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--rows", type=int, default=1024 * 66)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(args.entities, args.dim, generator=generator) * 0.01

    def stepper(kind: str):
        table = torch.nn.Parameter(start.clone())
        sparse = kind == "sparse"
        if kind == "fused":
            optimizer = adam([table], 1e-3)
        elif kind == "default":
            optimizer = torch.optim.Adam([table], lr=1e-3)
        else:
            optimizer = torch.optim.SparseAdam([table], lr=1e-3)

        def step() -> float:
            index = torch.randint(args.entities, (args.rows,), generator=generator)
            started = time.perf_counter()
            F.embedding(index, table, sparse=sparse).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - started

        return step

    dense, default, sparse = interleaved_medians([stepper(k) for k in ("fused", "default", "sparse")], args.repeats)
    print(f"# {args.entities} x {args.dim} table, {args.rows} rows per step, {args.threads} threads")
    print("| gradient, optimiser | ms per step (gather, backward, update) | ratio |")
    print("|---|---:|---:|")
    print(f"| dense, Adam (fused; medkge) | {dense * 1000:.1f} | 1.00x |")
    print(f"| dense, Adam (PyTorch's default, unfused) | {default * 1000:.1f} | {default / dense:.2f}x |")
    print(f"| sparse, SparseAdam | {sparse * 1000:.1f} | {sparse / dense:.2f}x |")


if __name__ == "__main__":
    main()
