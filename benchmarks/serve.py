"""Serving benchmark: latency (p50, p99) and requests/s of `medkge serve` per dim, with 1 and 32 clients.

Builds a RotatE croppable model on WN18RR's vocabulary (40,943 entities, 11 relations, dims 10, 20, ...,
640), saves it as a cropped model folder, starts `medkge serve` on it in a subprocess on a free loopback
port (127.0.0.1 only, stopped at the end and bounded by --max-seconds), and sends
``GET /predict?head=H&relation=R&k=10&dim=D`` queries (random heads and relations, fixed seed) from 1 and
from 32 concurrent clients (httpx, in this process). Each cell is bounded in requests and seconds.
The tables are random: a query's cost depends on the dim and the number of entities, not on the values
(benchmarks/predict.py says the same).

It also measures, in this process and side by side, one query scored by the server's engine on a prefix
slice of the one full table against the same path on a contiguous cropped copy (what the server keeps
for small dims) and against ``LabelledModel.predict_tails``; 32 queries one at a time against one batch
(RotatE and DistMult); and, over HTTP, the server with and without batching at 32 clients and its
memory before and after a query at every dim from 1 to 640.

    python benchmarks/serve.py                                  # the README's table
    python benchmarks/serve.py --dims 10,640 --requests 100 --no-compare-batching
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

import medkge
from medkge.deploy import LabelledModel
from medkge.inference import Query


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="wn18rr")
    p.add_argument("--model", default="rotate")
    p.add_argument("--dims", default="10,40,160,640")
    p.add_argument("--full-dims", default="10:640:10", help="the croppable model's sub-model dims")
    p.add_argument("--clients", default="1,32", help="concurrent clients per cell")
    p.add_argument("--requests", type=int, default=200, help="timed requests per cell (at most)")
    p.add_argument("--warmup", type=int, default=10, help="untimed requests per cell first")
    p.add_argument("--cell-seconds", type=float, default=30.0, help="stop a cell's timed requests after this")
    p.add_argument("--workers", type=int, default=None, help="server workers (default: the server's, 1 per core)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--compare-batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the largest client count against a server started with --no-batching",
    )
    p.add_argument(
        "--sweep-dims",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one query at every dim 1..d_n, with the server's memory before and after",
    )
    p.add_argument("--in-process", type=int, default=30, help="queries per dim for the in-process comparison")
    p.add_argument("--max-seconds", type=float, default=1800, help="the server stops after this, whatever happens")
    p.add_argument("--batch-models", default="rotate,distmult", help="models for the in-process batching test")
    p.add_argument("--server-args", default="", help="more options for medkge serve, e.g. '--tune-malloc'")
    p.add_argument("--run", help="serve this trained run (queries: its test triples) instead of random tables")
    p.add_argument(
        "--funnels",
        default="",
        help="also each funnel=D:K setting at every dim (e.g. 10:200,20:200), beside exact ranking",
    )
    return p.parse_args()


def start(folder: Path, args: argparse.Namespace, *extra: str) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "medkge",
        "serve",
        str(folder),
        "--port",
        "0",
        "--max-seconds",
        str(args.max_seconds),
        "--max-k",
        str(max(args.k, 10)),
        *args.server_args.split(),
        *extra,
    ]
    if args.workers:
        command += ["--workers", str(args.workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    url = line.split(" on ", 1)[1].split()[0]
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    stop(process)
    raise SystemExit("the server did not answer /health")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory(pid: int) -> dict[str, float]:
    """Resident set now and at its peak (MiB), from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


