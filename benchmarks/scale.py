"""Scale benchmark: loading, training steps and memory on synthetic graphs of 40k to 7M entities.

    python benchmarks/scale.py load                 # 50M triples: parse, then load from the cache
    python benchmarks/scale.py steps                # s/step, triples/s, peak memory per size and optimiser
    python benchmarks/scale.py denormals            # the cost of subnormal floats, the flush, gamma 12 vs 6
    python benchmarks/scale.py quality --datasets wn18rr,fb15k237 --epochs 8   # shared negatives' effect
    python benchmarks/scale.py quality --datasets 2m-4m --epochs 2 --dims 10,20,40   # optimisers at 2M entities

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
    "150k": (150_000, 1_070_000),
    "300k": (300_000, 2_150_000),
    "500k": (500_000, 3_600_000),
    "2m": (2_000_000, 14_300_000),
    "2m-4m": (2_000_000, 4_000_000),  # as many entities, WN18RR's ~2 triples per entity: quality in a few epochs
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


def med_trainer(cfg, ds, optimizer: str, tag: str):
    """medkge's own Trainer of MED for ``cfg`` (files under /tmp, never written by the steps timed here)."""
    from medkge.losses import MEDObjective
    from medkge.training import Trainer, build_model

    model = build_model(cfg, ds)
    tmp = Path(f"/tmp/medkge-scale-{tag}")
    paths = {"model_path": tmp / "m", "checkpoint_path": tmp / "c", "log_path": tmp / "l"}
    cfg = cfg.with_overrides({"train.optimizer": optimizer})
    return Trainer(cfg, ds, model, MEDObjective(model.dims, cfg.loss, cfg.med), **paths, progress=False)


def child_steps(folder: str, optimizer: str, shared: int, steps: int, threads: int) -> dict:
    """Time ``steps`` training steps at the widest width up to 640 whose estimate fits the memory available."""
    import torch

    import medkge
    from medkge import memory, runtime

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
    trainer = med_trainer(cfg, ds, optimizer, f"child-{optimizer}-{shared}")
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


