"""Architectures of the zoo: digits-sized (8×8 inputs, 10 classes), 25–70 k weights each.

Every weight-bearing layer is an :class:`~models.hwa.AnalogLinear` or
:class:`~models.hwa.AnalogConv2d` (plain ``nn.Linear``/``nn.Conv2d`` unless an HWA context is
attached), so the same module trains plainly or hardware-aware and exports to ONNX ``Gemm``,
``MatMul`` or ``Conv`` nodes with initializer weights — the ops chipsim's compiler maps to
crossbars. Everything else (ReLU, pooling, LayerNorm, softmax, attention's activation×activation
products) stays digital on the chip.

All models take the preprocessed image ``(N, 1, 8, 8)`` (see :mod:`models.data`) and return
logits ``(N, 10)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.data import NUM_CLASSES
from models.hwa import AnalogConv2d, AnalogLinear


class MLP(nn.Module):
    """64 → 256 → 128 → 10 with ReLU (50.2 k weights). Width matters on the chip: an output
    sums over more devices, so independent device errors average out (a 128-64 MLP lost twice
    as much accuracy at 1 y in the emulation)."""

    def __init__(self, hidden: tuple[int, ...] = (256, 128), num_classes: int = NUM_CLASSES):
        super().__init__()
        dims = (64, *hidden)
        self.hidden = nn.ModuleList(AnalogLinear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = AnalogLinear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.head(h)


class CNN(nn.Module):
    """conv3×3(1→16) → conv3×3(16→32) → maxpool → conv3×3(32→64) → maxpool → fc(256→10),
    ReLU after every conv, 'same' padding (25.7 k weights)."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), num_classes: int = NUM_CLASSES):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = AnalogConv2d(1, c1, 3, padding=1)
        self.conv2 = AnalogConv2d(c1, c2, 3, padding=1)
        self.conv3 = AnalogConv2d(c2, c3, 3, padding=1)
        self.fc = AnalogLinear(c3 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # 8×8 → 4×4
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)  # 4×4 → 2×2
        return self.fc(h.flatten(1))


class Block(nn.Module):
    """Pre-norm transformer encoder block: multi-head self-attention and a ReLU MLP.

    Attention is written out (not ``nn.MultiheadAttention``) so the export is plain MatMul,
    Softmax and Reshape: the q/k/v and output projections are analog layers with weights,
    ``q·kᵀ`` and ``attn·v`` are products of two activations and stay digital.
    """

    def __init__(self, dim: int, heads: int, ff: int, tokens: int):
        super().__init__()
        # Static sizes (not x.shape): the exported Reshapes then carry constant shapes, which
        # the chip compiler's shape inference needs (only the batch axis may be dynamic).
        self.heads, self.dim, self.tokens = heads, dim, tokens
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = AnalogLinear(dim, 3 * dim)
        self.proj = AnalogLinear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = AnalogLinear(dim, ff)
        self.ff2 = AnalogLinear(ff, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, d = self.tokens, self.dim
        dh = d // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(-1, t, self.heads, dh).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(dh)), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(-1, t, d)
        x = x + self.proj(o)
        return x + self.ff2(F.relu(self.ff1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """A transformer over image rows: the 8 rows of 8 pixels are 8 tokens, embedded to 64
    dimensions plus a learned position embedding, 2 pre-norm blocks (4 heads, MLP 128), final
    LayerNorm, mean over tokens, linear head (66.7 k weights). At dim 32 (17 k weights) the
    emulated chip cost 2 pp at 1 y even after HWA; dim 64 averages device errors over twice
    as many rows per output."""

    def __init__(
        self,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        ff: int = 128,
        rows_per_token: int = 1,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.tokens = 8 // rows_per_token
        self.embed = AnalogLinear(8 * rows_per_token, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, ff, self.tokens) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = AnalogLinear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, self.tokens, 64 // self.tokens)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h).mean(dim=1))


ARCHS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "transformer": TinyTransformer}


def build(arch: str, seed: int) -> nn.Module:
    """A freshly initialised model; ``seed`` fixes the initial weights (torch's default init
    draws from the global generator, so it is seeded here under ``torch.random.fork_rng``)."""
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHS[arch]()
        if isinstance(model, TinyTransformer):
            nn.init.normal_(model.pos, std=0.02)
    return model


def n_weights(model: nn.Module) -> int:
    """Weights the chip maps to devices (analog layers' weight matrices, not biases)."""
    from models.hwa import analog_layers

    return sum(m.weight.numel() for _, m in analog_layers(model))
