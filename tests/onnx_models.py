"""Small ONNX models for the tests, exported from torch (TorchScript exporter) or built directly
with onnx.helper. Test support code, not a test module (pytest collects only ``test_*.py``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.onnx_exports import export, mobilenet_v2  # noqa: F401  (shared with the benchmarks)


def mlp(seed=0, sizes=(64, 48, 10)):
    import torch

    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def digits_mlp() -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """A 64-64-10 MLP trained on scikit-learn's digits (pixels/16; a fixed split of 1400 training
    images, the remaining 397 for testing): (ONNX bytes, x_test, y_test, x_train)."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1400], idx[1400:]
    net = mlp(seed=0, sizes=(64, 64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    for _ in range(150):  # full-batch: ~1 s, reaches ~97 % test accuracy
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return export(net, torch.from_numpy(x[:2])), x[te], y[te], x[tr]


def cnn(seed=0):
    """Stride, padding, dilation and groups, plus a fully connected head."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(12, 6, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 4 * 4, 10),
    )


def transformer(seed=0, d=16, seq=8):
    import torch

    torch.manual_seed(seed)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(8, d)
            self.enc = torch.nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
            self.out = torch.nn.Linear(d, 10)

        def forward(self, x):
            return self.out(self.enc(self.inp(x)).mean(dim=1))

    return Tiny()


def single_layer(op: str, rows: int, cols: int, seed: int = 0, **kw) -> tuple[bytes, np.ndarray, np.ndarray | None]:
    """One MatMul / Gemm(transB) / Conv layer with random weights; returns (model, W_matrix, bias)."""
    rng = np.random.default_rng(seed)
    if op == "conv":
        cin, k, hw = kw["cin"], kw.get("k", 3), kw.get("hw", 6)
        w = rng.standard_normal((cols, cin, k, k)).astype(np.float32) * 0.3
        bias = rng.standard_normal(cols).astype(np.float32)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, hw, hw])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols, hw, hw])
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1])
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")]
        matrix = w.reshape(cols, -1).T
    else:
        w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.3
        bias = rng.standard_normal(cols).astype(np.float32) if op == "gemm" else None
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])
        if op == "gemm":
            node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", transB=1)
            inits = [numpy_helper.from_array(w.T.copy(), "w"), numpy_helper.from_array(bias, "b")]
        else:
            node = helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")
            inits = [numpy_helper.from_array(w, "w")]
        matrix = w
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), matrix, bias
