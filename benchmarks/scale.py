"""Scale benchmark: loading, training steps and memory on synthetic graphs of 40k to 7M entities.

    python benchmarks/scale.py load                 # 50M triples: parse, then load from the cache
    python benchmarks/scale.py steps                # s/step, triples/s, peak memory per size and optimiser
    python benchmarks/scale.py denormals            # the cost of subnormal floats, and the flush
    python benchmarks/scale.py quality --datasets wn18rr,fb15k237 --epochs 8   # shared negatives' effect

The graphs come from benchmarks/synthetic.py (planted structure, power-law degrees), written once under
``--data`` (default /tmp/medkge-scale) and then loaded through medkge's own loader and cache. Every
configuration runs in a fresh subprocess, so that its peak resident memory is its own; s/step is the
median of ``--steps`` steps of the trainer's own ``Trainer.step`` after two warm-up steps, RotatE,
batch 1024 x (1 + 64), sub-models 10, 20, ..., 640 unless the table does not fit (then the widest width
that fits is used and said). Configurations whose memory estimate exceeds the memory available are not
started; their estimate is printed instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SIZES = {
    "40k": (40_943, 290_000),
    "500k": (500_000, 3_600_000),
    "2m": (2_000_000, 14_300_000),
    "7m": (7_000_000, 50_000_000),
}
VARIANTS = [("adam", 0), ("sparse_adam", 0), ("row_adagrad", 0), ("sparse_adam", 64), ("row_adagrad", 64)]
GiB = 1 << 30
MARGIN = 2 * GiB  # left free beside a configuration's estimate: the machine is shared


def data_folder(root: Path, size: str) -> Path:
    """The synthetic graph of ``size``, generated and written on first use."""
    folder = root / f"syn-{size}"
    if not (folder / "train.txt").is_file():
        from synthetic import generate, write

        entities, triples = SIZES[size]
        started = time.perf_counter()
        write(generate(entities, triples, eval_triples=5000, seed=0), folder)
        print(f"# generated {folder} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folder


# ---- one configuration, in its own process -------------------------------------------------------


def child_load(folder: str, cache: bool) -> dict:
    import medkge
    from medkge.memory import peak_rss

    started = time.perf_counter()
    ds = medkge.load_dataset(folder, cache=cache)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "triples": sum(len(ds.split(s)) for s in ("train", "valid", "test")),
        "peak": peak_rss(),
    }


def child_steps(folder: str, optimizer: str, shared: int, steps: int, threads: int) -> dict:
    """Time ``steps`` training steps at the widest width up to 640 whose estimate fits the memory available."""
    import torch

    import medkge
    from medkge import memory, runtime
    from medkge.losses import MEDObjective
    from medkge.training import Trainer, build_model

    torch.set_num_threads(threads)
    runtime.keep_freed_memory()
    runtime.flush_denormals()
    ds = medkge.load_dataset(folder)
    available = (memory.available_bytes(torch.device("cpu")) or 0) - MARGIN
    for width in range(640, 0, -10):
        cfg = medkge.Config().with_overrides(
            {
                "dataset": folder,
                "model.dims": f"10:{width}:10",
                "train.optimizer": optimizer,
                "train.shared_negatives": shared,
                "train.lr": 0.01 if optimizer != "row_adagrad" else 0.1,
                "eval.every": 0,
                "eval.test": False,
            }
        )
        estimate = memory.estimate(cfg, ds, optimizer)
        if sum(estimate.values()) <= available or optimizer != "row_adagrad":
            break  # only row-wise Adagrad is narrowed to fit: the other optimisers are compared at 640
    if sum(estimate.values()) > available:
        return {"skip": sum(estimate.values()), "available": available + MARGIN, "entities": ds.num_entities}
    model = build_model(cfg, ds)
    objective = MEDObjective(model.dims, cfg.loss, cfg.med)
    tmp = Path(f"/tmp/medkge-scale-child-{optimizer}-{shared}")
    trainer = Trainer(
        cfg,
        ds,
        model,
        objective,
        model_path=tmp / "m",
        checkpoint_path=tmp / "c",
        log_path=tmp / "l",
        progress=False,
        optimizer=optimizer,
    )
    g = torch.Generator().manual_seed(1)
    times = []
    for i in range(steps + 2):
        index = torch.randint(len(ds.train), (cfg.train.batch_size,), generator=g)
        started = time.perf_counter()
        trainer.step(ds.train[index], cfg.train.lr)
        if i >= 2:
            times.append(time.perf_counter() - started)
    median = sorted(times)[len(times) // 2]
    return {
        "s_per_step": median,
        "triples_per_s": cfg.train.batch_size / median,
        "peak": memory.peak_rss(),
        "estimate": sum(estimate.values()),
        "tables": estimate["entity table"] + estimate["relation table"],
        "entities": ds.num_entities,
        "width": width,
    }


def in_child(function: str, *args) -> dict:
    """Run ``function(*args)`` of this script in a fresh Python and return its JSON result."""
    here = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import scale; print(json.dumps(scale.{function}(*{args!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the benchmarks ---------------------------------------------------------------------------


def bench_load(args: argparse.Namespace) -> None:
    folder = data_folder(args.data, "7m")
    cache = folder / ".medkge-cache"
    size = sum((folder / f"{s}.txt").stat().st_size for s in ("train", "valid", "test"))
    print(f"loading {folder} ({size / 1e9:.2f} GB of text), {args.repeats} times each, fresh processes:\n")
    print("| what | seconds | peak RSS (GiB) | triples |")
    print("|---|---:|---:|---:|")
    for _ in range(args.repeats):
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        cold = in_child("child_load", str(folder), True)  # parses, then writes the cache
        warm = in_child("child_load", str(folder), True)
        for name, r in (("parse the text files (and write the cache)", cold), ("load from the cache", warm)):
            if "error" in r:
                print(f"| {name} | failed: {r['error']} | | |")
                continue
            print(f"| {name} | {r['seconds']:.1f} | {r['peak'] / GiB:.2f} | {r['triples']:,} |")


def bench_steps(args: argparse.Namespace) -> None:
    sizes = args.sizes.split(",")
    print(f"RotatE, batch 1024 x (1 + 64), {args.threads} threads, median of {args.steps} steps, fresh process each\n")
    header = (
        "| entities | width | optimizer | shared negatives | s/step | triples/s | peak RSS (GiB) | estimate (GiB) |"
    )
    print(header + " tables (GiB) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for _ in range(args.repeats):
        for size in sizes:
            folder = data_folder(args.data, size)
            for optimizer, shared in VARIANTS:
                r = in_child("child_steps", str(folder), optimizer, shared, args.steps, args.threads)
                cells = [f"{SIZES[size][0]:,}", str(r.get("width", 640)), optimizer, str(shared or "no")]
                if "error" in r:
                    print("| " + " | ".join(cells) + f" | failed: {r['error'][:150]} | | | | |", flush=True)
                elif "skip" in r:
                    note = f"does not fit: estimate {r['skip'] / GiB:.1f} GiB, {r['available'] / GiB:.1f} GiB available"
                    print("| " + " | ".join(cells) + f" | {note} | | | | |", flush=True)
                else:
                    cells += [f"{r['s_per_step']:.3f}", f"{r['triples_per_s']:,.0f}", f"{r['peak'] / GiB:.2f}"]
                    cells += [f"{r['estimate'] / GiB:.2f}", f"{r['tables'] / GiB:.2f}"]
                    print("| " + " | ".join(cells) + " |", flush=True)
    full = 7_000_000 * 2 * 640 * 4
    print(f"\n7M entities x 640 complex dims (RotatE): the entity table alone is {full / GiB:.1f} GiB;")
    rows = (full + 7_000_000 * 4) / GiB
    print(f"with row-wise Adagrad {rows:.1f} GiB of tables and state, with Adam {4 * full / GiB:.1f} GiB.")


def bench_denormals(args: argparse.Namespace) -> None:
    """MED's objective at ordinary and at saturated scores, with subnormals computed or flushed to zero."""
    code = """
import sys, time, torch
from medkge import runtime
from medkge.config import Config
from medkge.losses import MEDObjective
torch.set_num_threads(int(sys.argv[2]))
if sys.argv[1] == "flush":
    runtime.flush_denormals()
cfg = Config()
objective = MEDObjective(list(range(10, 641, 10)), cfg.loss, cfg.med)
g = torch.Generator().manual_seed(0)
for centre in (-1.0, -30.0, -90.0):
    scores = (torch.randn(1024, 65, 64, generator=g) * 3 + centre).requires_grad_()
    times = []
    for _ in range(7):
        started = time.perf_counter()
        loss, _ = objective(scores)
        loss.backward()
        times.append(time.perf_counter() - started)
    print(sys.argv[1], centre, sorted(times)[3] * 1000)
"""
    rows: dict[float, dict[str, float]] = {}
    for _ in range(args.repeats):
        for mode in ("plain", "flush"):
            out = subprocess.run(
                [sys.executable, "-c", code, mode, str(args.threads)], capture_output=True, text=True, check=True
            )
            for line in out.stdout.splitlines():
                m, centre, ms = line.split()
                rows.setdefault(float(centre), {})[m] = float(ms)
    print(f"MED objective (forward + backward), scores [1024, 65, 64] ~ N(centre, 3), {args.threads} threads,")
    print("median of 7\n")
    print("| scores around | subnormals computed (ms) | flushed to zero (ms) | ratio |")
    print("|---:|---:|---:|---:|")
    for centre, r in rows.items():
        print(f"| {centre:.0f} | {r['plain']:.1f} | {r['flush']:.1f} | {r['plain'] / r['flush']:.2f}x |")


