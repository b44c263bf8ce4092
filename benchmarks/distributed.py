"""Distributed benchmark: 1 rank against 2 ranks (torchrun, gloo on 127.0.0.1) on a synthetic graph.

    python benchmarks/distributed.py --size 2m --steps 5            # launches torchrun itself, twice

For each world size it reports s/step, triples/s, each rank's peak resident memory, where a rank's step
goes (the lookup and its exchange, forward and loss, backward with the gradient exchange and the fused
row update, the all-reduce of the replicated parameters, the dense update) and the bytes a rank sends and
receives per step. RotatE, sub-models 10..640 (narrowed where a rank's table would not fit), batch 1024,
row-wise Adagrad, shared negatives off and on. The graph is benchmarks/scale.py's (``--data``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

GiB = 1 << 30


def worker(args: argparse.Namespace) -> None:
    """One rank (under torchrun): build the trainer as medkge does and time its steps piece by piece."""
    import torch
    import torch.distributed as dist

    import medkge
    from medkge import distributed, memory, runtime
    from medkge.losses import MEDObjective
    from medkge.training import Trainer, build_model

    torch.set_num_threads(args.threads)
    runtime.keep_freed_memory()
    runtime.flush_denormals()
    ds = medkge.load_dataset(args.folder)
    cfg = medkge.Config().with_overrides(
        {
            "dataset": args.folder,
            "model.dims": f"10:{args.width}:10",
            "train.optimizer": args.optimizer,
            "train.lr": 0.1 if args.optimizer == "row_adagrad" else 0.001,
            "train.shared_negatives": args.shared,
            "eval.every": 0,
        }
    )
    cluster = distributed.connect("cpu")
    model = build_model(cfg, ds, entity_table=False)
    objective = MEDObjective(model.dims, cfg.loss, cfg.med)
    tmp = Path(f"/tmp/medkge-dist-bench-{cluster.world}")
    paths = {"model_path": tmp / "model.safetensors", "checkpoint_path": tmp / "c", "log_path": tmp / "l"}
    trainer = Trainer(cfg, ds, model, objective, **paths, progress=False, comm=cluster)
    store = trainer.store
    pieces: dict[str, list[float]] = {}
    moved = []
    all_to_all, all_sum = cluster.all_to_all, cluster.all_sum

    def timed(name, function):
        def wrapper(*a, **k):
            started = time.perf_counter()
            out = function(*a, **k)
            pieces.setdefault(name, []).append(time.perf_counter() - started)
            return out

        return wrapper

    def counted(tensor, send, receive):  # bytes this rank sends to and receives from the others
        row = tensor[0].numel() * tensor.element_size() if len(tensor) else 0
        others = [i for i in range(cluster.world) if i != cluster.rank]
        moved.append(sum(send[i] + receive[i] for i in others) * row)
        return all_to_all(tensor, send, receive)

    cluster.all_to_all = counted
    store._ask = timed("lookup (exchange of rows)", store._ask)
    store.update = timed("update (exchange of gradients, row update)", store.update)
    cluster.all_sum = timed("all-reduce of relations", all_sum)
    g = torch.Generator().manual_seed(1)
    steps, sent = [], []
    for i in range(args.steps + 2):
        batch = ds.train[torch.randint(len(ds.train), (cfg.train.batch_size,), generator=g)]
        dist.barrier()
        moved.clear()
        started = time.perf_counter()
        trainer.step(batch, 0.1)
        if i >= 2:
            steps.append(time.perf_counter() - started)
            sent.append(sum(moved))
        else:
            pieces.clear()
    relation_bytes = model.relation.numel() * 4 * 2 * (cluster.world - 1) / cluster.world
    peaks = cluster.all_gather_object(memory.peak_rss())
    ranges = cluster.all_gather_object([store.lo, store.hi])
    median = sorted(steps)[len(steps) // 2]
    if cluster.rank == 0:
        result = {
            "world": cluster.world,
            "width": args.width,
            "shared": args.shared,
            "s_per_step": median,
            "triples_per_s": cfg.train.batch_size / median,
            "peak_by_rank": peaks,
            "rows_by_rank": ranges,
            "pieces": {k: sorted(v)[len(v) // 2] for k, v in pieces.items()},
            "bytes_per_step_rank0": sorted(sent)[len(sent) // 2] + relation_bytes,
        }
        Path(args.result).write_text(json.dumps(result))
    del trainer, store, model
    cluster.close()


def launch(ranks: int, folder: Path, width: int, shared: int, steps: int, threads: int, optimizer: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = Path(f"/tmp/medkge-dist-bench-{ranks}-{shared}.json")
    result.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={ranks}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        __file__,
        "--worker",
        "--folder",
        str(folder),
        "--width",
        str(width),
        "--shared",
        str(shared),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
        "--optimizer",
        optimizer,
        "--result",
        str(result),
    ]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode or not result.is_file():
        lines = [x for x in done.stderr.splitlines() if "Error" in x or "error" in x]
        return {"error": (lines or ["failed"])[-1][:200]}
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="2m", help="a size of benchmarks/scale.py: 40k, 500k, 2m, 7m")
    p.add_argument("--data", type=Path, default=Path("/tmp/medkge-scale"))
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--optimizer", default="row_adagrad", help="the entity optimiser: adam, sparse_adam, row_adagrad")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--shared", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from scale import data_folder

    folder = data_folder(args.data, args.size)
    setting = f"RotatE 10..{args.width}, {args.optimizer}, batch 1024 x (1 + 64), {args.threads} thread(s) a rank"
    print(f"{folder}: {setting}\n")
    print(
        "| ranks | shared negatives | s/step | triples/s | peak RSS per rank (GiB) | rows per rank "
        "| sent+received per step, rank 0 (MB) | step pieces, rank 0 (s) |"
    )
    print("|---:|---:|---:|---:|---|---|---:|---|")
    for shared in (0, 64):
        for ranks in (1, 2):
            r = launch(ranks, folder, args.width, shared, args.steps, args.threads, args.optimizer)
            if "error" in r:
                print(f"| {ranks} | {shared or 'no'} | failed: {r['error']} | | | | | |", flush=True)
                continue
            peaks = " / ".join(f"{x / GiB:.2f}" for x in r["peak_by_rank"])
            rows = " / ".join(f"{b - a:,}" for a, b in r["rows_by_rank"])
            pieces = ", ".join(f"{k} {v:.3f}" for k, v in r["pieces"].items())
            print(
                f"| {ranks} | {shared or 'no'} | {r['s_per_step']:.3f} | {r['triples_per_s']:,.0f} | {peaks} "
                f"| {rows} | {r['bytes_per_step_rank0'] / 1e6:.1f} | {pieces} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