def child_gamma(gamma: float, flush: bool, threads: int, steps: int) -> dict:
    """WN18RR, MED RotatE 10..640, dense Adam lr 0.01: s/step of the first 10 steps and of steps 21..``steps``
    at RotatE's margin ``gamma``, subnormals flushed or not, and the positive scores reached."""
    import torch

    import medkge
    from medkge import runtime

    torch.set_num_threads(threads)
    runtime.keep_freed_memory()
    if flush:
        runtime.flush_denormals()
    ds = medkge.load_dataset("wn18rr")
    overrides = {"dataset": "wn18rr", "model.dims": "10:640:10", "model.gamma": gamma, "train.optimizer": "adam"}
    cfg = medkge.Config().with_overrides({**overrides, "train.lr": 0.01, "eval.every": 0})
    torch.manual_seed(0)
    trainer = med_trainer(cfg, ds, "adam", "gamma")
    model = trainer.model
    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(steps):
        index = torch.randint(len(ds.train), (cfg.train.batch_size,), generator=g)
        started = time.perf_counter()
        trainer.step(ds.train[index], cfg.train.lr)
        times.append(time.perf_counter() - started)
    with torch.no_grad():
        scores = model.score_hrt(ds.train[:1024])
    return {
        "first": sorted(times[:10])[5],
        "later": sorted(times[20:])[len(times[20:]) // 2],
        "min_score": float(scores.min()),
        "median_score": float(scores.median()),
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
    variants = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
    print(f"RotatE, batch 1024 x (1 + 64), {args.threads} threads, median of {args.steps} steps, fresh process each\n")
    header = (
        "| entities | width | optimizer | shared negatives | s/step | triples/s | peak RSS (GiB) | estimate (GiB) |"
    )
    print(header + " tables (GiB) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for _ in range(args.repeats):
        for size in sizes:
            folder = data_folder(args.data, size)
            for optimizer, shared in variants:
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
runtime.keep_freed_memory()
if sys.argv[1] == "flush":
    runtime.flush_denormals()
cfg = Config()
objective = MEDObjective(list(range(10, 641, 10)), cfg.loss, cfg.med)
g = torch.Generator().manual_seed(0)
for centre in (-1.0, -30.0, -90.0):
    scores = (torch.randn(1024, 65, 64, generator=g) * 3 + centre).requires_grad_()
    times = []
    for _ in range(9):  # two warm-up passes, then 7 timed
        started = time.perf_counter()
        loss, _ = objective(scores)
        loss.backward()
        times.append(time.perf_counter() - started)
    print(sys.argv[1], centre, sorted(times[2:])[3] * 1000)
"""
    rows: dict[float, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        for mode in ("plain", "flush"):
            out = subprocess.run(
                [sys.executable, "-c", code, mode, str(args.threads)], capture_output=True, text=True, check=True
            )
            for line in out.stdout.splitlines():
                m, centre, ms = line.split()
                rows.setdefault(float(centre), {}).setdefault(m, []).append(float(ms))
    print(f"MED objective (forward + backward), scores [1024, 65, 64] ~ N(centre, 3), {args.threads} threads,")
    print(f"median of 7 in a process, median over {args.repeats} processes per mode (alternating)\n")
    print("| scores around | subnormals computed (ms) | flushed to zero (ms) | ratio |")
    print("|---:|---:|---:|---:|")
    for centre, r in rows.items():
        plain, flush = (sorted(r[m])[len(r[m]) // 2] for m in ("plain", "flush"))
        print(f"| {centre:.0f} | {plain:.1f} | {flush:.1f} | {plain / flush:.2f}x |")
    print(f"\nWN18RR training steps, MED RotatE 10..640, Adam lr 0.01, {args.threads} threads, fresh process each:\n")
    print("| gamma | subnormals | s/step, steps 1-10 | s/step, steps 21-40 | positive scores at step 40: min, median |")
    print("|---:|---|---:|---:|---|")
    for flush in (False, True):
        for gamma in (12.0, 6.0):
            r = in_child("child_gamma", gamma, flush, args.threads, 40)
            if "error" in r:
                print(f"| {gamma:g} | {'flushed' if flush else 'computed'} | failed: {r['error'][:150]} | | |")
                continue
            print(
                f"| {gamma:g} | {'flushed' if flush else 'computed'} | {r['first']:.3f} | {r['later']:.3f} "
                f"| {r['min_score']:.1f}, {r['median_score']:.1f} |",
                flush=True,
            )


def bench_quality(args: argparse.Namespace) -> None:
    """Quality at equal epochs, MRR per dim on validation (the run's validation at its last epoch) and on test.
    On real benchmarks (wn18rr, fb15k237): shared negatives against each positive's own negatives (dense Adam).
    On a synthetic graph (a size of SIZES, e.g. 2m-4m): lazy Adam against row-wise Adagrad, each with own and
    shared negatives and at its own default learning rate, on the sampled protocol (the graphs these optimisers
    are for are too large to rank fully). ``--report-only`` trains nothing and reports the runs in ``--out`` as
    far as they got (a run stopped during its final test has no test row)."""
    import json

    import medkge
    from medkge.evaluation import is_full

    settings = {"wn18rr": {"lr": 0.005, "loss.alpha": 0.5}, "fb15k237": {"lr": 0.005, "gamma": 9.0}}
    dims = [int(d) for d in args.dims.split(",")]
    for name in args.datasets.split(","):
        if name in SIZES:  # optimiser, shared negatives
            variants = [("sparse_adam", 0), ("row_adagrad", 0), ("sparse_adam", 64), ("row_adagrad", 64)]
            dataset, extra = str(data_folder(args.data, name)), {"eval.protocol": "sampled"}
        else:
            variants, dataset, extra = [("adam", 0), ("adam", 64)], name, settings.get(name, {})
        rows = {}
        for optimizer, shared in variants:
            label = f"{optimizer}, " + (f"shared negatives ({shared} per chunk)" if shared else "own negatives")
            # the folder names of the first runs (wn18rr, fb15k237 with dense Adam), which spelt the variant out
            tag = f"sharednegatives{shared}perchunk" if shared else "ownnegatives"
            folder = Path(args.out) / f"{name}-{tag}-{optimizer}"
            options = {
                "dataset": dataset,
                "model": "rotate",
                "dims": dims,
                "epochs": args.epochs,
                "eval_every": args.epochs,
                "patience": 0,
                "train.threads": args.threads,
                "train.optimizer": optimizer,
                "train.shared_negatives": shared,
                **extra,
            }
            if args.report_only:
                if not (folder / "metrics.jsonl").is_file():
                    continue
            elif (folder / "results.json").is_file():
                pass
            elif (folder / "config.yaml").is_file():
                medkge.resume(folder)
            else:
                medkge.train(**options, out=folder)
            records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            valid = [r for r in records if r.get("type") == "valid"]
            done = folder / "results.json"
            rows[label] = (valid[-1] if valid else None, json.loads(done.read_text()) if done.is_file() else None)
        print(f"\n### {name}: MED RotatE, {args.epochs} epochs, filtered MRR per dim\n")
        print("| variant | lr | split | " + " | ".join(map(str, dims)) + " |")
        print("|---|---:|---|" + "---:|" * len(dims))
        for label, (valid, results) in rows.items():
            lr = f"{results['lr']:g}" if results else ""
            shown = "valid" if not valid or is_full(valid.get("protocol", "full")) else f"valid, {valid['protocol']}"
            for split, per_dim in ((shown, valid and valid["dims"]), ("test", results and results["test"]["dims"])):
                if per_dim:
                    mrr = [f"{per_dim[str(d)]['mrr']:.3f}" for d in dims]
                    print(f"| {label} | {lr} | {split} | " + " | ".join(mrr) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("load", "steps", "denormals", "quality"))
    p.add_argument("--data", type=Path, default=Path("/tmp/medkge-scale"))
    p.add_argument("--sizes", default="40k,500k,2m,7m")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--variants",
        default=",".join(f"{o}:{k}" for o, k in VARIANTS),
        help="optimizer:shared_negatives pairs for steps",
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--datasets", default="wn18rr,fb15k237")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--dims", default="10,20,40,80,160,320,640", help="quality: the sub-models")
    p.add_argument("--out", default="runs/scale-quality")
    p.add_argument("--report-only", action="store_true", help="quality: report the runs in --out, train nothing")
    args = p.parse_args()
    {"load": bench_load, "steps": bench_steps, "denormals": bench_denormals, "quality": bench_quality}[args.what](args)


if __name__ == "__main__":
    main()