def bench_quality(args: argparse.Namespace) -> None:
    """Shared negatives (and lazy Adam) against the defaults, same epochs, on real benchmarks."""
    import medkge

    variants = {
        "own negatives, adam": {},
        "shared negatives (64 per chunk), adam": {"train.shared_negatives": 64},
        "own negatives, sparse_adam": {"train.optimizer": "sparse_adam"},
    }
    settings = {"wn18rr": {"lr": 0.005, "loss.alpha": 0.5}, "fb15k237": {"lr": 0.005, "gamma": 9.0}}
    for name in args.datasets.split(","):
        rows = {}
        for label, extra in variants.items():
            if name != "wn18rr" and "sparse_adam" in label:
                continue
            folder = (
                Path(args.out) / f"{name}-{label.replace(' ', '').replace(',', '-').replace('(', '').replace(')', '')}"
            )
            options = {
                "dataset": name,
                "model": "rotate",
                "dims": [10, 20, 40, 80, 160, 320, 640],
                "epochs": args.epochs,
                "eval_every": args.epochs,
                "patience": 0,
                "train.threads": args.threads,
                **settings.get(name, {}),
                **extra,
            }
            if (folder / "results.json").is_file():
                run = medkge.Run.open(folder)
            elif (folder / "config.yaml").is_file():
                run = medkge.resume(folder)
            else:
                run = medkge.train(**options, out=folder)
            rows[label] = run.results()
        print(f"\n### {name}: MED RotatE, {args.epochs} epochs, test MRR per dim; training seconds\n")
        dims = [10, 40, 160, 640]
        print("| variant | " + " | ".join(map(str, dims)) + " | train s | s per epoch |")
        print("|---|" + "---:|" * (len(dims) + 2))
        for label, r in rows.items():
            mrr = [f"{r['test']['dims'][str(d)]['mrr']:.3f}" for d in dims]
            print(
                f"| {label} | "
                + " | ".join(mrr)
                + f" | {r['train_seconds']:.0f} | {r['train_seconds'] / r['epochs']:.1f} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("load", "steps", "denormals", "quality"))
    p.add_argument("--data", type=Path, default=Path("/tmp/medkge-scale"))
    p.add_argument("--sizes", default="40k,500k,2m,7m")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--datasets", default="wn18rr,fb15k237")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", default="runs/scale-quality")
    args = p.parse_args()
    {"load": bench_load, "steps": bench_steps, "denormals": bench_denormals, "quality": bench_quality}[args.what](args)


if __name__ == "__main__":
    main()
