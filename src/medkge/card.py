"""The model card: README.md in every folder ``medkge crop`` and ``medkge export`` write.

It says what the folder holds (dataset, model, dim, dtype), how good each trained size is (validation and
test metrics per dim, as recorded at the end of training), what training cost (epochs, time, device, batch,
negatives, learning rate), the licence of the data (src/medkge/data/README.md), and how to load it. Its YAML
front matter is what the Hugging Face Hub reads, so a folder is published as it is::

    huggingface-cli upload USER/NAME models/wn18rr-rotate-40 .

No path, user or host name of the training machine appears in it (only the run's name and checksums).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from .evaluation import is_full
from .layout import CARD_FILE

_METRICS = ("mrr", "hits@1", "hits@3", "hits@10")


def data_licences() -> dict[str, str]:
    """The licence of each bundled dataset, from the table in medkge/data/README.md."""
    text = resources.files("medkge").joinpath("data/README.md").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("name", "") or set(cells[0]) <= {"-"}:
            continue
        for name in cells[0].split(","):
            out[name.strip()] = cells[2].replace("`", "")
    return out


def card_data(model: Any) -> dict[str, Any]:
    """What the card reports beyond model.json's own keys: the trained dims' metrics and the training budget
    (from the run, or carried over from the cropped folder the model came from)."""
    if model.run is None:
        return dict(getattr(model, "card", {}) or {})
    run = model.run
    metrics, protocols = {}, {}
    for split in ("valid", "test"):
        recorded = model.recorded_metrics(split) or {}
        metrics[split] = {str(d): {k: v[k] for k in _METRICS if k in v} for d, v in sorted(recorded.items())}
        if recorded:
            protocols[split] = model.recorded_protocol(split)
    results = run.results() or {}
    train = run.config.train
    budget = {
        "epochs": results.get("epochs", train.epochs),
        "best_epoch": results.get("best_epoch"),
        "train_seconds": results.get("train_seconds"),
        "device": results.get("device"),
        "batch_size": train.batch_size,
        "negatives": train.negatives,
        "lr": train.lr,
        "seed": train.seed,
    }
    return {"metrics": metrics, "protocols": protocols, "budget": budget}


def _protocols(data: dict[str, Any]) -> str:
    """The end of the metrics' sentence: where a split's figures were not made on the full protocol over the
    whole split (validation on a subset of triples or on sampled candidates), which protocol made them."""
    if data.get("metrics") and "protocols" not in data:  # a folder cropped before the protocol was recorded
        return " (how they were measured, full or on a subset or sampled candidates, was not recorded)."
    other = {split: p for split, p in (data.get("protocols") or {}).items() if p and not is_full(p)}
    if not other:
        return "."
    named = {"valid": "validation", "test": "test"}
    return "; " + "; ".join(f"{named.get(s, s)}: {p}" for s, p in other.items()) + "."


def render(info: dict[str, Any], data: dict[str, Any], files: list[str]) -> str:
    """README.md for a folder whose model.json is ``info``, holding ``files``."""
    source = info.get("source") or {}
    dataset = str(source.get("dataset") or "unknown")
    licence = data_licences().get(dataset, "not known to medkge: see the data's own source")
    dim, model = info["dim"], info["model"]
    lines = [
        "---",
        "library_name: medkge",
        "license: other",
        f"license_name: data licence of {dataset}",
        "tags:",
        "- knowledge-graph-embedding",
        "- link-prediction",
        "- medkge",
        f"- {model}",
        "datasets:",
        f"- {dataset}",
        "---",
        "",
        f"# {model} {dim}-d on {dataset} (medkge)",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | {dataset} |",
        f"| model | {model}, {dim} dims ({'a trained sub-model' if info.get('trained_sub_model') else 'a crop'}) |",
        f"| dtype | {info.get('dtype', 'float32')} |",
        f"| entities, relations | {info['entities']}, {info['relations']} |",
        f"| trained dims | {_dims(source.get('dims'))} |",
        f"| method | {source.get('method', 'unknown')} |",
        f"| run | {source.get('run', 'unknown')} (config sha256 {str(source.get('config_sha256', '?'))[:12]}) |",
        f"| data sha256 | {source.get('data_sha256', 'not recorded')} |",
        f"| format | {info['format']} |",
        "",
        "## Metrics",
        "",
        "Filtered link prediction, realistic ranks, both directions, as recorded at the end of training"
        + _protocols(data),
        "",
    ]
    metrics = data.get("metrics") or {}
    rows = sorted({int(d) for split in metrics.values() for d in split})
    if rows:
        lines += [
            "| dim | valid MRR | valid H@10 | test MRR | test H@1 | test H@10 |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for d in rows:
            v, t = metrics.get("valid", {}).get(str(d), {}), metrics.get("test", {}).get(str(d), {})
            mark = " (this folder)" if d == dim else ""
            lines.append(
                f"| {d}{mark} | {_num(v, 'mrr')} | {_num(v, 'hits@10')} | {_num(t, 'mrr')} | {_num(t, 'hits@1')} "
                f"| {_num(t, 'hits@10')} |"
            )
        if dim not in rows:
            lines += [
                "",
                f"Dim {dim} was not trained as a sub-model: measure it with `medkge evaluate RUN --dims {dim}`.",
            ]
    else:
        lines.append("No metrics were recorded for this model.")
    budget = data.get("budget") or {}
    lines += ["", "## Training budget", ""]
    if budget:
        seconds = budget.get("train_seconds")
        lines += [
            f"- epochs: {budget.get('epochs')} (best validation at epoch {budget.get('best_epoch')})",
            f"- training time: {seconds:.0f} s on {budget.get('device')}"
            if seconds
            else "- training time: not recorded",
            f"- batch size {budget.get('batch_size')}, {budget.get('negatives')} negatives per positive, "
            f"learning rate {budget.get('lr')}, seed {budget.get('seed')}",
        ]
    else:
        lines.append("Not recorded.")
    lines += [
        "",
        "## Licence of the data",
        "",
        f"{dataset}: {licence}. The embeddings are derived from it; the medkge code is MIT-licensed.",
        "",
        "## How to load",
        "",
        "```python",
        *_how_to_load(info),
        "```",
    ]
    lines += [
        "",
        "Publish this folder as it is: `huggingface-cli upload USER/NAME FOLDER .` "
        "(or `huggingface_hub.HfApi().upload_folder(repo_id=..., folder_path=FOLDER)`).",
        "",
        "Files: " + ", ".join(f"`{f}`" for f in sorted({*files, CARD_FILE})),
        "",
    ]
    return "\n".join(lines)


def _how_to_load(info: dict[str, Any]) -> list[str]:
    if info["format"] == "medkge-cropped-model":
        return [
            "import medkge  # pip install medkge",
            'model = medkge.load(".")  # this folder',
            'model.predict_tails("HEAD", "RELATION", k=10)',
        ]
    fmt = info["format"].removeprefix("medkge-export-")
    return [
        {
            "npy": "import numpy as np\n"
            'entity, relation = np.load("entity.npy"), np.load("relation.npy")  # layout: model.json',
            "tsv": "# entity_vectors.tsv + entity_metadata.tsv: load both in the TensorFlow Embedding Projector",
            "onnx": 'import onnxruntime as ort\nsession = ort.InferenceSession("model.onnx")  # inputs head, relation',
        }.get(fmt, "")
    ]


def _num(values: dict[str, float], key: str) -> str:
    return f"{values[key]:.4f}" if key in values else "-"


def _dims(dims: Any) -> str:
    dims = list(dims or [])
    if not dims:
        return "unknown"
    return ", ".join(map(str, dims)) if len(dims) <= 8 else f"{dims[0]}, {dims[1]}, ..., {dims[-1]} ({len(dims)})"
