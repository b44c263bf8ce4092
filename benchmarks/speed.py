"""Speed benchmark: MED's 64 sub-models against one 640-d model, DT's 64 models and PyKEEN (issue 6).

For each model (default: all six) on WN18RR, batch 1024 positives x 64 negatives, d_n = 640, measured side
by side, each in a fresh subprocess so that one measurement's memory does not inflate another's:

- train: one full training step (negative sampling, forward, backward, Adam) of MED with all 64 sub-models
  (MED's objective: base loss of every sub-model, mutual learning, dynamic weights), of one 640-d model
  (base loss), and of PyKEEN's 640-d model with the same batch, negatives and self-adversarial loss;
  steps interleaved, medians. medkge's steps use its trainer's optimiser (Adam, fused:
  ``medkge.training.adam``), PyKEEN's step the optimiser its pipeline builds (``torch.optim.Adam``).
  DT trains the 64 models one by one: its epoch costs the sum over the 64 dims of one d-dim step (same
  steps per epoch), so the ratio DT / MED is that sum over MED's step.
- eval: filtered evaluation (both directions, all entities) of all 64 sub-models on the whole test set,
  and PyKEEN's filtered evaluation of one 640-d model on the first ``--pykeen-eval-queries`` test
  triples, scaled linearly to the whole test set (PyKEEN needs ~40 minutes for all 3,134 here).
- peak memory: the peak resident set size of a subprocess that only trains MED (3 steps), and of the one
  that only evaluates MED.

The loss is the self-adversarial one on both sides (PyKEEN's NSSALoss with margin 6 and adversarial
temperature 1, plus the model's default regulariser as PyKEEN's training loop adds it). The scores are
each library's own: PyKEEN's RotatE is -||h * r - t||_2 over the complex vector, medkge's gamma minus
the sum of complex moduli (RotatE's paper); the cost per step is of the same order. PyKEEN picks head or
tail per negative, medkge per positive. PyKEEN's evaluation time includes its setup, scaled with the
queries, which slightly overstates it.

    pip install -c constraints.txt -e ".[bench]"        # PyKEEN, for the comparison columns
    python benchmarks/speed.py                          # all six models (about 30 minutes on 2 cores)
    python benchmarks/speed.py --models rotate --skip-eval

The PyKEEN columns are skipped, with a message, when PyKEEN is not installed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from timing import interleaved_medians

import medkge
from medkge.config import LossConfig, MedConfig
from medkge.evaluation import evaluate
from medkge.losses import MEDObjective, independent_loss
from medkge.optim import adam
from medkge.runtime import keep_freed_memory
from medkge.sampling import NegativeSampler
from medkge.training import score_batch

ALL_MODELS = ["rotate", "transe", "distmult", "complex", "simple", "pairre"]
PYKEEN_NAMES = {
    "rotate": "RotatE",
    "transe": "TransE",
    "distmult": "DistMult",
    "complex": "ComplEx",
    "simple": "SimplE",
    "pairre": "PairRE",
}
GAMMA, ALPHA = 6.0, 1.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(ALL_MODELS))
    p.add_argument("--dataset", default="wn18rr")
    p.add_argument("--dims", default="10:640:10")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant, after one warm-up")
    p.add_argument("--dt-repeats", type=int, default=2, help="timed steps per DT dim, after one warm-up")
    p.add_argument("--pykeen-eval-queries", type=int, default=100, help="test triples PyKEEN evaluates")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--no-pykeen", action="store_true", help="skip the PyKEEN columns")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the measurements to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measurement, print JSON
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p.parse_args()


# ---- the measurements, each run in its own subprocess -------------------------------------------
class Stepper:
    """One full training step of a model with an objective: sample, score, loss, backward, Adam."""

    def __init__(self, model: medkge.CroppableModel, objective, ds: medkge.Dataset, args: argparse.Namespace):
        self.model, self.objective, self.ds = model, objective, ds
        self.sampler = NegativeSampler(ds.train, ds.num_entities, ds.num_relations, args.negatives)
        params = [*model.parameters(), *(objective.parameters() if hasattr(objective, "parameters") else [])]
        self.optimizer = adam([p for p in params if p.requires_grad], 1e-4)  # the trainer's optimiser
        self.generator = torch.Generator().manual_seed(0)
        self.batch_size = args.batch_size
        self.step = 0

    def __call__(self) -> float:
        started = time.perf_counter()
        index = torch.randint(len(self.ds.train), (self.batch_size,), generator=self.generator)
        positives = self.ds.train[index]
        self.step += 1
        batch = self.sampler.batch(positives, self.step)
        loss = self.objective(score_batch(self.model, batch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started


class PyKEENStepper:
    """PyKEEN's step for one model: the same batch size, negatives, and self-adversarial loss (NSSA)."""

    def __init__(self, name: str, dim: int, ds: medkge.Dataset, args: argparse.Namespace):
        from pykeen.losses import NSSALoss
        from pykeen.models import model_resolver
        from pykeen.sampling import BasicNegativeSampler
        from pykeen.triples import CoreTriplesFactory

        self.factory = CoreTriplesFactory.create(ds.train, num_entities=ds.num_entities, num_relations=ds.num_relations)
        loss = NSSALoss(margin=GAMMA, adversarial_temperature=ALPHA)
        self.model = model_resolver.make(PYKEEN_NAMES[name], triples_factory=self.factory, embedding_dim=dim, loss=loss)
        self.sampler = BasicNegativeSampler(mapped_triples=self.factory.mapped_triples, num_negs_per_pos=args.negatives)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.generator = torch.Generator().manual_seed(0)
        self.ds, self.batch_size = ds, args.batch_size

    def __call__(self) -> float:
        started = time.perf_counter()
        index = torch.randint(len(self.ds.train), (self.batch_size,), generator=self.generator)
        positives = self.factory.mapped_triples[index]
        negatives, mask = self.sampler.sample(positive_batch=positives)
        pos = self.model.score_hrt(positives)
        neg = self.model.score_hrt(negatives.view(-1, 3)).view(len(positives), -1)
        loss = self.model.loss.process_slcwa_scores(
            positive_scores=pos, negative_scores=neg, batch_filter=mask, num_entities=self.ds.num_entities
        )
        loss = loss + self.model.collect_regularization_term()  # as PyKEEN's SLCWA loop does
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.post_parameter_update()
        return time.perf_counter() - started


