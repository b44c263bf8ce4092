"""The ``medkge`` command line, built on the Python API.

User mistakes print one line, ``medkge: error: ...``, and exit with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MedkgeError
from .layout import INFO_FILE, RESULTS_FILE

EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.handler(args) or 0
    except MedkgeError as error:
        print(f"medkge: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:  # the file system's, on a file no code path named: still one line
        where = f"{error.filename}: " if error.filename else ""
        print(f"medkge: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        training = args.handler is cmd_train and getattr(args, "out", None)
        hint = f"; continue with `medkge train --resume {args.out}`" if training else ""
        print(f"medkge: interrupted{hint}", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """medkge's own warnings as one line, ``medkge: warning: ...``; others as Python prints them."""
    from .errors import MedkgeWarning

    if issubclass(category, MedkgeWarning):
        print(f"medkge: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medkge", description="Croppable knowledge graph embeddings: train every size at once, crop any."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks

    p = sub.add_parser("datasets", help="list the bundled datasets and their sizes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_datasets)

    p = sub.add_parser("train", help="train a run (MED by default)", description=TRAIN_HELP, formatter_class=raw)
    p.add_argument("config", nargs="?", help="YAML config file (see configs/); flags below override it")
    p.add_argument("--out", help="run folder to create (default runs/<dataset>-<model>-<method>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the interrupted run in this folder")
    for name, key in _flag_aliases().items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar="X", help=f"sets {key}")
    p.add_argument(
        "--drop-unseen",
        action="store_true",
        default=None,
        help="drop valid/test triples whose entities or relation do not occur in train (sets drop_unseen)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any option, e.g. train.lr=0.01",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="filtered link prediction of every sub-model of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--dims", help="dims to evaluate, e.g. 10,40,640 (any d up to the largest for MED)")
    p.add_argument("--ties", choices=("realistic", "optimistic", "pessimistic"))
    p.add_argument(
        "--protocol",
        choices=("full", "sampled"),
        help="full: rank among all entities; sampled: among --sampled-candidates corrupted entities per query and "
        "side, filtered (default: the run's eval.protocol)",
    )
    p.add_argument("--sampled-candidates", type=int, metavar="N", help="sampled protocol: candidates per side")
    p.add_argument("--sampled-seed", type=int, metavar="S", help="sampled protocol: seed of the candidate sets")
    p.add_argument(
        "--subset",
        type=int,
        metavar="N",
        help="rank N triples of the split, drawn once with the sampled seed (a cheaper estimate of all of them)",
    )
    p.add_argument(
        "--candidates",
        metavar="FILE|tails:R",
        help="rank tails only, among these entities: a file of labels (one a line), or tails:R (the tails of "
        "relation R; R's triples are ranked); implies --recommend",
    )
    p.add_argument("--relation", metavar="R[,R...]", help="with --candidates: rank the triples of these relations")
    p.add_argument(
        "--recommend",
        action="store_true",
        help="also ndcg@k and recall@k per (head, relation) query, all its tails in the split relevant",
    )
    p.add_argument("--ks", metavar="K,K,...", help="the k of ndcg@k and recall@k (default 5,10,20)")
    p.add_argument(
        "--recall-norm",
        choices=("relevant", "min"),
        help="recall@k = hits / relevant answers (default), or hits / min(k, relevant answers)",
    )
    p.add_argument(
        "--funnel",
        metavar="D:K",
        help="also the filtered metrics of the funnel: shortlist K answers with the D-d prefix, rerank them at each "
        "dim (an answer outside the shortlist ranks after all K); printed beside exact ranking",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("info", help="summarise a run folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser("config", help="print every configuration option with its default and help")
    p.add_argument("--yaml", action="store_true", help="print the default configuration as YAML")
    p.set_defaults(handler=cmd_config)

    p = sub.add_parser(
        "crop", help="write a standalone model of any dim from a run", description=CROP_HELP, formatter_class=raw
    )
    p.add_argument("model", metavar="RUN", help="run folder (or a cropped model folder, to crop it further)")
    p.add_argument("--dim", type=int, required=True, help="any dim from 1 to the run's widest")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the cropped model into")
    p.add_argument("--force", action="store_true", help="overwrite an earlier export or crop in DIR")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "int8"),
        help="how the tables are stored (default: the source's; int8: one scale per entity row, a quarter the bytes)",
    )
    p.add_argument("--json", action="store_true", help="print the model description as JSON")
    p.set_defaults(handler=cmd_crop)

    p = sub.add_parser(
        "predict", help="rank the tails (or heads) of a query by label", description=PREDICT_HELP, formatter_class=raw
    )
    p.add_argument("model", metavar="MODEL", help="run folder or cropped model folder")
    p.add_argument("--head", metavar="H", help="predict tails of (H, R, ?)")
    p.add_argument("--tail", metavar="T", help="predict heads of (?, R, T)")
    p.add_argument("--relation", metavar="R", required=True)
    p.add_argument("--dim", type=int, help="the sub-model to use (default: the widest)")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="how many answers (default 10)")
    p.add_argument("--exclude-known", action="store_true", help="drop answers that form known triples")
    p.add_argument("--dataset", metavar="NAME_OR_DIR", help="known triples for --exclude-known (cropped models)")
    p.add_argument("--ids", action="store_true", help="H, T and R are ids, not labels")
    p.add_argument(
        "--funnel", metavar="D:K", help="shortlist K answers with the D-d prefix, rerank them at --dim (e.g. 10:200)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser(
        "serve", help="serve a model over HTTP, any dim per request", description=SERVE_HELP, formatter_class=raw
    )
    p.add_argument("model", metavar="MODEL", help="run folder or cropped model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed at start)")
    p.add_argument("--dims", help="the dims served, e.g. 10,40,160,640 (default: every dim up to the widest)")
    p.add_argument("--dataset", metavar="NAME_OR_DIR", help="known triples for exclude_known (cropped models)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--workers", type=int, help="scoring threads (default: one per CPU core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--max-k", type=int, default=1000, help="the largest k a request may ask for")
    p.add_argument("--max-batch", type=int, default=1000, help="queries (or triples) per POST request at most")
    p.add_argument("--max-pending", type=int, default=10_000, help="queries waiting at most; beyond: 503")
    p.add_argument("--no-batching", action="store_true", help="score every GET /predict query on its own")
    p.add_argument(
        "--crop-cache", type=float, default=256, metavar="MIB", help="memory for copies of small dims (default 256)"
    )
    p.add_argument("--tune-malloc", action="store_true", help="keep freed memory for reuse (see train.tune_malloc)")
    p.add_argument("--max-requests", type=int, metavar="N", help="stop after N requests")
    p.add_argument("--max-seconds", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--index",
        metavar="DIMS",
        help="build an approximate nearest-neighbour index (faiss HNSW; the ann extra) for /similar at these dims",
    )
    p.add_argument("--openapi", action="store_true", help="print the OpenAPI schema (JSON) and exit, serving nothing")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("export", help="export a model as npy, tsv (embedding projector) or onnx")
    p.add_argument("model", metavar="MODEL", help="run folder or cropped model folder")
    p.add_argument("--format", required=True, choices=("npy", "tsv", "onnx"))
    p.add_argument("--dim", type=int, help="the dim to export (default: the widest)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    p.add_argument("--force", action="store_true", help="overwrite an earlier export or crop in DIR")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "int8"),
        default="float32",
        help="npy only: how the arrays are stored (int8: entity_scale.npy holds one scale per entity row)",
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("select", help="the smallest sub-model that is good enough on validation")
    p.add_argument("model", metavar="RUN", help="run folder")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--min-mrr", type=float, metavar="X", help="smallest dim with validation MRR >= X")
    target.add_argument(
        "--max-drop", type=float, metavar="F", help="smallest dim with MRR at most a fraction F below the widest's"
    )
    p.add_argument("--dims", help="evaluate these dims now (one pass) instead of the recorded ones, e.g. 5:80:5")
    p.add_argument("--crop", metavar="DIR", help="also write the selected sub-model as a cropped model to DIR")
    p.add_argument("--force", action="store_true", help="overwrite an earlier crop in DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar (evaluating --dims)")
    p.set_defaults(handler=cmd_select)

    p = sub.add_parser("compare", help="one table and one plot of quality against dimension for several runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders (MED, DT, BKD, DualDE, ablations)")
    p.add_argument("--out", metavar="DIR", help="write comparison.md, comparison.csv and comparison.png here")
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--dims", help="table rows (default: the dims every run has), e.g. 10,40,160,640")
    p.add_argument("--labels", help="comma-separated labels, one per run (default: from each run's config)")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("curves", help="validation quality and training loss against epoch, per dim, for runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, finished or still training")
    p.add_argument("--out", metavar="DIR", help="write curves.md and curves.png here")
    p.add_argument("--dims", help="the dims to show (default: 10, 40, 160, 640 of MED's 10:640:10), e.g. 10,20,40")
    p.add_argument("--metric", default="mrr", help="a validation metric the runs logged: mrr (default), hits@10")
    p.add_argument("--labels", help="comma-separated labels, one per run (default: the folders' names)")
    p.set_defaults(handler=cmd_curves)
    return parser


TRAIN_HELP = """Train a run. Examples:
  medkge train --dataset kinships --model rotate --dims 10,20,40,80 --epochs 100 --out runs/kin
  medkge train configs/med-rotate-wn18rr.yaml --out runs/wn --set train.device=cuda
  medkge train --method dt --dataset kinships --dims 10,40,160 --out runs/kin-dt
  medkge train --resume runs/kin"""


CROP_HELP = """Write a standalone D-dimensional model (safetensors tables, vocabularies, model.json) that
loads without the run folder. Any D from 1 to the widest dim works for a MED run; the output says whether
D was a trained sub-model. Example:
  medkge crop runs/kin --dim 20 --out runs/kin-20"""

PREDICT_HELP = """Rank the answers of a query with a run or a cropped model. Examples:
  medkge predict runs/kin --head person84 --relation term21 --dim 20 --top-k 5
  medkge predict runs/kin-20 --tail person85 --relation term21 --exclude-known --json"""

SERVE_HELP = """Serve a run or a cropped model over HTTP (needs pip install 'medkge[serve]'): each request
chooses its dim, scored from one copy of the tables. API docs at /docs. Examples:
  medkge serve runs/kin --port 8000
  curl 'http://127.0.0.1:8000/predict?head=person84&relation=term21&k=5&dim=20'"""


def _flag_aliases() -> dict[str, str]:
    from .config import ALIASES

    return ALIASES


def _version() -> str:
    from . import __version__

    return __version__


def cmd_datasets(args: argparse.Namespace) -> int:
    from .datasets import list_datasets, load_dataset

    rows = [load_dataset(name).summary() for name in list_datasets()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    keys = ["name", "entities", "relations", "train", "valid", "test"]
    print(_table(keys, [[f"{r[k]:,}" if isinstance(r[k], int) else r[k] for k in keys] for r in rows]))
    return 0


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items by key; the values stay strings for the config to parse and check."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise MedkgeError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import launched
    from .methods import resume, train

    progress = not args.quiet
    distributed = launched()  # under torchrun: every rank runs this command
    rank = int(os.environ.get("RANK", 0)) if distributed else 0
    cfg = None
    threads = None  # with --resume, the one option that may change: --set train.threads=N
    if args.resume:
        given = any(v is not None for k, v in vars(args).items() if k.startswith("opt_"))
        overrides = parse_overrides(args.overrides)
        if args.config or given or args.drop_unseen or overrides.keys() - {"train.threads"}:
            raise MedkgeError(
                "--resume continues a run with its own saved config; give no other options (but --set train.threads=N)"
            )
        if overrides:
            from .config import Config

            threads = Config().with_overrides(overrides).train.threads  # the config's own type and range checks
        args.out = args.resume
    else:
        options: dict[str, Any] = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
        if args.drop_unseen:
            options["drop_unseen"] = True
        options |= parse_overrides(args.overrides)
        if args.config and not Path(args.config).is_file():
            raise MedkgeError(f"{args.config}: no such config file")
        from .methods import default_run_name, make_config

        cfg = make_config(args.config, **options)
        if distributed and not args.out:
            raise MedkgeError("under torchrun give --out RUN: every rank must name the same run folder")
        args.out = args.out or str(Path("runs") / default_run_name(cfg))
        if rank == 0:
            print(f"training {cfg.method} {cfg.model.name} on {cfg.dataset} -> {args.out}", file=sys.stderr)
    run = (
        resume(args.resume, progress=progress, threads=threads)
        if args.resume
        else train(cfg, out=args.out, progress=progress)
    )
    path = Path(args.out) if run is None else run.path
    if rank:
        return 0
    from .evaluation import Metrics
    from .files import read_json

    results = read_json(path / RESULTS_FILE) if (path / RESULTS_FILE).is_file() else {}
    print(f"run folder: {path}")
    if "test" in results:
        test = Metrics.from_dict(results["test"])
        print(f"test metrics ({test.describe()}), training took {results['train_seconds']:.1f} s:")
        print(test.table())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .run import Run
    from .runtime import resolve_device

    run = Run.open(args.run, device=resolve_device(args.device, "--device"))
    dims = _parse_dims(args.dims) if args.dims else None
    if args.candidates or args.recommend or args.ks or args.recall_norm or args.relation:
        return _evaluate_recommendation(args, run, dims)
    if args.sampled_candidates is not None and args.sampled_candidates < 1:
        raise MedkgeError(f"--sampled-candidates must be a positive number, got {args.sampled_candidates}")
    if args.subset is not None and args.subset < 1:
        raise MedkgeError(f"--subset must be a positive number, got {args.subset}")
    if args.subset is not None and args.funnel:
        raise MedkgeError("--funnel ranks every triple of the split: not --subset")
    protocol = {
        "protocol": args.protocol,
        "sampled_candidates": args.sampled_candidates,
        "sampled_seed": args.sampled_seed,
        "subset": args.subset,
    }
    metrics = run.evaluate(args.split, dims, ties=args.ties, progress=not args.quiet, **protocol)
    if args.funnel:
        return _evaluate_funnel(args, run, metrics)
    if args.json:
        print(metrics.to_json())
    else:
        print(f"{args.split} metrics ({metrics.describe()}) of {run.path}:")
        print(metrics.table())
    return 0


def _evaluate_funnel(args: argparse.Namespace, run: Any, exact: Any) -> int:
    from .funnel import evaluate_funnel
    from .inference import Funnel

    if len(run.models) != 1:
        raise MedkgeError("--funnel needs a croppable (MED) run: it shortlists with a prefix of the one table")
    if exact.protocol != "full":
        raise MedkgeError("--funnel ranks all entities: use --protocol full")
    funnel = Funnel.parse(args.funnel, ("--funnel",))
    assert funnel is not None
    ties = args.ties or run.config.eval.ties
    metrics = evaluate_funnel(
        run.model, run.dataset(), funnel, exact.dims, args.split, ties=ties, progress=not args.quiet
    )
    if args.json:
        print(json.dumps({"exact": exact.to_dict(), "funnel": metrics.to_dict()}, indent=2))
        return 0
    print(f"{args.split} metrics ({exact.describe()}) of {run.path}, exact ranking:")
    print(exact.table())
    print(f"\nthe funnel {funnel}: every entity scored with the {funnel.dim}-d prefix, the best {funnel.k} reranked")
    print("at each dim; a true answer outside the shortlist ranks after all of them (at its own rank by the prefix):")
    print(metrics.table())
    return 0


def _evaluate_recommendation(args: argparse.Namespace, run: Any, dims: list[int] | None) -> int:
    from .evaluation import METRICS
    from .recommend import DEFAULT_KS, Candidates, evaluate_recommendation

    if args.relation and not args.candidates:
        raise MedkgeError("--relation needs --candidates (the entities its tails are ranked among)")
    if getattr(args, "protocol", None) == "sampled":
        raise MedkgeError("--candidates and the recommendation metrics rank all candidates: not --protocol sampled")
    if getattr(args, "subset", None) is not None:
        raise MedkgeError("--candidates and the recommendation metrics rank every triple: not --subset")
    dataset = run.dataset()
    relations = [x.strip() for x in args.relation.split(",")] if args.relation else None
    candidates = Candidates.parse(args.candidates, dataset, relations) if args.candidates else None
    ks = DEFAULT_KS if not args.ks else [_positive_int(x, "--ks") for x in args.ks.split(",")]
    recall = args.recall_norm or "relevant"
    options = {"candidates": candidates, "dims": dims, "ks": ks, "recall": recall, "ties": args.ties}
    metrics = evaluate_recommendation(run, dataset, args.split, **options, progress=not args.quiet)
    first = metrics[metrics.dims[0]]
    if args.json:
        ranked = {"entities": len(candidates.entities), "source": candidates.source} if candidates else None
        if candidates is not None and candidates.relations is not None:
            ranked = (ranked or {}) | {"relations": [dataset.relations[r] for r in candidates.relations]}
        print(json.dumps(metrics.to_dict() | {"candidates": ranked, "recall": recall}, indent=2))
        return 0
    norm = "hits / relevant" if recall == "relevant" else "hits / min(k, relevant)"
    print(f"{args.split} metrics ({metrics.describe()}) of {run.path}:")
    if candidates is not None:
        ranked = f"tails ranked among {candidates.describe(dataset)}: {first['queries']:,} triples"
    else:
        ranked = f"ranked among all {dataset.num_entities:,} entities (MRR, MR, Hits: both directions)"
    print(f"{ranked}; ndcg@k and recall@k over {first['lists']:,} (head, relation, ?) lists, recall@k = {norm}")
    keys = [k for k in first if k.startswith(("ndcg@", "recall@"))]
    print(metrics.table([*METRICS, *keys]))
    return 0


def _positive_int(text: str, option: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise MedkgeError(f"{option}: expected positive integers, got {text!r}")
    return int(text)


def cmd_info(args: argparse.Namespace) -> int:
    from .evaluation import is_full
    from .run import Run

    run = Run.open(args.run)
    results = run.results()
    cfg = run.config
    info: dict[str, Any] = {
        "run": str(run.path),
        "method": cfg.method,
        "dataset": cfg.dataset,
        "model": cfg.model.name,
        "dims": run.dims,
        "entities": len(run.entities),
        "relations": len(run.relations),
        "status": "finished" if results else "not finished (resume with `medkge train --resume`)",
    }
    if results:
        info |= {
            k: results[k] for k in ("device", "train_seconds", "epochs", "best_epoch", "stopped_early") if k in results
        }
        if "train_seconds" in info:
            info["train_seconds"] = round(info["train_seconds"], 1)
        if "test" in results:
            test = results["test"]["dims"]
            info["test_mrr"] = {d: round(v["mrr"], 4) for d, v in test.items()}
            protocol = results["test"].get("protocol", "full")
            if not is_full(protocol):  # eval.protocol: sampled
                info["test_protocol"] = protocol
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "dims":
            value = _short_dims(value)
        if key == "test_mrr":
            shown = list(value.items())
            if len(shown) > 8:
                shown = [*shown[:3], ("...", ""), *shown[-3:]]
            value = "  ".join(f"{d}: {v}" for d, v in shown)
        print(f"{key:>15}: {value}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from .config import Config, describe

    if args.yaml:
        print(Config().to_yaml(), end="")
        return 0
    rows = [
        [key, _short_dims(default) if key == "model.dims" else repr(default), help] for key, default, help in describe()
    ]
    print(_table(["key", "default", "help"], rows, align_left=True))
    return 0


def cmd_crop(args: argparse.Namespace) -> int:
    from .deploy import folder_size, load
    from .files import discard_on_failure, lock_folder

    source = load(args.model)
    cropped = source.crop(args.dim)
    with lock_folder(args.out, "medkge crop"), discard_on_failure(args.out):
        folder = cropped.save(args.out, overwrite=args.force, dtype=args.dtype)
    info = json.loads((folder / INFO_FILE).read_text())
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"wrote the {args.dim}-d {cropped.model_name} model ({info['dtype']}) to {folder} "
        f"({_size(folder_size(folder))}, model card README.md)"
    )
    print(_trained_note(source, args.dim, info, args.model))
    return 0


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _trained_note(source: Any, dim: int, info: dict[str, Any], path: str) -> str:
    from .evaluation import is_full

    if source.is_trained(dim):
        protocol = (info.get("training") or {}).get("protocols", {}).get("valid") or "full"
        how = "" if is_full(protocol) else f" ({protocol})"
        valid = f", validation MRR {info['valid']['mrr']:.4f}{how}" if "valid" in info else ""
        return f"dim {dim} is a trained sub-model{valid}"
    trained = source.source.get("dims") or source.trained_dims
    wider = [d for d in trained if d > dim]
    within = f": the first {dim} coordinates of the {wider[0]}-d sub-model" if wider else ""
    check = f"; measure it with `medkge evaluate {path} --dims {dim}`" if source.run is not None else ""
    return f"dim {dim} is not a trained sub-model (trained dims {_short_dims(trained)}){within}{check}"


def cmd_predict(args: argparse.Namespace) -> int:
    from .deploy import load, prediction_json

    if (args.head is None) == (args.tail is None):
        raise MedkgeError("give --head H to predict tails, or --tail T to predict heads (one of them)")
    model = load(args.model, dataset=args.dataset)

    def value(text: str, what: str) -> str | int:
        if not args.ids:
            return text
        if not text.isdigit():
            raise MedkgeError(f"--ids: {what} must be an id (a non-negative integer), got {text!r}")
        return int(text)

    relation = value(args.relation, "--relation")
    options = {"k": args.top_k, "dim": args.dim, "exclude_known": args.exclude_known, "funnel": args.funnel}
    if args.head is not None:
        table = model.predict_tails(value(args.head, "--head"), relation, **options)
    else:
        table = model.predict_heads(relation, value(args.tail, "--tail"), **options)
    dim = table.meta["dim"]
    if args.json:
        print(json.dumps(prediction_json(model, table), indent=2))
        return 0
    side = "tails" if args.head is not None else "heads"
    known = ", known triples excluded" if args.exclude_known else ""
    known += f", shortlisted by the funnel {args.funnel}" if args.funnel else ""
    print(f"{side} of ({', '.join(table.meta['query'])}) by the {dim}-d {model.model_name} model{known}:")
    print(table.to_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import Limits, openapi, serve
    from .server.start import check_port

    for name in ("max_k", "max_batch", "max_pending", "max_requests"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise MedkgeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    check_port(args.port)
    limits = Limits(max_k=args.max_k, max_batch=args.max_batch, max_pending=args.max_pending)
    dims = _parse_dims(args.dims) if args.dims else None
    if args.openapi:
        print(json.dumps(openapi(args.model, dims=dims, dataset=args.dataset, limits=limits), indent=2))
        return 0
    serve(
        args.model,
        args.host,
        args.port,
        dims=dims,
        index=_parse_dims(args.index, "--index") if args.index else (),
        dataset=args.dataset,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        limits=limits,
        batching=not args.no_batching,
        cache_mib=args.crop_cache,
        tune_malloc=args.tune_malloc,
        max_requests=args.max_requests,
        max_seconds=args.max_seconds,
        access_log=args.access_log,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy import load
    from .export import export
    from .files import discard_on_failure, lock_folder

    model = load(args.model)
    dim = model.dim if args.dim is None else args.dim
    with lock_folder(args.out, "medkge export"), discard_on_failure(args.out):
        folder = export(model, args.format, args.out, dim=dim, overwrite=args.force, dtype=args.dtype)
    print(f"exported the {dim}-d {model.model_name} model as {args.format} to {folder}:")
    files = sorted(f for f in folder.iterdir() if f.is_file())
    print(_table(["file", "bytes"], [[f.name, f"{f.stat().st_size:,}"] for f in files], align_left=True))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .deploy import folder_size, load
    from .evaluation import is_full
    from .files import discard_on_failure, lock_folder

    model = load(args.model)
    dims = _parse_dims(args.dims) if args.dims else None
    chosen = model.select(min_mrr=args.min_mrr, max_drop=args.max_drop, dims=dims, progress=not args.quiet)
    folder = None
    if args.crop:
        with lock_folder(args.crop, "medkge select --crop"), discard_on_failure(args.crop):
            folder = model.crop(chosen.dim).save(args.crop, overwrite=args.force)
    if args.json:
        print(json.dumps(chosen.to_dict() | {"cropped": str(folder) if folder else None}, indent=2))
        return 0
    protocol = "" if is_full(chosen.protocol) else f" ({chosen.protocol})"
    print(f"{chosen.split} MRR{protocol} by dim of {args.model}, target MRR >= {chosen.target:.4f} ({chosen.rule}):")
    rows = [[d, f"{v:.4f}", "yes" if v >= chosen.target else "no"] for d, v in chosen.mrr_by_dim.items()]
    print(_table(["dim", "MRR", "meets"], rows))
    print(f"smallest sub-model meeting the target: dim {chosen.dim} ({chosen.split} MRR {chosen.mrr:.4f})")
    if folder is not None:
        print(f"wrote the {chosen.dim}-d {model.model_name} model to {folder} ({_size(folder_size(folder))})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    dims = _parse_dims(args.dims) if args.dims else None
    print(compare(args.runs, args.out, split=args.split, dims=dims, labels=labels), end="")
    if args.out:
        print(f"wrote comparison.md, comparison.csv and comparison.png to {args.out}", file=sys.stderr)
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from .curves import curves

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    dims = _parse_dims(args.dims) if args.dims else None
    print(curves(args.runs, args.out, dims=dims, metric=args.metric, labels=labels), end="")
    if args.out:
        print(f"wrote curves.md and curves.png to {args.out}", file=sys.stderr)
    return 0


def _parse_dims(text: str, flag: str = "--dims") -> list[int]:
    from .config import checked_dims

    try:
        return checked_dims(text)
    except MedkgeError as error:
        reason = str(error).removeprefix("config: model.dims: ").removeprefix("config: model.dims ")
        raise MedkgeError(f"{flag}: {reason}") from None


def _short_dims(dims: Any) -> str:
    dims = list(dims)
    return str(dims) if len(dims) <= 8 else f"[{dims[0]}, {dims[1]}, ..., {dims[-1]}] ({len(dims)} dims)"


def _table(header: list[str], rows: list[list[Any]], align_left: bool = False) -> str:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    just = (lambda c, w: c.ljust(w)) if align_left else (lambda c, w: c.rjust(w))
    return "\n".join("  ".join(just(c, w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


if __name__ == "__main__":
    sys.exit(main())
