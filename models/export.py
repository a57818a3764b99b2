"""Export a trained model to ONNX with the metadata chipsim's compiler reads, and write zoo entries.

The graph is exported with torch's TorchScript-based exporter (``dynamo=False``: the dynamo
exporter needs ``onnxscript``, which the training environment does not ship), opset 17, a
dynamic batch axis, and constant folding, so every analog layer is a ``Gemm``/``MatMul``/``Conv``
whose weight is an *initializer* (``nn.Linear`` on 2-D inputs → ``Gemm`` with ``transB=1`` and the
torch weight; on 3-D inputs → ``MatMul`` with the transposed weight folded into an initializer).

Metadata (``ModelProto.metadata_props``), all values strings:

==========================  ==========================================================================
``agedchip.input_ranges``   JSON {weight initializer name: DAC input range r > 0} for every analog node
``agedchip.task``           ``classification``
``agedchip.num_classes``    ``10``
``agedchip.dataset``        the dataset and where it comes from
``agedchip.split``          the split, its seeds and the preprocessing (:func:`models.data.split_description`)
``agedchip.recipe``         JSON of the training recipe (plain/hwa, epochs, lr, noise settings, seed)
``agedchip.fp_accuracy``    accuracy of this ONNX file (onnxruntime, floating point) on the eval set
``agedchip.eval_set``       file name of the eval set beside the ONNX (npz: ``x`` float32, ``y`` int64)
``agedchip.input_name``     the graph input's name
``agedchip.output_name``    the graph output's name (logits)
``agedchip.preprocessing``  what was done to raw pixels to get ``x``
``agedchip.layers``         JSON {weight initializer name: torch module name} (for people, not the chip)
==========================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models import data
from models.hwa import analog_layers

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
ANALOG_OPS = ("Gemm", "MatMul", "Conv")
PREFIX = "agedchip."


def export_onnx(model: nn.Module, example: torch.Tensor | None = None) -> onnx.ModelProto:
    """The model as ONNX (no metadata yet). ``model`` is put in eval mode (the clean path)."""
    model.eval()
    if example is None:
        example = torch.zeros(2, *data.INPUT_SHAPE)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript);
        # it still produces the plain Gemm/MatMul/Conv graphs the compiler expects.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buf,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return onnx.load_from_string(buf.getvalue())


def analog_weight_names(onnx_model: onnx.ModelProto, model: nn.Module) -> dict[str, str]:
    """{weight initializer name: torch module name} for every analog node of the graph.

    Matched by value, not by name: the exporter names a folded ``MatMul`` weight
    ``onnx::MatMul_123``. A ``Gemm`` holds the torch weight (``transB=1``) or its transpose, a
    ``MatMul`` the transpose, a ``Conv`` the weight itself. Raises if a node or layer is left over.
    """
    inits = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    layers = {name: m.weight.detach().cpu().numpy() for name, m in analog_layers(model)}
    out: dict[str, str] = {}
    for node in onnx_model.graph.node:
        if node.op_type not in ANALOG_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if node.op_type == "MatMul" and w.ndim != 2:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        candidates = [w] if (node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b)) else [w.T]
        match = [
            n for n, lw in layers.items() if any(c.shape == lw.shape and np.array_equal(c, lw) for c in candidates)
        ]
        if len(match) != 1:
            raise ValueError(
                f"export: analog node {node.name!r} ({node.op_type}) matches {len(match)} torch layers by value"
            )
        out[node.input[1]] = match[0]
    missing = set(layers) - set(out.values())
    if missing:
        raise ValueError(f"export: torch layers without an analog ONNX node: {sorted(missing)}")
    return out


def set_metadata(onnx_model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Replace metadata_props by ``meta`` (values: strings, or JSON-dumped otherwise)."""
    del onnx_model.metadata_props[:]
    for k, v in meta.items():
        p = onnx_model.metadata_props.add()
        p.key = k
        p.value = v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def metadata(onnx_model: onnx.ModelProto | bytes) -> dict[str, str]:
    if isinstance(onnx_model, (bytes, bytearray)):
        onnx_model = onnx.load_from_string(bytes(onnx_model))
    return {p.key: p.value for p in onnx_model.metadata_props}


def onnx_logits(model_bytes: bytes, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of an ONNX model on ``x`` with onnxruntime (CPU), the floating-point reference."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


def build_onnx(
    model: nn.Module, meta: dict[str, Any] | None = None, example: torch.Tensor | None = None
) -> tuple[bytes, dict[str, str]]:
    """ONNX bytes with ``agedchip.input_ranges`` and ``agedchip.layers`` plus ``meta``;
    returns (bytes, {initializer name: module name}). ``example``: an input batch of the
    model's shape (default: digits, ``(2, 1, 8, 8)``)."""
    om = export_onnx(model, example)
    names = analog_weight_names(om, model)
    ranges = {name: float(m.input_range.detach()) for name, m in analog_layers(model)}
    full = {
        PREFIX + "input_ranges": {init: ranges[mod] for init, mod in names.items()},
        PREFIX + "layers": names,
        PREFIX + "input_name": INPUT_NAME,
        PREFIX + "output_name": OUTPUT_NAME,
        **(meta or {}),
    }
    set_metadata(om, full)
    onnx.checker.check_model(om)
    return om.SerializeToString(), names


def write_zoo_entry(
    model: nn.Module, name: str, recipe: Any, out_dir: str | Path, description: str, eval_split: str = "test"
) -> dict[str, Any]:
    """Write ``<name>.onnx`` and ``<name>.eval.npz`` into ``out_dir``; return the index entry.

    The FP accuracy recorded is that of the written ONNX under onnxruntime on the eval set, so a
    test can reproduce it exactly from the two files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = data.load_split(eval_split)
    eval_file = f"{name}.eval.npz"
    recipe_json = recipe.to_json() if hasattr(recipe, "to_json") else dict(recipe)
    meta = {
        PREFIX + "task": "classification",
        PREFIX + "num_classes": str(data.NUM_CLASSES),
        PREFIX + "dataset": f"{data.DATASET}: 1797 grey-scale 8x8 handwritten digits, 10 classes, "
        "bundled with scikit-learn (UCI optdigits test part)",
        PREFIX + "split": data.split_description() + f"; eval set = the {eval_split} split ({len(ev)} images)",
        PREFIX + "preprocessing": f"x = pixels/{data.PIXEL_MAX:g} (float32, [0, 1]), shape (N, 1, 8, 8)",
        PREFIX + "recipe": recipe_json,
        PREFIX + "eval_set": eval_file,
        PREFIX + "model_name": name,
    }
    model_bytes, _ = build_onnx(model, meta)
    fp = float((onnx_logits(model_bytes, ev.x).argmax(1) == ev.y).mean())
    om = onnx.load_from_string(model_bytes)
    set_metadata(om, {**metadata(om), PREFIX + "fp_accuracy": f"{fp:.6f}"})
    model_bytes = om.SerializeToString()
    (out_dir / f"{name}.onnx").write_bytes(model_bytes)
    np.savez_compressed(out_dir / eval_file, x=ev.x.astype(np.float32), y=ev.y.astype(np.int64))
    return {
        "name": name,
        "file": f"{name}.onnx",
        "eval_set": eval_file,
        "description": description,
        "arch": recipe_json.get("arch"),
        "hwa": bool(recipe_json.get("recipe") == "hwa"),
        "fp_accuracy": round(fp, 6),
        "n_eval": len(ev),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "bytes": len(model_bytes),
    }
