"""A cropped model folder from a run's latest checkpoint: measure serving on a model whose training is still going
(or was stopped) without waiting for its last validations. Records the checkpoint's epoch in model.json's source.

    python benchmarks/snapshot.py runs/serve-wn18rr --dim 640 --out runs/serve-wn18rr-snapshot
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import torch

import medkge
from medkge.files import load_tensors
from medkge.layout import CHECKPOINT_FILE
from medkge.stores import read_rows
from medkge.training import build_model, row_sources


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--dim", type=int, help="crop to this dim (default: the widest)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    folder = Path(args.run)
    config = medkge.Config.from_run_folder(folder)
    dataset = medkge.load_dataset(config.dataset)
    tensors, meta = load_tensors(folder / CHECKPOINT_FILE, "checkpoint")
    state = ast.literal_eval(meta["state"]) if isinstance(meta.get("state"), str) else meta.get("state", {})
    model = build_model(config, dataset)
    read_rows(row_sources(folder / CHECKPOINT_FILE, meta["rows"]), meta["rows"]["ranges"], 0, {"entity": model.entity})
    with torch.no_grad():
        model.relation.copy_(tensors["model.relation"])
    source = {
        "run": folder.resolve().name,
        "method": config.method,
        "dataset": config.dataset,
        "dims": list(model.dims),
        "checkpoint_epoch": state.get("epoch"),
    }
    labelled = medkge.LabelledModel(model.requires_grad_(False), dataset.entities, dataset.relations, source=source)
    out = labelled.crop(args.dim or model.dim).save(args.out, overwrite=True)
    print(f"{out}: the {args.dim or model.dim}-d model of {folder} after epoch {state.get('epoch')}")


if __name__ == "__main__":
    main()
