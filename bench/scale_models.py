"""The models of :mod:`bench.scale`: an MLP of width×width layers (as one ONNX file, or saved with
its weights as external data in a ``.tar``, as a model too large for one upload file is) and
resnet18 (plain torch, exported at run time)."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MLP_LAYERS = 8


def _mlp_weights(width: int, layers: int, seed: int) -> Iterator[np.ndarray]:
    """The MLP's weight matrices in order (He-scaled normal, float32), one at a time."""
    rng = np.random.default_rng(seed)
    for _ in range(layers):
        yield (rng.standard_normal((width, width), dtype=np.float32) * np.float32(np.sqrt(2.0 / width))).astype(
            np.float32
        )


def mlp(width: int, layers: int = MLP_LAYERS, seed: int = 0) -> bytes:
    """``layers`` MatMul+Relu of width×width (He-scaled normal weights, float32), dynamic batch."""
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(_mlp_weights(width, layers, seed))]
    return _mlp_graph(width, inits).SerializeToString()


def _mlp_graph(width: int, inits: list[TensorProto]) -> onnx.ModelProto:
    nodes, prev, layers = [], "x", len(inits)
    for i in range(layers):
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    m = helper.make_model(
        helper.make_graph(nodes, "mlp", [x], [y], initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    return m


def mlp_archive(width: int, path: Path, layers: int = MLP_LAYERS, seed: int = 0) -> None:
    """The same MLP as :func:`mlp` (same weights) saved as a user uploads a model too large for one
    file: ``mlp.onnx`` with its weights as external data in ``mlp.bin``, both in the tar ``path``.
    Holds one layer's weights at a time."""
    folder = path.parent / "mlp"
    folder.mkdir()
    inits, offset = [], 0
    with open(folder / "mlp.bin", "wb") as f:
        for i, w in enumerate(_mlp_weights(width, layers, seed)):
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=w.shape)
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "mlp.bin"), ("offset", offset), ("length", w.nbytes)):
                t.external_data.add(key=key, value=str(value))
            inits.append(t)
            offset += w.nbytes
    onnx.save(_mlp_graph(width, inits), folder / "mlp.onnx")
    with tarfile.open(path, "w") as tf:
        for name in ("mlp.onnx", "mlp.bin"):
            tf.add(folder / name, f"mlp/{name}")
    shutil.rmtree(folder)


def resnet18() -> bytes:
    import torch

    from bench.architectures import ResNet18
    from bench.onnx_exports import export

    torch.manual_seed(0)
    return export(ResNet18(), torch.randn(1, 3, 224, 224))