def setting(args: argparse.Namespace) -> tuple[medkge.Dataset, list[int]]:
    """The benchmark's dataset and dims."""
    return medkge.load_dataset(args.dataset), medkge.Config().with_overrides({"model.dims": args.dims}).model.dims


def worker_train(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    ds, dims = setting(args)
    loss_cfg = LossConfig(alpha=ALPHA)

    def model_of(d: list[int]) -> medkge.CroppableModel:
        return medkge.CroppableModel(
            model_name, ds.num_entities, ds.num_relations, d, gamma=GAMMA, gamma_width=dims[-1]
        )

    med = MEDObjective(dims, loss_cfg, MedConfig())
    steppers = [
        Stepper(model_of(dims), lambda s: med(s)[0], ds, args),
        Stepper(model_of(dims[-1:]), lambda s: independent_loss(s, loss_cfg), ds, args),
    ]
    pykeen = None
    if not args.no_pykeen:
        try:
            steppers.append(PyKEENStepper(model_name, dims[-1], ds, args))
            pykeen = True
        except ImportError:
            pykeen = None
    times = interleaved_medians(steppers, args.repeats)
    del steppers
    dt = 0.0  # DT: the 64 models one by one
    for d in dims:
        single = Stepper(model_of([d]), lambda s: independent_loss(s, loss_cfg), ds, args)
        (t,) = interleaved_medians([single], args.dt_repeats)
        dt += t
    return {
        "med_step": times[0],
        "single_step": times[1],
        "pykeen_step": times[2] if pykeen else None,
        "dt_steps": dt,
        "triples_per_step": args.batch_size * (1 + args.negatives),
        "steps_per_epoch": -(-len(ds.train) // args.batch_size),
    }


def worker_memory(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """MED's training steps alone, for the peak memory of training all sub-models."""
    ds, dims = setting(args)
    model = medkge.CroppableModel(model_name, ds.num_entities, ds.num_relations, dims, gamma=GAMMA)
    med = MEDObjective(dims, LossConfig(alpha=ALPHA), MedConfig())
    step = Stepper(model, lambda s: med(s)[0], ds, args)
    for _ in range(3):
        step()
    return {}


def worker_eval(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    ds, dims = setting(args)
    model = medkge.CroppableModel(model_name, ds.num_entities, ds.num_relations, dims, gamma=GAMMA)
    started = time.perf_counter()
    evaluate(model, ds, "test", progress=False)
    return {"med_eval": time.perf_counter() - started, "test_triples": len(ds.test)}


def worker_pykeen_eval(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.models import model_resolver
    from pykeen.triples import CoreTriplesFactory

    ds, dims = setting(args)
    factory = CoreTriplesFactory.create(ds.train, num_entities=ds.num_entities, num_relations=ds.num_relations)
    model = model_resolver.make(PYKEEN_NAMES[model_name], triples_factory=factory, embedding_dim=dims[-1])
    queries = ds.test[: args.pykeen_eval_queries]
    evaluator = RankBasedEvaluator(filtered=True)
    started = time.perf_counter()
    evaluator.evaluate(
        model, queries, additional_filter_triples=[ds.train, ds.valid, ds.test], batch_size=32, use_tqdm=False
    )
    seconds = time.perf_counter() - started
    return {"pykeen_eval": seconds * len(ds.test) / len(queries), "pykeen_eval_queries": len(queries)}


WORKER_OPTIONS = (
    "dataset",
    "dims",
    "batch_size",
    "negatives",
    "repeats",
    "dt_repeats",
    "pykeen_eval_queries",
    "threads",
)
WORKERS = {"train": worker_train, "memory": worker_memory, "eval": worker_eval, "pykeen_eval": worker_pykeen_eval}


def run_worker(kind: str, model: str, argv: list[str]) -> dict[str, Any]:
    """Run one measurement in a fresh process; its JSON result and its peak resident memory."""
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--worker", kind, "--model", model], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} of {model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pykeen_available() -> bool:
    try:
        import pykeen  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        keep_freed_memory()  # what medkge's trainer does (runtime.py); PyKEEN gets the same allocator
        result = WORKERS[args.worker](args.model, args)
        result[f"{args.worker}_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    pykeen = not args.no_pykeen and pykeen_available()
    if not args.no_pykeen and not pykeen:
        print("PyKEEN is not installed: skipping its columns (pip install -c constraints.txt -e '.[bench]')")
    argv = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in WORKER_OPTIONS]
    argv += [] if pykeen else ["--no-pykeen"]
    print(
        f"# {args.dataset}, batch {args.batch_size} x (1 + {args.negatives}), dims {args.dims}, "
        f"{args.threads} CPU threads, torch {torch.__version__}"
    )
    rows = []
    for name in args.models.split(","):
        row = {"model": name, **run_worker("train", name, argv), **run_worker("memory", name, argv)}
        if not args.skip_eval:
            row |= run_worker("eval", name, argv)
            if pykeen:
                row |= run_worker("pykeen_eval", name, argv)
        rows.append(row)
        print_row(row, first=len(rows) == 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


def print_row(r: dict[str, Any], first: bool) -> None:
    def fmt(x: float | None, spec: str = ".3f") -> str:
        return "–" if x is None else format(x, spec)

    if first:
        print(
            "| model | MED step (s) | one d_n step (s) | MED / d_n | PyKEEN d_n step (s) | MED / PyKEEN "
            "| DT steps, all dims (s) | DT / MED | MED triples/s | MED eval (s) | PyKEEN eval (s) | MED / PyKEEN eval "
            "| MED train peak (GiB) | MED eval peak (GiB) |"
        )
        print("|---|" + "---:|" * 13)
    pk = r.get("pykeen_step")
    pk_eval = r.get("pykeen_eval")
    print(
        f"| {r['model']} | {fmt(r['med_step'])} | {fmt(r['single_step'])} | {r['med_step'] / r['single_step']:.2f}x "
        f"| {fmt(pk)} | {fmt(r['med_step'] / pk if pk else None, '.2f')}x "
        f"| {fmt(r['dt_steps'], '.2f')} | {r['dt_steps'] / r['med_step']:.1f}x "
        f"| {r['triples_per_step'] / r['med_step']:,.0f} | {fmt(r.get('med_eval'), '.1f')} "
        f"| {fmt(pk_eval, '.0f')} | {fmt(r['med_eval'] / pk_eval if pk_eval else None, '.3f')}x "
        f"| {fmt(r.get('memory_peak_gib'), '.2f')} | {fmt(r.get('eval_peak_gib'), '.2f')} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
