"""Export a model of any size for use outside medkge: numpy arrays, TSV for embedding projectors, ONNX.

Every format writes the tables of one dim D (a crop; default: the widest) as the scores use them: entity
rows already normalised where the model normalises (PairRE), RotatE relations as phases in radians.

``npy``: ``entity.npy`` float32 ``[num_entities, parts, D]`` and ``relation.npy`` ``[num_relations, parts, D]``
with ``parts`` as follows, plus ``entities.tsv``/``relations.tsv`` (id <TAB> label) and ``model.json``:

===========  ========================================  ========================================
model        entity parts                              relation parts
===========  ========================================  ========================================
TransE       1                                         1
DistMult     1                                         1
ComplEx      2: (real, imaginary)                      2: (real, imaginary)
RotatE       2: (real, imaginary)                      1: the phase theta (radians)
SimplE       2: (head role, tail role)                 2: (r, r_inverse)
PairRE       1 (unit L2 norm over the full width)      2: (r_head, r_tail)
===========  ========================================  ========================================

Coordinate k of a complex number is ``[..., 0, k] + i [..., 1, k]``: real and imaginary parts are two
planes, not interleaved, so ``[..., :d]`` of both planes is the d-dimensional prefix.

``tsv``: ``entity_vectors.tsv`` (one row of ``parts * D`` numbers per entity, the parts one after
another) with ``entity_metadata.tsv`` (one label per line, in the same order), and the same for relations:
the files the TensorFlow Embedding Projector loads.

``onnx``: ``model.onnx``, a graph with inputs ``head`` and ``relation`` (int64 ids ``[batch]``) and output
``scores`` (float32 ``[batch, num_entities]``: the score of every tail, as ``predict_tails`` computes it),
built from plain ONNX operators (opset 17), with the vocabularies beside it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import card, quantize
from .errors import MedkgeError
from .files import atomic_write, write_json, write_vocab
from .layout import CARD_FILE, ENTITIES_FILE, INFO_FILE, RELATIONS_FILE

if TYPE_CHECKING:
    from .deploy import LabelledModel
    from .model import CroppableModel

FORMATS = ("npy", "tsv", "onnx")
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR version of opset 17: runs on any onnxruntime >= 1.13
_PROTOBUF_LIMIT = 2**31 - 1  # one ONNX file without external data


def export(
    model: LabelledModel,
    fmt: str,
    out: str | Path,
    dim: int | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
) -> Path:
    """Write the ``dim``-dimensional model (default: the widest) in format ``fmt`` into folder ``out``;
    ``dtype`` (npy only): float32, float16 (both tables) or int8 (entity.npy int8 with entity_scale.npy, one
    float32 scale per row; relations float32), as medkge.quantize describes."""
    from .deploy import prepare_folder

    if fmt not in FORMATS:
        raise MedkgeError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize.check_dtype(dtype) != "float32" and fmt != "npy":
        raise MedkgeError(f"--dtype {dtype} applies to the npy format (and to medkge crop), not to {fmt}")
    small = model.crop(model.dim if dim is None else dim)
    cropped = small.model_for()
    graph = onnx_model(cropped) if fmt == "onnx" else None  # before creating the folder: onnx may be missing
    folder = prepare_folder(out, overwrite, model.folder)
    entity, relation = tables(cropped)
    if fmt == "npy":
        arrays = {"entity": entity, "relation": relation}
        if dtype == "float16":
            arrays = {name: table.astype(np.float16) for name, table in arrays.items()}
        elif dtype == "int8":
            q, scale = quantize.quantize_rows(torch.from_numpy(entity))
            arrays |= {"entity": q.numpy(), "entity_scale": scale.numpy()}
        for name, table in arrays.items():
            np.save(buffer := io.BytesIO(), table)
            atomic_write(folder / f"{name}.npy", buffer.getvalue())
    elif fmt == "tsv":
        for name, table, labels in (("entity", entity, small.entities), ("relation", relation, small.relations)):
            atomic_write(folder / f"{name}_vectors.tsv", _tsv(table.reshape(len(table), -1)))
            atomic_write(folder / f"{name}_metadata.tsv", "".join(f"{label}\n" for label in labels))
    else:
        assert graph is not None
        atomic_write(folder / "model.onnx", graph.SerializeToString())
    if fmt != "tsv":
        write_vocab(folder / ENTITIES_FILE, small.entities)
        write_vocab(folder / RELATIONS_FILE, small.relations)
    info = small.info(dtype) | {"format": f"medkge-export-{fmt}", "layout": layout(cropped)}
    files = sorted(f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    atomic_write(folder / CARD_FILE, card.render(info, info["training"], [*files, INFO_FILE]))
    write_json(folder / INFO_FILE, info)
    return folder


def tables(model: CroppableModel) -> tuple[np.ndarray, np.ndarray]:
    """The entity and relation tables as the scores use them, float32 ``[rows, parts, D]``."""
    entity = model.entity_table().detach().float().cpu().numpy()
    relation = model.relation_table().detach().float().cpu().numpy()
    return np.ascontiguousarray(entity), np.ascontiguousarray(relation)


def layout(model: CroppableModel) -> dict[str, Any]:
    """What the parts of each table mean (recorded in model.json)."""
    parts = {
        "transe": (["vector"], ["vector"]),
        "distmult": (["vector"], ["vector"]),
        "complex": (["real", "imaginary"], ["real", "imaginary"]),
        "rotate": (["real", "imaginary"], ["phase (radians)"]),
        "simple": (["head role", "tail role"], ["r", "r_inverse"]),
        "pairre": (["vector (unit L2 norm)"], ["r_head", "r_tail"]),
    }[model.model_name]
    return {
        "entity": {"shape": list(model.entity.shape), "parts": parts[0]},
        "relation": {"shape": list(model.relation.shape), "parts": parts[1]},
    }


def _tsv(matrix: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savetxt(buffer, matrix, fmt="%.7g", delimiter="\t")
    return buffer.getvalue()


def _import_onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise MedkgeError("ONNX export needs the onnx package: pip install 'medkge[onnx]'") from None
    return onnx, TensorProto, helper, numpy_helper


class _Graph:
    """A small builder: each op gets a fresh output name, constants become initializers."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0
        self.names: set[str] = set()

    def const(self, name: str, value: Any) -> str:
        """An initializer (made once per name: only constants the graph uses are stored)."""
        if name in self.names:
            return name
        self.names.add(name)
        # np.array, not np.ascontiguousarray: that one turns scalars into 1-element vectors
        self.initializers.append(self.numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attributes))
        return out


