"""The ``medkge`` command line, built on the Python API.

User mistakes print one line, ``medkge: error: ...``, and exit with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MedkgeError

EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.handler(args) or 0
    except MedkgeError as error:
        print(f"medkge: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        hint = f"; continue with `medkge train --resume {args.out}`" if getattr(args, "out", None) else ""
        print(f"medkge: interrupted{hint}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medkge", description="Croppable knowledge graph embeddings: train every size at once, crop any."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("datasets", help="list the bundled datasets and their sizes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_datasets)

    p = sub.add_parser("train", help="train a run (MED by default)", description=TRAIN_HELP)
    p.add_argument("config", nargs="?", help="YAML config file (see configs/); flags below override it")
    p.add_argument("--out", help="run folder to create (default runs/<dataset>-<model>-<method>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the interrupted run in this folder")
    for name, key in _flag_aliases().items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar="X", help=f"sets {key}")
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
    return parser


TRAIN_HELP = """Train a run. Examples:
  medkge train --dataset kinships --model rotate --dims 10,20,40,80 --epochs 100 --out runs/kin
  medkge train configs/med-rotate-wn18rr.yaml --out runs/wn --set train.device=cuda
  medkge train --resume runs/kin"""


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


def cmd_train(args: argparse.Namespace) -> int:
    from .methods import resume, train

    progress = not args.quiet
    if args.resume:
        if args.config or args.overrides or any(v is not None for k, v in vars(args).items() if k.startswith("opt_")):
            raise MedkgeError("--resume continues a run with its own saved config; give no other options")
        args.out = args.resume
        run = resume(args.resume, progress=progress)
    else:
        options: dict[str, Any] = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise MedkgeError(f"--set expects KEY=VALUE, got {item!r}")
            options[key.strip()] = value
        if args.config and not Path(args.config).is_file():
            raise MedkgeError(f"{args.config}: no such config file")
        from .methods import default_run_name, make_config

        cfg = make_config(args.config, **options)
        args.out = args.out or str(Path("runs") / default_run_name(cfg))
        print(f"training {cfg.method} {cfg.model.name} on {cfg.dataset} -> {args.out}", file=sys.stderr)
        run = train(cfg, out=args.out, progress=progress)
    results = run.results() or {}
    print(f"run folder: {run.path}")
    if "test" in results:
        print(
            f"test metrics (filtered, {results['test']['ties']} ranks), training took {results['train_seconds']:.1f} s:"
        )
        print(run.metrics("test").table())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .run import Run

    run = Run.open(args.run, device=args.device)
    dims = _parse_dims(args.dims) if args.dims else None
    metrics = run.evaluate(args.split, dims, ties=args.ties, progress=not args.quiet)
    if args.json:
        print(metrics.to_json())
    else:
        print(f"{args.split} metrics (filtered, {metrics.ties} ranks) of {run.path}:")
        print(metrics.table())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
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
        if "test" in results:
            test = results["test"]["dims"]
            info["test_mrr"] = {d: round(v["mrr"], 4) for d, v in test.items()}
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


def _parse_dims(text: str) -> list[int]:
    from .config import _coerce_dims

    return _coerce_dims(text)


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
