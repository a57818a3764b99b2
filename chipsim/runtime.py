"""Run a programmed chip at an age with onnxruntime (DESIGN §2, §3.7).

The compiled graph takes the read-out weights of every tile as graph inputs, so serving a new
age needs a read-out (numpy) but never a new onnxruntime session. Read-outs per (age, read
seed) live in a bounded LRU with a memory limit. Per-MVM noise is drawn here, in a fixed
order, from the chip's MVM stream when the request has a seed (bit-identical outputs) and from
fresh entropy otherwise.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from chipsim.compiler import LayerPlan
from chipsim.profiles import GdcMode
from chipsim.readout import ChipReadout, check_age, read_layer
from chipsim.periphery import ir_drop_ramp
from chipsim.rng import Stream, check_seed, stream
from chipsim.state import ChipState


class InputError(ValueError):
    """Inference input that does not fit the model; ``field`` names the culprit."""

    def __init__(self, message: str, field: str = "inputs"):
        super().__init__(message)
        self.field = field


@dataclass
class _Entry:
    readout: ChipReadout
    weights: dict[str, np.ndarray]
    scales: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.readout.nbytes + sum(a.nbytes for a in self.weights.values())


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


def load_plans(chip: ChipState) -> list[LayerPlan]:
    plans = []
    for p in chip.meta["plans"]:
        p = dict(p)
        p["tiles"] = [tuple(t) for t in p["tiles"]]
        if p.get("tile_channels"):
            p["tile_channels"] = [tuple(t) for t in p["tile_channels"]]
        plans.append(LayerPlan(**p))
    return plans


class ChipRuntime:
    """Inference on one programmed chip. Thread-safe; one onnxruntime session per chip."""

    def __init__(self, chip: ChipState, *, threads: int | None = None, cache_bytes: int = 256 << 20,
                 cache_entries: int = 32):
        if "compiled.onnx" not in chip.attachments:
            raise ValueError(f"chip {chip.chip_id!r} was not programmed from an ONNX model")
        self.chip = chip
        self.profile = chip.profile
        self.plans = load_plans(chip)
        self.inputs: list[dict[str, Any]] = chip.meta["inputs"]
        self.outputs: list[dict[str, Any]] = chip.meta["outputs"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(chip.attachments["compiled.onnx"], opts, providers=["CPUExecutionProvider"])
        self._graph_inputs = {i.name for i in self.session.get_inputs()}
        self.output_names = [o["name"] for o in self.outputs]
        self.cache_bytes = cache_bytes
        self.cache_entries = cache_entries
        self.stats = CacheStats()
        self._cache: OrderedDict[tuple[float, int], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ read-outs
    def _prepare(self, readout: ChipReadout) -> _Entry:
        weights: dict[str, np.ndarray] = {}
        for plan, lr in zip(self.plans, readout.layers):
            for k, (a, b) in enumerate(plan.tiles):
                names = plan.input_names(k)
                w = lr.w_norm[a:b]
                mats = {"w": w}
                if names["absw"] in self._graph_inputs:
                    mats["absw"] = np.abs(w)
                if names["rampw"] in self._graph_inputs:
                    mats["rampw"] = w * ir_drop_ramp(b - a, w)[:, None]
                for key, m in mats.items():
                    if plan.kind == "conv":
                        m = m.T.reshape(plan.conv_shape[0], -1, *plan.conv_shape[2:])  # type: ignore[index]
                    weights[names[key]] = np.ascontiguousarray(m, dtype=np.float32)
        return _Entry(readout, weights)

    def _entry(self, age_s: float, read_seed: int) -> _Entry:
        key = (age_s, read_seed)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return entry
            self.stats.misses += 1
        layers = [read_layer(layer, self.profile, self.chip.seed, i, age_s, read_seed)
                  for i, layer in enumerate(self.chip.layers)]
        entry = self._prepare(ChipReadout(age_s, read_seed, layers))
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            total = sum(e.nbytes for e in self._cache.values())
            while len(self._cache) > 1 and (total > self.cache_bytes or len(self._cache) > self.cache_entries):
                _, old = self._cache.popitem(last=False)
                total -= old.nbytes
                self.stats.evictions += 1
            self.stats.entries, self.stats.bytes = len(self._cache), total
        return entry

    def readout(self, age_s: float, read_seed: int = 0) -> ChipReadout:
        """The (cached) read-out of the chip at an age."""
        return self._entry(check_age(age_s), check_seed(read_seed, "read_seed")).readout

    def _scales(self, entry: _Entry, mode: GdcMode) -> dict[str, np.ndarray]:
        scales = entry.scales.get(mode)
        if scales is None:
            scales = {}
            for plan, layer, lr in zip(self.plans, self.chip.layers, entry.readout.layers):
                alpha = lr.alpha(mode)
                base = np.float32(layer.input_range) * layer.col_scale
                shape = (plan.cols,) + ((1,) * (len(plan.conv_shape) - 2) if plan.kind == "conv" else ())  # type: ignore[arg-type]
                for k in range(len(plan.tiles)):
                    scales[plan.input_names(k)["scale"]] = (alpha[k] * base).astype(np.float32).reshape(shape)
            entry.scales[mode] = scales  # benign race: both writers compute the same arrays
        return scales

    # ------------------------------------------------------------------ noise
    def noise_sizes(self, batch: int) -> list[tuple[str, int]]:
        """Names and sizes of the per-MVM noise inputs, in draw order."""
        out = []
        for plan in self.plans:
            for k in range(len(plan.tiles)):
                names = plan.input_names(k)
                for key in ("nw", "no"):
                    if names[key] in self._graph_inputs:
                        out.append((names[key], batch * plan.out_per_sample))
        return out

    def draw_noise(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {name: rng.standard_normal(n, dtype=np.float32) for name, n in self.noise_sizes(batch)}

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, inputs: np.ndarray | dict[str, Any]) -> dict[str, np.ndarray]:
        """Validate and convert user inputs; raises :class:`InputError` naming the input."""
        if not isinstance(inputs, dict):
            if len(self.inputs) != 1:
                raise InputError(f"inputs: the model has {len(self.inputs)} inputs "
                                 f"{[i['name'] for i in self.inputs]}; pass an object of name → array")
            inputs = {self.inputs[0]["name"]: inputs}
        names = {i["name"] for i in self.inputs}
        unknown = set(inputs) - names
        if unknown:
            raise InputError(f"inputs: unknown input(s) {sorted(unknown)}; the model takes {sorted(names)}")
        feeds = {}
        batch = None
        for meta in self.inputs:
            name = meta["name"]
            if name not in inputs:
                raise InputError(f"inputs.{name}: missing", field=f"inputs.{name}")
            try:
                arr = np.asarray(inputs[name], dtype=meta["dtype"])
            except (ValueError, TypeError):
                raise InputError(f"inputs.{name}: not a numeric array of {meta['dtype']} (ragged nesting or "
                                 "non-numbers)", field=f"inputs.{name}") from None
            shape = meta["shape"]
            if arr.ndim != len(shape):
                raise InputError(f"inputs.{name}: expected {len(shape)} dimensions {shape}, got shape {list(arr.shape)}",
                                 field=f"inputs.{name}")
            for d, (got, want) in enumerate(zip(arr.shape, shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise InputError(f"inputs.{name}: dimension {d} must be {want}, got {got} (shape {list(arr.shape)},"
                                     f" expected {shape})", field=f"inputs.{name}")
            if arr.size == 0 or arr.shape[0] == 0:
                raise InputError(f"inputs.{name}: empty batch", field=f"inputs.{name}")
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                raise InputError(f"inputs.{name}: contains NaN or infinity", field=f"inputs.{name}")
            if batch is not None and arr.shape[0] != batch:
                raise InputError(f"inputs.{name}: batch {arr.shape[0]} differs from {batch}", field=f"inputs.{name}")
            batch = arr.shape[0]
            feeds[name] = np.ascontiguousarray(arr)
        return feeds

    # ------------------------------------------------------------------ inference
    def gdc_mode(self, gdc: bool | str) -> GdcMode:
        if gdc is True:
            return self.profile.gdc if self.profile.gdc != "off" else "global"
        if gdc is False:
            return "off"
        if gdc in ("global", "column", "exact", "off"):
            return gdc  # type: ignore[return-value]
        raise InputError(f"gdc: expected true, false or one of global/column/exact/off, got {gdc!r}", field="gdc")

    def run(
        self,
        inputs: np.ndarray | dict[str, Any],
        age_s: float,
        read_seed: int = 0,
        gdc: bool | str = True,
        seed: int | None = None,
        noise: dict[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Outputs of the model on the chip at ``age_s`` seconds after programming.

        ``read_seed`` selects the read-out (1/f noise); ``seed`` makes the per-MVM noise
        reproducible (``None``: fresh noise); ``noise`` feeds explicit draws (tests).
        """
        feeds = self.check_inputs(inputs)
        age_s = check_age(age_s)
        read_seed = check_seed(read_seed, "read_seed")
        mode = self.gdc_mode(gdc)
        entry = self._entry(age_s, read_seed)
        feeds.update(entry.weights)
        feeds.update(self._scales(entry, mode))
        batch = next(iter(feeds.values())).shape[0]
        if noise is None:
            rng = stream(self.chip.seed, Stream.MVM, check_seed(seed)) if seed is not None else np.random.default_rng()
            noise = self.draw_noise(batch, rng)
        feeds.update(noise)
        return self.session.run(self.output_names, feeds)
