"""The foreign-model corpus (#13): models nobody on the project wrote, exported at test time with
random weights and no downloads — torch (plain-torch torchvision architectures, see
architectures.py), Hugging Face transformers, scikit-learn through skl2onnx.

Each :class:`Case` holds what a user uploads (ONNX bytes, or a ``.zip`` for the external-data
model), the reference onnxruntime session on the *original* export (for the external-data
model: onnxruntime reading the files itself), and inputs. Exported once per test session.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass
class Case:
    name: str
    upload: bytes  # what POST /program receives (ONNX, or an archive)
    reference: ort.InferenceSession  # onnxruntime on the original export
    inputs: Callable[[int, np.random.Generator], dict[str, np.ndarray]]  # batch → feeds
    #: Largest relative difference ideal vs original: float32 rounding of the folded scales
    #: (~1e-7 per layer) stays below 1e-5; fp16 outputs are rounded to fp16 (2^-11 relative) by
    #: both, so a difference of one or two fp16 steps is allowed there.
    rtol: float = 1e-5
    #: Integer outputs (skl2onnx's labels) compared exactly where the decision is not a near tie.
    int_outputs: list[int] = field(default_factory=list)
    max_analog_layers: int | None = None  # a bound from the issue (mobilenet_v2: ~50 layers, not 7 172)


def _session(model: bytes | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _export(
    module,
    example: tuple,
    names: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
    path: str | None = None,
    external: bool = False,
) -> bytes:
    import torch

    module.eval()
    buf: io.BytesIO | str = path or io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buf,
            input_names=names,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue() if isinstance(buf, io.BytesIO) else b""


def _batch_axes(names: list[str]) -> dict[str, dict[int, str]]:
    return {n: {0: "N"} for n in names}


def _image_case(name: str, make, size: int, **kw) -> Case:
    import torch

    torch.manual_seed(0)
    model = _export(make(), (torch.randn(2, 3, size, size),), ["x"], ["y"], _batch_axes(["x", "y"]))
    return Case(
        name,
        model,
        _session(model),
        lambda n, rng: {"x": rng.standard_normal((n, 3, size, size)).astype(np.float32)},
        **kw,
    )


def resnet18() -> Case:
    from bench.architectures import ResNet18

    return _image_case("resnet18", ResNet18, 64)  # fully convolutional: 64×64 keeps CI fast, same weights


def mobilenet_v2() -> Case:
    from bench.architectures import MobileNetV2

    return _image_case("mobilenet_v2", MobileNetV2, 64, max_analog_layers=60)


def vit() -> Case:
    from bench.architectures import ViT

    return _image_case("vit", ViT, 32)


def _bert(dynamic_sequence: bool) -> Case:
    """BERT-tiny's shape (2 layers, hidden 128, 2 heads, MLP 512), random init, exported with the
    usual dynamic batch (and sequence) axes; outputs the last hidden state and the pooled one."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=64,
    )
    bert = BertModel(config).eval()

    class Wrapped(torch.nn.Module):  # transformers ≥ 5 takes keyword arguments only
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    seq = 12
    ids = torch.randint(0, 1000, (2, seq))
    axes = {
        n: ({0: "batch", 1: "sequence"} if dynamic_sequence else {0: "batch"})
        for n in ("input_ids", "attention_mask", "last_hidden_state")
    }
    axes["pooler_output"] = {0: "batch"}
    model = _export(
        Wrapped(),
        (ids, torch.ones_like(ids)),
        ["input_ids", "attention_mask"],
        ["last_hidden_state", "pooler_output"],
        axes,
    )

    def inputs(n, rng):
        t = int(rng.integers(5, 40)) if dynamic_sequence else seq
        mask = np.ones((n, t), np.int64)
        mask[0, t // 2 :] = 0  # a padded sample
        return {"input_ids": rng.integers(0, 1000, (n, t)), "attention_mask": mask}

    return Case("bert-tiny" + ("" if dynamic_sequence else "-dynamic-batch"), model, _session(model), inputs)


def bert_tiny() -> Case:
    return _bert(dynamic_sequence=True)


def bert_tiny_dynamic_batch() -> Case:
    return _bert(dynamic_sequence=False)


def _recurrent(cell: str) -> Case:
    import torch

    from bench.architectures import Recurrent

    torch.manual_seed(0)
    model = _export(Recurrent(cell), (torch.randn(2, 10, 16),), ["x"], ["y"], {"x": {0: "N", 1: "T"}, "y": {0: "N"}})
    return Case(
        cell,
        model,
        _session(model),
        lambda n, rng: {"x": rng.standard_normal((n, int(rng.integers(3, 15)), 16)).astype(np.float32)},
    )


def lstm() -> Case:
    return _recurrent("lstm")


def gru() -> Case:
    return _recurrent("gru")


def conv_transpose_decoder() -> Case:
    import torch

    from bench.architectures import Decoder

    torch.manual_seed(0)
    model = _export(Decoder(), (torch.randn(2, 8, 8, 8),), ["x"], ["y"], _batch_axes(["x", "y"]))
    return Case(
        "convtranspose-decoder",
        model,
        _session(model),
        lambda n, rng: {"x": rng.standard_normal((n, 8, 8, 8)).astype(np.float32)},
    )


def sklearn_pipeline() -> Case:
    """StandardScaler + MLPClassifier through skl2onnx: an ``ai.onnx.ml`` Scaler, MatMul/Add
    layers, Softmax; outputs the label (int64) and the class probabilities (no ZipMap)."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12)).astype(np.float32) * rng.uniform(0.5, 20, 12).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 5)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((32, 16), max_iter=50, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: the weights need not be trained
        pipe.fit(x, y)
    model = to_onnx(
        pipe, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}, options={id(pipe.steps[-1][1]): {"zipmap": False}}
    ).SerializeToString()
    scale = x.std(0)
    return Case(
        "sklearn-scaler-mlp",
        model,
        _session(model),
        lambda n, rng: {"X": (rng.standard_normal((n, 12)) * scale).astype(np.float32)},
        int_outputs=[0],
    )


def fp16_cnn() -> Case:
    """A small CNN exported after ``model.half()``: fp16 inputs, weights and outputs."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 10),
    ).half()
    model = _export(net, (torch.randn(2, 3, 16, 16).half(),), ["x"], ["y"], _batch_axes(["x", "y"]))
    return Case(
        "fp16-cnn",
        model,
        _session(model),
        lambda n, rng: {"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float16)},
        rtol=2.0**-10,
    )


def external_data_mlp() -> Case:
    """An MLP saved with its weights in a separate file (``save_as_external_data``), uploaded as a
    ``.zip``; the reference is onnxruntime loading the files from disk itself."""
    import onnx
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 64))
    folder = Path(tempfile.mkdtemp(prefix="agedchip-extdata-"))
    model = onnx.load_from_string(_export(net, (torch.randn(2, 256),), ["x"], ["y"], _batch_axes(["x", "y"])))
    onnx.save(model, folder / "mlp.onnx", save_as_external_data=True, location="mlp.weights", size_threshold=0)
    assert os.path.getsize(folder / "mlp.onnx") < 10_000  # the weights are outside
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in ("mlp.onnx", "mlp.weights"):
            zf.write(folder / f, f"mlp/{f}")
    reference = _session(str(folder / "mlp.onnx"))  # reads the weights file now
    shutil.rmtree(folder)
    return Case(
        "external-data-mlp",
        buf.getvalue(),
        reference,
        lambda n, rng: {"x": rng.standard_normal((n, 256)).astype(np.float32)},
    )


BUILDERS: dict[str, Callable[[], Case]] = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "vit": vit,
    "bert-tiny": bert_tiny,
    "bert-tiny-dynamic-batch": bert_tiny_dynamic_batch,
    "lstm": lstm,
    "gru": gru,
    "convtranspose-decoder": conv_transpose_decoder,
    "sklearn-scaler-mlp": sklearn_pipeline,
    "fp16-cnn": fp16_cnn,
    "external-data-mlp": external_data_mlp,
}


@cache
def case(name: str) -> Case:
    """The exported case (once per test session)."""
    return BUILDERS[name]()
