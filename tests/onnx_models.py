"""Small ONNX models for the tests, exported from torch (TorchScript exporter) or built directly
with onnx.helper. Test support code, not a test module (pytest collects only ``test_*.py``)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def export(module, example, names=("x",), dynamic=True) -> bytes:
    import torch

    module.eval()
    buf = io.BytesIO()
    axes = {n: {0: "N"} for n in (*names, "y")} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=list(names), output_names=["y"], dynamic_axes=axes,
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


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
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=4), torch.nn.ReLU(),
        torch.nn.Conv2d(12, 6, 1), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 10),
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
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), matrix, bias


def mobilenet_v2(seed=0, num_classes=1000, width=1.0):
    """torchvision's MobileNetV2 architecture (Sandler et al. 2018, torchvision.models.mobilenetv2:
    the same layers, strides and channel counts) in plain torch, random weights: torchvision's
    wheel cannot load its C ops next to the CPU torch (DESIGN §3.6). 52 Conv (17 depthwise) +
    1 Linear; BatchNorm folds into the Convs at export."""
    import torch
    from torch import nn

    def make_divisible(v: float, divisor: int = 8) -> int:
        new = max(divisor, int(v + divisor / 2) // divisor * divisor)
        return new + divisor if new < 0.9 * v else new

    def conv_bn(cin, cout, k=3, stride=1, groups=1, relu=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6(inplace=True)] if relu else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = int(round(cin * expand))
            self.use_res = stride == 1 and cin == cout
            layers = conv_bn(cin, hidden, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, cout, 1, relu=False)
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    torch.manual_seed(seed)
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    cin, last = make_divisible(32 * width), make_divisible(1280 * max(1.0, width))
    features = conv_bn(3, cin, 3, 2)
    for t, c, n, s in settings:
        cout = make_divisible(c * width)
        for i in range(n):
            features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    features += conv_bn(cin, last, 1)
    net = nn.Sequential(*features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(last, num_classes))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folded weights are not plain Kaiming
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net
