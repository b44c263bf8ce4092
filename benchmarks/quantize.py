"""Quantised crops against float32: filtered MRR per dim of int8 and float16 crops, and bytes per entity.

Each dim d is cropped from the model (the d-dim sub-model), then stored as medkge.quantize stores it (int8: one
scale per entity row of the crop; float16: both tables) and loaded back; its filtered MRR on the split is set
beside the float32 crop's, on the same triples. Bytes per entity are those of the entity table in the model file.

    python benchmarks/quantize.py runs/serve-wn18rr-snapshot --dims 10,20,40,80,160,320,640 --limit 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import medkge
from medkge.files import load_tensors

sys.path.insert(0, str(Path(__file__).parent))
from funnel import split_of  # benchmarks/funnel.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a MED run folder or a cropped model folder (benchmarks/snapshot.py)")
    p.add_argument("--dims", default="10,20,40,80,160,320,640")
    p.add_argument("--dtypes", default="float16,int8")
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--limit", type=int, help="only the first N triples of the split")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    labelled = medkge.load(args.model)
    dataset = split_of(labelled.dataset(), args.split, args.limit)
    dims = [int(d) for d in args.dims.split(",")]
    dtypes = args.dtypes.split(",")
    print(
        f"{labelled.model_name} on {dataset.name} ({dataset.num_entities:,} entities), "
        f"{len(dataset.split(args.split)):,} {args.split} triples, filtered MRR, realistic ranks; "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f} at start\n"
    )
    header = " | ".join(f"{t} MRR | {t} - float32 | {t} bytes/entity" for t in dtypes)
    print(f"| dim | float32 MRR | float32 bytes/entity | {header} |")
    print("|---:" * (3 + 3 * len(dtypes)) + "|")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for d in dims:
            cells, base = [], None
            for dtype in ["float32", *dtypes]:
                folder = labelled.crop(d).save(Path(tmp) / f"{d}-{dtype}", dtype=dtype)
                crop = medkge.load(folder)
                mrr = medkge.evaluate(crop.models[0], dataset, args.split, progress=False)[d]["mrr"]
                tensors, _ = load_tensors(folder / "model.safetensors", "model")
                per_entity = sum(t.nbytes for k, t in tensors.items() if k.startswith("entity")) / len(crop.entities)
                base = mrr if base is None else base
                cells += [f"{mrr:.4f}"] + ([f"{mrr - base:+.4f}"] if dtype != "float32" else []) + [f"{per_entity:.0f}"]
            print(f"| {d} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
