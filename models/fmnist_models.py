"""Fashion-MNIST architectures (issue #12; the no-skip ResNet twin is for issue #18).

All take the preprocessed image ``(N, 1, 28, 28)`` (:mod:`models.fmnist_data`) and return
logits ``(N, 10)``. As in :mod:`models.zoo_models`, every weight-bearing layer is an analog layer
(:class:`~models.hwa.AnalogConv2d`/:class:`~models.hwa.AnalogLinear`), so one module trains
plainly or hardware-aware and exports to ``Conv``/``Gemm``/``MatMul`` nodes with initializer
weights; everything else (BatchNorm, ReLU, shortcuts, pooling, LayerNorm, softmax, the LSTM's
gate nonlinearities) stays digital.

========================  ========  ===========================================================
name                      weights   shape
========================  ========  ===========================================================
``resnet``                268 048   ResNet-20 for 28×28 (He et al. 2016, §4.2: 3 stages × 3
                                    basic blocks, 16/32/64 channels, BatchNorm, parameter-free
                                    "option A" shortcuts); 64×3×3 = 576-input convs span two
                                    512-row tiles
``resnet-noskip``         268 048   the same network with every shortcut removed (issue #18):
                                    same layers, shapes and parameters, only ``forward`` differs
``vit``                   531 840   ViT (Dosovitskiy et al. 2021): 7×7 patches → 16 tokens,
                                    width 128, 4 pre-norm blocks, 4 heads, MLP 256, mean pooling
``lstm``                   81 152   one LSTM layer (hidden 128) reading the image row by row
                                    (28 steps of 28 pixels), written as explicit cell products,
                                    two biases per gate as ``torch.nn.LSTM``
========================  ========  ===========================================================

BatchNorm is folded into the preceding convolution for export (:func:`export_copy`): the chip
remaps every weight column to its own conductance range (``s_col = max|W[:, col]|``), so a
per-output-channel factor γ/σ changes only ``s_col``, not the programmed conductances; the noise
HWA trains against on the unfolded conv is the noise the chip applies to the folded one.

The LSTM is unrolled because chipsim's compiler rejects ONNX ``LSTM`` nodes with weights. Its
recurrent product ``h @ W_hh`` is one :class:`AnalogLinear` called at every step; today's
compiler programs each of the 27 calls (step 0 has h = 0) as its own crossbar copy, and HWA
likewise draws an independent chip instance per call, so training and chip agree; mapping the
shared weight to one crossbar is a compiler issue of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.fmnist_data import INPUT_SHAPE, NUM_CLASSES
from models.hwa import AnalogConv2d, AnalogLinear, analog_layers
from models.zoo_models import Block


class StridedAnalogConv2d(AnalogConv2d):
    """:class:`~models.hwa.AnalogConv2d` with a stride (its noisy path already honours
    ``self.stride``; only its constructor lacks the argument)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self._init_analog()


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> StridedAnalogConv2d:
    return StridedAnalogConv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus (with ``skip``) the shortcut, then ReLU.

    The shortcut is He et al.'s option A: identity, or at a stage change a stride-2 subsample
    with the new channels (appended after the old ones) zero. It has no parameters, so removing it leaves the
    parameter count and every shape unchanged (the no-skip twin of issue #18).
    """

    #: (conv, BatchNorm) attribute pairs that :func:`fold_batchnorm` merges.
    CONV_BN = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, c_in: int, c_out: int, stride: int, skip: bool = True):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.skip, self.stride, self.extra = skip, stride, c_out - c_in
        if not 0 <= self.extra <= c_in:
            raise ValueError(f"widths: a stage may at most double the channels ({c_in} → {c_out})")

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            # zero channels as 0·x (not F.pad or zeros): F.pad exports its pads as an unfolded
            # subgraph that hides the output shape from the compiler's shape inference
            x = torch.cat([x, x[:, : self.extra] * 0.0], dim=1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if self.skip:
            h = h + self.shortcut(x)
        return F.relu(h)


class ResNet(nn.Module):
    """ResNet-6n+2 for 28×28 inputs (n = ``blocks`` per stage; n = 3 is ResNet-20):
    conv3×3(1→w₁)-BN-ReLU, stages of width ``widths`` (stride 2 at each stage change:
    28 → 14 → 7), global average pooling, linear head. ``skip=False`` removes every shortcut."""

    CONV_BN = (("conv", "bn"),)

    def __init__(
        self, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 3, skip: bool = True, num_classes: int = NUM_CLASSES
    ):
        super().__init__()
        self.conv, self.bn = conv3x3(INPUT_SHAPE[0], widths[0]), nn.BatchNorm2d(widths[0])
        layers, c_in = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(c_in, w, 2 if (i > 0 and j == 0) else 1, skip))
                c_in = w
        self.blocks = nn.Sequential(*layers)
        self.fc = AnalogLinear(widths[-1], num_classes)
        for m in self.modules():  # He et al.'s initialisation for ReLU networks
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(h.mean(dim=(2, 3)))


class ViT(nn.Module):
    """Vision transformer: non-overlapping ``patch``×``patch`` patches (written as Reshape and
    Transpose, so the embedding is one MatMul), a learned position embedding, ``depth``
    pre-norm blocks of :class:`models.zoo_models.Block`, final LayerNorm, mean over tokens,
    linear head. Mean pooling instead of a class token keeps the export free of a Concat with
    a parameter."""

    def __init__(
        self,
        patch: int = 7,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        ff: int = 256,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        side = INPUT_SHAPE[-1]
        if side % patch:
            raise ValueError(f"patch: {patch} does not divide the image side {side}")
        self.patch, self.grid = patch, side // patch
        self.tokens = self.grid * self.grid
        self.embed = AnalogLinear(patch * patch, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, ff, self.tokens) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = AnalogLinear(dim, num_classes)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, p = self.grid, self.patch
        # static sizes (not x.shape): the compiler's shape inference needs constant Reshapes
        h = x.reshape(-1, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(-1, self.tokens, p * p)
        h = self.embed(h) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h).mean(dim=1))


class RowLSTM(nn.Module):
    """LSTM (Hochreiter & Schmidhuber 1997, with a forget gate) over the 28 image rows, then a
    linear head on the last hidden state. Gates ``[i, f, g, o] = x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh``
    (``torch.nn.LSTM``'s parameters): ``ih`` is one MatMul over all rows at once, ``hh`` one Gemm
    per step. ``hh`` keeps its bias although ``b_ih`` could absorb it: without a bias torch
    exports the repeated product as MatMuls whose weight reaches all but the first through an
    Identity node, which the compiler refuses as a computed weight."""

    def __init__(self, hidden: int = 128, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.steps, self.width, self.hidden = INPUT_SHAPE[1], INPUT_SHAPE[2], hidden
        self.ih = AnalogLinear(self.width, 4 * hidden)
        self.hh = AnalogLinear(hidden, 4 * hidden)
        self.head = AnalogLinear(hidden, num_classes)
        with torch.no_grad():  # forget-gate bias 1 (Jozefowicz et al. 2015): remember by default
            self.ih.bias[hidden : 2 * hidden].fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = self.ih(x.reshape(-1, self.steps, self.width))
        h = c = None
        for t in range(self.steps):
            g = gx[:, t] if h is None else gx[:, t] + self.hh(h)  # h₀ = 0: step 0 has no recurrent term
            # static slices, not chunk: chunk exports a Split whose output shapes the compiler
            # cannot infer
            i, f, z, o = (g[:, k * self.hidden : (k + 1) * self.hidden] for k in range(4))
            c = (
                torch.sigmoid(i) * torch.tanh(z)
                if c is None
                else torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            )
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


def _resnet_noskip(**kw) -> ResNet:
    return ResNet(skip=False, **kw)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet": ResNet,
    "resnet-noskip": _resnet_noskip,
    "vit": ViT,
    "lstm": RowLSTM,
}


def model_name(arch: str) -> str:
    """The zoo name of an architecture: ``resnet`` → ``resnet-fmnist``."""
    return f"{arch}-fmnist"


def build(arch: str, seed: int, **kwargs) -> nn.Module:
    """A freshly initialised model; ``seed`` fixes the initial weights (drawn under
    ``torch.random.fork_rng``, so the global generator is left as it was). ``kwargs`` change
    the architecture's size (tests build tiny ones)."""
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHS[arch](**kwargs)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Merge every (conv, BatchNorm) pair a module declares in ``CONV_BN`` into the conv, in
    place: ``W ← W·γ/√(var+ε)`` per output channel, ``b ← (b − mean)·γ/√(var+ε) + β``, and the
    BatchNorm becomes an identity. Equal to the eval-mode model (running statistics)."""
    for m in list(model.modules()):
        for conv_name, bn_name in getattr(m, "CONV_BN", ()):
            conv, bn = getattr(m, conv_name), getattr(m, bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
            setattr(m, bn_name, nn.Identity())
    return model


def export_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy for ONNX export with BatchNorm folded into its convs (the exported
    Conv weights are then torch parameters, which :func:`models.export.analog_weight_names`
    matches by value). The learned DAC input ranges are kept: a conv's input is unchanged."""
    return fold_batchnorm(copy.deepcopy(model).eval())


def n_weights(model: nn.Module) -> int:
    """Weights the chip maps to devices (analog layers' weight matrices, not biases)."""
    return sum(m.weight.numel() for _, m in analog_layers(model))


def set_emulation_mode(model: nn.Module) -> None:
    """Eval mode (BatchNorm on running statistics, no dropout) with the analog layers in
    training mode, which is what runs their noisy path when an HWA context is attached:
    how a chip instance is emulated in torch for a model with BatchNorm."""
    model.eval()
    for _, m in analog_layers(model):
        m.train()
