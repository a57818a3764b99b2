"""Torch models exported to ONNX for the benchmarks (and the tests, which import them from
here: benchmarks import no test module). Torch is imported inside the functions, so importing
this module costs nothing."""

from __future__ import annotations

import io
import warnings


def export(module, example, names=("x",), dynamic=True) -> bytes:
    import torch

    module.eval()
    buf = io.BytesIO()
    axes = {n: {0: "N"} for n in (*names, "y")} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=list(names),
            output_names=["y"],
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


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
    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
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
