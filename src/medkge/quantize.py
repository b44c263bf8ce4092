"""Quantised model files: a cropped model (or an npy export) stored in float16 or int8.

- ``float16``: both tables in IEEE half precision (relative error at most 2^-11 per value; RotatE's phases too,
  within 2^-11 of their value, i.e. at most 0.0016 rad for a phase of pi). A medkge model file like any other.
- ``int8``: each entity row ``[parts, D]`` as int8 values and one float32 scale per row, ``scale = max |x| / 127``
  over the row's coordinates (all parts), ``q = round(x / scale)``: every value within ``scale / 2`` of the
  original, a quarter of float32's bytes plus 4 per entity. The relation table stays float32 (RotatE: the
  phases): it is small (tens to hundreds of rows) and its errors would reach every query of a relation.

Loading gives back a float32 model (the dequantised tables): scores and answers come from one float32 path, so
a quantised crop takes its smaller size on disk and in transit, not in a server's memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .errors import MedkgeError
from .files import FORMAT_VERSION, load_model, save_model, save_tensors
from .model import CroppableModel
from .scoring import check_dims, get_interaction

DTYPES = ("float32", "float16", "int8")
INT8_FORMAT = "medkge-model-int8"
INT8_NOTE = "entity rows int8 with one float32 scale per row (max |x| / 127, rounded to nearest); relations float32"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise MedkgeError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def quantize_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """int8 values ``[rows, ...]`` and float32 scales ``[rows]`` of a table, one scale per row."""
    flat = table.detach().reshape(len(table), -1).float()
    scale = flat.abs().amax(1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = torch.round(flat / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q.view(table.shape), scale


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    """The float32 table that int8 values and per-row scales stand for."""
    return q.float() * scale.reshape(-1, *([1] * (q.ndim - 1)))


def save(path: Path, model: CroppableModel, dtype: str) -> None:
    """Save a one-dim model in ``dtype`` (float32 and float16: a medkge model file; int8: see the module)."""
    check_dtype(dtype)
    if dtype == "float32":
        save_model(path, model)
    elif dtype == "float16":
        save_model(path, CroppableModel.from_spec(model.spec(), model.entity.half(), model.relation.half()))
    else:
        q, scale = quantize_rows(model.entity)
        metadata = {"format": INT8_FORMAT, "version": FORMAT_VERSION, "spec": model.spec()}
        save_tensors(path, {"entity": q, "entity_scale": scale, "relation": model.relation.float()}, metadata)


def load(path: Path, dtype: str, device: str | torch.device = "cpu") -> CroppableModel:
    """A float32 model from a file that :func:`save` wrote in ``dtype``."""
    check_dtype(dtype)
    if dtype != "int8":
        model = load_model(path, device)
        return model.float() if model.entity.dtype == torch.float16 else model  # float64 stays float64
    spec, tensors = _read_int8(Path(path))
    model = CroppableModel.from_spec(
        spec, dequantize_rows(tensors["entity"], tensors["entity_scale"]), tensors["relation"]
    )
    return model.to(device).eval()


def _read_int8(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Spec and tensors of an int8 model file, the header checked before any tensor is read."""

    def bad(reason: str) -> MedkgeError:
        return MedkgeError(f"{path}: not a valid medkge int8 model file ({reason})")

    import json

    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("medkge", "null"))
            if (
                not isinstance(meta, dict)
                or meta.get("format") != INT8_FORMAT
                or not isinstance(meta.get("spec"), dict)
            ):
                raise bad("no medkge int8 description in the header")
            spec = meta["spec"]
            try:
                it = get_interaction(str(spec["model"]), int(spec.get("p", 1)))
                width = check_dims(spec["dims"])[-1]
                rows, relations = int(spec["num_entities"]), int(spec["num_relations"])
            except (KeyError, TypeError, ValueError) as error:
                raise bad(f"bad model description: {error}") from None
            expected = {
                "entity": ([rows, it.entity_parts, width], torch.int8),
                "entity_scale": ([rows], torch.float32),
                "relation": ([relations, it.relation_parts, width], torch.float32),
            }
            if set(f.keys()) != set(expected):
                raise bad(f"expected the tables {sorted(expected)}, found {sorted(f.keys())}")
            for name, (shape, _) in expected.items():
                if list(f.get_slice(name).get_shape()) != shape:
                    raise bad(f"table {name!r} does not have the shape its description says, {shape}")
            tensors = {name: f.get_tensor(name) for name in expected}
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, MedkgeError):
            raise
        raise bad(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    for name, (_, dtype) in expected.items():
        if tensors[name].dtype != dtype:
            raise bad(f"table {name!r} is {tensors[name].dtype}, expected {dtype}")
    return spec, tensors