async def cell(url: str, queries: list[dict], clients: int, args: argparse.Namespace) -> dict[str, float]:
    """Latencies of ``queries`` sent by ``clients`` concurrent clients; bounded in time."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for q in queries[: args.warmup]:
            (await client.get("/predict", params=q)).raise_for_status()
        timed = queries[args.warmup :]
        latencies: list[float] = []
        deadline = time.perf_counter() + args.cell_seconds
        position = 0

        async def worker():
            nonlocal position
            while position < len(timed) and time.perf_counter() < deadline:
                q = timed[position]
                position += 1
                began = time.perf_counter()
                answer = await client.get("/predict", params=q)
                latencies.append(time.perf_counter() - began)
                answer.raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "p50": statistics.median(latencies) * 1e3,
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
        "rps": len(latencies) / wall,
    }


def in_process(model: LabelledModel, dims: list[int], heads: list[int], relations: list[int]) -> list[dict]:
    """One query at a time, interleaved: the inference path (what the server calls) on a prefix slice of the one
    full table, the same on a contiguous cropped copy of the tables, LabelledModel.predict_tails by label, and
    the brute-force /similar."""
    sliced = LabelledModel(model.models[0], model.entities, model.relations, cache_bytes=0)  # slices only
    rows = []
    for dim in dims:
        crop = model.crop(dim)
        variants = {
            "slice": lambda h, r, d=dim: sliced.predict([Query("tail", h, r, 10, d)]),
            "copy": lambda h, r, d=dim, c=crop: c.predict([Query("tail", h, r, 10, d)]),
            "labelled": lambda h, r, c=crop: c.predict_tails(c.entities[h], c.relations[r], k=10),
            "similar": lambda h, r, d=dim: sliced.similar(h, 10, d),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i, (h, r) in enumerate(zip(heads, relations, strict=True)):
            names = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in names:
                began = time.perf_counter()
                variants[name](h, r)
                if i >= 3:  # warm-up
                    times[name].append(time.perf_counter() - began)
        row = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        rows.append(row | {"dim": dim, "copy_mb": crop.models[0].entity.numel() * 4 / 2**20})
    return rows


def batch_gain(dataset: medkge.Dataset, models: list[str], dims: list[int], heads: list[int], relations: list[int]):
    """Per model and dim: 32 queries scored one at a time against one batch of 32 (the server's batching),
    in this process, the best of 3 interleaved repetitions."""
    print("\nIn process, 32 queries one at a time against one batch of 32, best of 3:\n")
    print("| model | dim | one at a time (ms per query) | batch of 32 (ms per query) | gain |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        full = medkge.CroppableModel(
            name, dataset.num_entities, dataset.num_relations, [max(dims)], generator=torch.Generator().manual_seed(0)
        ).requires_grad_(False)
        engine = LabelledModel(full, dataset.entities, dataset.relations)
        for dim in dims:
            queries = [Query("tail", h, r, 10, dim) for h, r in zip(heads[:32], relations[:32], strict=True)]
            engine.predict(queries[:2])  # warm-up (and the copy of a small dim)
            single, batch = [], []
            for _ in range(3):
                began = time.perf_counter()
                for q in queries:
                    engine.predict([q])
                single.append((time.perf_counter() - began) / len(queries) * 1e3)
                began = time.perf_counter()
                engine.predict(queries)
                batch.append((time.perf_counter() - began) / len(queries) * 1e3)
            print(
                f"| {name} | {dim} | {min(single):.2f} | {min(batch):.2f} | {min(single) / min(batch):.2f}x |",
                flush=True,
            )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    dims = [int(d) for d in args.dims.split(",")]
    client_counts = [int(c) for c in args.clients.split(",")]
    start_dim, stop_dim, step = (int(x) for x in args.full_dims.split(":"))
    total = args.warmup + args.requests
    g = torch.Generator().manual_seed(1)
    if args.run:  # a trained run: its own test triples as queries
        model = medkge.load(args.run)
        dataset, full = model.dataset(), model.models[0]
        chosen = dataset.test[torch.randint(len(dataset.test), (total,), generator=g)]
        heads, relations = chosen[:, 0].tolist(), chosen[:, 1].tolist()
        args.model, args.dataset = full.model_name, dataset.name
        args.in_process, args.batch_models, args.compare_batching, args.sweep_dims = 0, "", False, False
    else:
        dataset = medkge.load_dataset(args.dataset)
        full = medkge.CroppableModel(
            args.model,
            dataset.num_entities,
            dataset.num_relations,
            range(start_dim, stop_dim + 1, step),
            generator=torch.Generator().manual_seed(0),
        ).requires_grad_(False)
        model = LabelledModel(full, dataset.entities, dataset.relations, source={"dataset": args.dataset})
        heads = torch.randint(dataset.num_entities, (total,), generator=g).tolist()
        relations = torch.randint(dataset.num_relations, (total,), generator=g).tolist()
    funnels = [None, *[f for f in args.funnels.split(",") if f]]
    print(
        f"{args.model} on {args.dataset}-sized tables ({dataset.num_entities:,} entities, d_n = {full.dim}), "
        f"GET /predict k={args.k}, loopback, server and clients on this machine, torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )

    rows = (
        in_process(model, dims, heads[: args.in_process], relations[: args.in_process]) if args.in_process > 3 else []
    )
    if rows:
        print("\nIn process, one query, median of the timed queries:\n")
        print(
            "| dim | engine, prefix slice (ms) | engine, contiguous copy (ms) | slice / copy | "
            "predict_tails by label (ms) | similar, k=10 (ms) | copy size (MiB) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['dim']} | {row['slice']:.2f} | {row['copy']:.2f} | {row['slice'] / row['copy']:.2f}x | "
                f"{row['labelled']:.2f} | {row['similar']:.2f} | {row['copy_mb']:.1f} |",
                flush=True,
            )
        per_dim = full.entity.numel() * 4 / full.dim  # bytes of one coordinate of every entity row
        every = per_dim * full.dim * (full.dim + 1) / 2 / 2**30
        print(f"(a cached copy for every dim 1..{full.dim} would hold {every:.1f} GiB; the slices hold nothing)")
    if args.batch_models:
        batch_gain(dataset, args.batch_models.split(","), dims, heads, relations)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.run) if args.run else model.save(Path(tmp) / "model")
        servers = [("on", ())] + ([("off", ("--no-batching",))] if args.compare_batching else [])
        results = []
        for batching, extra in servers:
            process, url = start(folder, args, *extra)
            try:
                info = httpx.get(f"{url}/health").json()
                if batching == "on":
                    print(
                        f"\nserver: {info['workers']} worker(s) x {info['threads_per_worker']} torch thread(s); "
                        f"memory after start {memory(process.pid)['VmRSS']:.0f} MiB"
                    )
                counts = client_counts if batching == "on" else [max(client_counts)]
                for dim in dims:
                    for funnel in funnels if batching == "on" else [None]:
                        queries = [
                            {"head": dataset.entities[h], "relation": dataset.relations[r], "k": args.k, "dim": dim}
                            | ({"funnel": funnel} if funnel else {})
                            for h, r in zip(heads, relations, strict=True)
                        ]
                        for clients in counts:
                            figures = asyncio.run(cell(url, queries, clients, args))
                            row = {"dim": dim, "clients": clients, "batching": batching, "funnel": funnel or "exact"}
                            results.append(row | figures)
                            print(
                                f"  dim {dim}, {row['funnel']}, {clients} client(s), batching {batching}: "
                                f"{figures['requests']} requests, p50 {figures['p50']:.1f} ms, "
                                f"p99 {figures['p99']:.1f} ms, {figures['rps']:.1f} req/s",
                                flush=True,
                            )
                if batching == "on" and args.sweep_dims:
                    before = memory(process.pid)
                    sweep = [
                        {"head": dataset.entities[heads[d % total]], "relation": dataset.relations[0], "dim": d}
                        for d in range(1, full.dim + 1)
                    ]
                    sweep_args = argparse.Namespace(**(vars(args) | {"warmup": 0, "cell_seconds": 600.0}))
                    figures = asyncio.run(cell(url, sweep, max(client_counts), sweep_args))
                    after = memory(process.pid)
                    print(
                        f"\none query at every dim 1..{full.dim} ({figures['requests']} requests): server memory "
                        f"{before['VmRSS']:.0f} MiB before, {after['VmRSS']:.0f} MiB after, "
                        f"peak {after['VmHWM']:.0f} MiB"
                    )
            finally:
                stop(process)

    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print("\n| dim | ranking | clients | batching | requests | p50 (ms) | p99 (ms) | requests/s |")
    print("|---:|---|---:|:---:|---:|---:|---:|---:|")
    exact_rps = {
        (r["dim"], r["clients"]): r["rps"] for r in results if r["funnel"] == "exact" and r["batching"] == "on"
    }
    for r in sorted(results, key=lambda r: (r["dim"], r["funnel"] != "exact", r["clients"], r["batching"] == "off")):
        gain = "" if r["funnel"] == "exact" else f" ({r['rps'] / exact_rps[(r['dim'], r['clients'])]:.1f}x exact)"
        print(
            f"| {r['dim']} | {r['funnel']} | {r['clients']} | {r['batching']} | {r['requests']} | {r['p50']:.1f} | "
            f"{r['p99']:.1f} | {r['rps']:.1f}{gain} |"
        )


if __name__ == "__main__":
    main()
