"""The programmed chip: immutable state sampled once at programming (DESIGN §4).

Per device the state holds the *deviation* of the programmed conductance from its target
(``dg_us``, float16) and the drift exponent with fault codes folded in (``nu``, float16): 2 bytes
each, 8 bytes per weight for the two devices of a pair. Storing the deviation rather than the
conductance keeps float16 exact where there is no noise (the ``ideal`` chip returns the digital
weights) and precise where there is (an error of ~0.3 µS is stored to ~1e-4 µS). The target
weights themselves belong to the model and are stored once, shared by every chip made from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from chipsim.half import to_float32
from chipsim.mapping import column_scales, normalise, pair_targets_us
from chipsim.profiles import ChipProfile

CHIP_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # used with fullmatch: "$" would accept a final newline


def check_chip_id(chip_id: str) -> str:
    """Chip ids are short lowercase slugs, so they are safe as folder names (no path tricks)."""
    if not isinstance(chip_id, str) or CHIP_ID_RE.fullmatch(chip_id) is None:
        raise ValueError(
            f"chip_id: {chip_id!r} is not a valid chip id (1-63 characters: lowercase letters, digits, '-', '_'; "
            "starting with a letter or digit)"
        )
    return chip_id


@dataclass(frozen=True)
class LayerSpec:
    """A matrix to program: ``weight`` (rows = inputs, cols = outputs), digital ``bias`` and the
    DAC input range ``input_range`` (inputs are clipped to ±input_range)."""

    name: str
    weight: np.ndarray
    input_range: float = 1.0
    bias: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Row range of each tile; None = split rows evenly into tiles of at most ``tile_rows``.
    #: The compiler sets it for Conv layers so tiles hold whole input channels.
    tiles: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        w = np.asarray(self.weight)
        if w.ndim != 2 or w.size == 0:
            raise ValueError(f"layer {self.name!r}: weight must be a non-empty 2-D matrix, got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"layer {self.name!r}: weight contains NaN or inf")
        if not (np.isfinite(self.input_range) and self.input_range > 0):
            raise ValueError(f"layer {self.name!r}: input_range must be a positive finite number")
        if self.bias is not None and np.asarray(self.bias).shape != (w.shape[1],):
            raise ValueError(f"layer {self.name!r}: bias must have shape ({w.shape[1]},)")


@dataclass
class LayerState:
    """One programmed layer. Arrays of devices are stacked pairs: index 0 is G+, 1 is G−."""

    name: str
    weight: np.ndarray  # float32 (rows, cols): the target (digital) weights
    input_range: float
    tiles: list[tuple[int, int]]  # row range of each tile
    dg_us: np.ndarray  # float16 (2, rows, cols): G_prog − G_target, µS
    nu: np.ndarray  # float16 (2, rows, cols): drift exponent, or fault code (< 0)
    gdc_baseline: np.ndarray  # float32 (tiles,): mean|Y| of the identity read at programming
    gdc_baseline_col: np.ndarray  # float32 (tiles, cols): the same per column
    gdc_baseline_exact: np.ndarray  # float32 (tiles,): mean|w_target| (noise-free reference)
    bias: np.ndarray | None = None  # float32 (cols,), digital
    meta: dict[str, Any] = field(default_factory=dict)
    # Decoded per-device arrays, computed on first read-out (the state never changes).
    _decoded: dict[str, DecodedDevices] = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    @cached_property
    def col_scale(self) -> np.ndarray:
        return column_scales(self.weight)

    @property
    def w_norm(self) -> np.ndarray:
        """The normalised target weights, computed at each use rather than kept (4 bytes per
        weight for a division per read-out of a layer whose devices are not cached)."""
        return normalise(self.weight, self.col_scale)

    def g_target_us(self, g_max_us: float) -> np.ndarray:
        return pair_targets_us(self.w_norm, g_max_us)

    def g_prog_us(self, g_max_us: float) -> np.ndarray:
        """Programmed conductances (2, rows, cols), µS, decoded from the stored deviation."""
        g = self.g_target_us(g_max_us)
        g += to_float32(self.dg_us)
        return np.maximum(g, 0, out=g)


@dataclass(frozen=True)
class DecodedDevices:
    """Float32 views of a layer's devices that every read-out needs, cached per layer:
    16 bytes per weight of RAM buy ~35 ns per weight per read-out (bench/chip_state.py)."""

    g_prog_us: np.ndarray  # (2, rows, cols)
    nu: np.ndarray  # (2, rows, cols), 0 for stuck devices (they do not drift)
    read_q: np.ndarray  # (2, rows, cols), 1/f amplitude Q_s(G_prog)


def decode_rows(layer: LayerState, device: Any, a: int, b: int) -> DecodedDevices:
    """The decoded arrays of rows ``a:b`` of ``layer`` (each device's values depend on it alone,
    so rows decode as they would within the whole layer)."""
    g_prog = pair_targets_us(normalise(layer.weight[a:b], layer.col_scale), device.g_max_us)
    g_prog += to_float32(layer.dg_us[:, a:b])
    np.maximum(g_prog, 0, out=g_prog)
    nu = to_float32(layer.nu[:, a:b])
    np.maximum(nu, 0, out=nu)  # fault codes (< 0) → no drift
    return DecodedDevices(g_prog, nu, np.asarray(device.read_noise_q(g_prog), dtype=np.float32))


def decode_devices(layer: LayerState, device: Any, keep: bool = True) -> DecodedDevices:
    """The decoded arrays of ``layer`` for a device model, cached on the layer when ``keep``
    (24 bytes per weight; a large chip's runtime decodes rows per read-out instead)."""
    cached = layer._decoded.get(device.name)
    if cached is None:
        cached = decode_rows(layer, device, 0, layer.weight.shape[0])
        if keep:
            layer._decoded[device.name] = cached
    return cached


@dataclass
class ChipState:
    """A programmed chip. Never mutated after programming: ages are read-outs."""

    chip_id: str
    profile: ChipProfile
    seed: int
    programmed_at: float  # Unix time, s
    layers: list[LayerState]
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able: model digest, time scale, parent…
    attachments: dict[str, bytes] = field(default_factory=dict)  # e.g. the compiled ONNX graph

    def layer(self, name: str) -> LayerState:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"chip {self.chip_id!r} has no layer {name!r}")

    @property
    def n_weights(self) -> int:
        return sum(layer.weight.size for layer in self.layers)

    @property
    def n_devices(self) -> int:
        return 2 * self.n_weights