def onnx_model(model: CroppableModel):
    """An ONNX model scoring every tail for (head, relation) queries with a one-dim model's tables.

    Inputs ``head`` and ``relation`` (int64 ``[batch]``); output ``scores`` (float32 ``[batch, entities]``).
    Each score is the model's formula (scoring.py) written with plain operators: no custom ops and no
    dependence on torch's exporter. The distance models hold a ``[batch, entities, D]`` intermediate.
    """
    onnx, TensorProto, helper, numpy_helper = _import_onnx()
    if len(model.dims) != 1:
        raise MedkgeError("ONNX export takes a model of one dim: crop it first")
    entity, relation = tables(model)
    num_entities, dim = entity.shape[0], entity.shape[-1]
    g = _Graph(helper, numpy_helper)
    name = model.model_name
    h = g.op("Gather", g.const("entity_table", entity), "head", axis=0)  # [B, parts, D]
    r = g.op("Gather", g.const("relation_table", relation), "relation", axis=0)

    def gamma() -> str:
        return g.const("gamma", np.array(float(model.margins()), dtype=np.float32))

    def axis(i: int) -> str:
        return g.const(f"axis_{i}", np.array([i], dtype=np.int64))

    def part(x: str, i: int) -> str:  # [B, parts, D] -> [B, D]
        return g.op("Gather", x, g.const(f"part_{i}", np.array(i, dtype=np.int64)), axis=1)

    def against_all(query: str, candidates: str) -> str:  # [B, D] - [N, D] -> [B, N, D]
        return g.op("Sub", g.op("Unsqueeze", query, axis(1)), candidates)

    def entity_part(i: int) -> str:  # [N, D], taken from the one stored table (the file holds it once)
        return g.op("Gather", "entity_table", g.const(f"part_{i}", np.array(i, dtype=np.int64)), axis=1)

    def dot_all(query: str) -> str:  # [B, parts * D] . entity rows flattened the same way -> [B, N]
        flat = g.op("Reshape", "entity_table", g.const("flat_shape", np.array([num_entities, -1], dtype=np.int64)))
        return g.op("Gemm", query, flat, transB=1)

    if name in ("transe", "pairre"):
        e0 = entity_part(0)
        if name == "transe":
            diff = against_all(g.op("Add", part(h, 0), part(r, 0)), e0)
        else:  # PairRE: |h * r_head - t * r_tail|, the candidate depends on the relation
            query = g.op("Unsqueeze", g.op("Mul", part(h, 0), part(r, 0)), axis(1))
            diff = g.op("Sub", query, g.op("Mul", e0, g.op("Unsqueeze", part(r, 1), axis(1))))
        if name == "transe" and model.p == 2:
            distance = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", diff, diff), axis(2), keepdims=0))
        else:
            distance = g.op("ReduceSum", g.op("Abs", diff), axis(2), keepdims=0)
        scores = g.op("Sub", gamma(), distance)
    elif name == "rotate":
        theta = part(r, 0)
        cos, sin = g.op("Cos", theta), g.op("Sin", theta)
        h_re, h_im = part(h, 0), part(h, 1)
        q_re = g.op("Sub", g.op("Mul", h_re, cos), g.op("Mul", h_im, sin))
        q_im = g.op("Add", g.op("Mul", h_re, sin), g.op("Mul", h_im, cos))
        d_re = against_all(q_re, entity_part(0))
        d_im = against_all(q_im, entity_part(1))
        modulus = g.op("Sqrt", g.op("Add", g.op("Mul", d_re, d_re), g.op("Mul", d_im, d_im)))
        scores = g.op("Sub", gamma(), g.op("ReduceSum", modulus, axis(2), keepdims=0))
    elif name == "distmult":
        scores = dot_all(g.op("Mul", part(h, 0), part(r, 0)))
    elif name == "complex":
        # Re(<h, r, conj(t)>) = <h * r, t> over (real, imaginary)
        h_re, h_im, r_re, r_im = part(h, 0), part(h, 1), part(r, 0), part(r, 1)
        q_re = g.op("Sub", g.op("Mul", h_re, r_re), g.op("Mul", h_im, r_im))
        q_im = g.op("Add", g.op("Mul", h_re, r_im), g.op("Mul", h_im, r_re))
        scores = dot_all(g.op("Concat", q_re, q_im, axis=1))
    elif name == "simple":
        # 1/2 (<hH, r, tT> + <tH, r_inv, hT>): (r_inv * hT, r * hH) are the coefficients of (tH, tT)
        query = g.op("Concat", g.op("Mul", part(r, 1), part(h, 1)), g.op("Mul", part(r, 0), part(h, 0)), axis=1)
        scores = g.op("Mul", dot_all(query), g.const("half", np.array(0.5, dtype=np.float32)))
    else:
        raise MedkgeError(f"ONNX export does not know model {name!r}")
    g.nodes.append(helper.make_node("Identity", [scores], ["scores"]))
    graph = helper.make_graph(
        g.nodes,
        f"medkge_{name}_{dim}d",
        inputs=[
            helper.make_tensor_value_info("head", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("relation", TensorProto.INT64, ["batch"]),
        ],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", num_entities])],
        initializer=g.initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="medkge",
        doc_string=f"{name} {dim}-d: scores [batch, {num_entities}] of every tail for (head, relation) ids",
    )
    proto.ir_version = ONNX_IR_VERSION
    helper.set_model_props(
        proto, {"medkge.model": name, "medkge.dim": str(dim), "medkge.gamma": str(float(model.margins()))}
    )
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise MedkgeError(f"the {dim}-d model is over 2 GB, too large for one ONNX file: export a smaller --dim")
    onnx.checker.check_model(proto)
    return proto
