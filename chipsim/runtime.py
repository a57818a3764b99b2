"""Run a programmed chip at an age with onnxruntime (DESIGN §2, §3.7).

The compiled graph takes the read-out weights of every tile as graph inputs. Two bindings,
chosen per runtime (never mixed, so a seeded request is bit-identical however often it runs):

- ``initializers`` (default): one session per cached age with the read-out weights embedded
  as initializers (constants), so onnxruntime prepacks them and optimises Conv layouts. A new
  age also costs a session build (4–50 ms for the zoo models); repeated ages run up to 4×
  faster than with ``inputs`` (bench/results/runtime.md).
- ``inputs``: one session per chip; the weights of an age are fed with every run. A new age
  costs only the numpy read-out (2–20 ms for the zoo models): for one-off ages.

Read-outs per (age, read seed) live in a bounded LRU with a memory limit, together with their
session in ``initializers`` mode. Per-MVM noise comes from the chip's MVM stream when the request
has a seed (bit-identical outputs), else from fresh entropy: by default as a window of the shared
noise table at a random offset (``noise="table"``, see chipsim/noise_table.py), or as fresh
Gaussian draws per output (``noise="fresh"``, ~9 ns per output).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from chipsim.compiler import (
    GRAPH_FORMAT,
    WEIGHT_INPUTS,
    LayerPlan,
    adc_scale_step,
    compile_model,
    is_linear,
    part_factors,
    tile_parts,
)
from chipsim.noise_table import NoiseTable, shared_table
from chipsim.periphery import ir_drop_ramp
from chipsim.profiles import GdcMode
from chipsim.readout import ChipReadout, check_age, read_layer
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
    scales: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # per GDC mode
    feeds: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # scales + weights, per GDC mode
    session: ort.InferenceSession | None = None

    @property
    def nbytes(self) -> int:
        # A session's prepacked weights are about one more copy of the weights.
        n = self.readout.nbytes + sum(a.nbytes for a in self.weights.values())
        return n + (sum(a.nbytes for a in self.weights.values()) if self.session is not None else 0)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class InputChecker:
    """Validates and converts user inputs against a model's declared inputs (the ``inputs`` of
    chip meta: name, dtype, shape with ``None``/names for dynamic dimensions). Needs no chip, so
    data can be checked against a model before it is programmed."""

    def __init__(self, declared: list[dict[str, Any]]):
        self.declared = declared
        self._names = {i["name"] for i in declared}
        # (name, dtype, declared shape, [(axis, size) of its fixed dimensions]) per input
        self._specs = [(i["name"], np.dtype(i["dtype"]), i["shape"],
                        [(d, w) for d, w in enumerate(i["shape"]) if isinstance(w, int) and w > 0])
                       for i in declared]

    def __call__(self, inputs: np.ndarray | dict[str, Any]) -> dict[str, np.ndarray]:
        """Validated, contiguous feeds by input name; raises :class:`InputError` naming the input."""
        if not isinstance(inputs, dict):
            if len(self.declared) != 1:
                raise InputError(f"inputs: the model has {len(self.declared)} inputs "
                                 f"{[i['name'] for i in self.declared]}; pass an object of name → array")
            inputs = {self.declared[0]["name"]: inputs}
        if inputs.keys() - self._names:
            raise InputError(f"inputs: unknown input(s) {sorted(inputs.keys() - self._names)}; the model takes "
                             f"{sorted(self._names)}")
        feeds = {}
        batch = None
        for name, dtype, shape, fixed in self._specs:
            if name not in inputs:
                raise InputError(f"inputs.{name}: missing", field=f"inputs.{name}")
            try:
                arr = np.asarray(inputs[name], dtype=dtype)
            except (ValueError, TypeError):
                raise InputError(f"inputs.{name}: not a numeric array of {dtype} (ragged nesting or "
                                 "non-numbers)", field=f"inputs.{name}") from None
            if arr.ndim != len(shape):
                raise InputError(f"inputs.{name}: expected {len(shape)} dimensions {shape}, got shape {list(arr.shape)}",
                                 field=f"inputs.{name}")
            for d, want in fixed:
                if arr.shape[d] != want:
                    raise InputError(f"inputs.{name}: dimension {d} must be {want}, got {arr.shape[d]} (shape "
                                     f"{list(arr.shape)}, expected {shape})", field=f"inputs.{name}")
            if arr.size == 0 or arr.shape[0] == 0:
                raise InputError(f"inputs.{name}: empty batch", field=f"inputs.{name}")
            # min and max propagate NaN and hold any ±inf: no temporary array as isfinite(arr) makes
            if arr.dtype.kind == "f" and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
                raise InputError(f"inputs.{name}: contains NaN or infinity", field=f"inputs.{name}")
            if batch is not None and arr.shape[0] != batch:
                raise InputError(f"inputs.{name}: batch {arr.shape[0]} differs from {batch}", field=f"inputs.{name}")
            batch = arr.shape[0]
            feeds[name] = np.ascontiguousarray(arr)
        return feeds


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

    BINDINGS = ("inputs", "initializers")
    NOISE_SOURCES = ("table", "fresh")

    def __init__(self, chip: ChipState, *, threads: int | None = None, cache_bytes: int = 256 << 20,
                 cache_entries: int = 32, binding: str = "initializers", noise: str = "table",
                 noise_table: NoiseTable | None = None):
        if binding not in self.BINDINGS:
            raise ValueError(f"binding: expected one of {self.BINDINGS}, got {binding!r}")
        if noise not in self.NOISE_SOURCES:
            raise ValueError(f"noise: expected one of {self.NOISE_SOURCES}, got {noise!r}")
        self.noise_source = noise
        self._noise_table = (noise_table or shared_table()) if noise == "table" else None
        if "compiled.onnx" not in chip.attachments:
            raise ValueError(f"chip {chip.chip_id!r} was not programmed from an ONNX model")
        self.chip = chip
        self.profile = chip.profile
        self.plans = load_plans(chip)
        self.inputs: list[dict[str, Any]] = chip.meta["inputs"]
        self._input_checker = InputChecker(self.inputs)
        self.outputs: list[dict[str, Any]] = chip.meta["outputs"]
        self.binding = binding
        self.threads = threads
        self.graph = graph = self._graph(chip)  # the compiled graph this build runs (see _graph)
        self.session = ort.InferenceSession(graph, self._options(), providers=["CPUExecutionProvider"])
        self._graph_inputs = {i.name for i in self.session.get_inputs()}
        self._linear = is_linear(self.profile)
        self._has_noise = any(n.rsplit("/", 1)[-1] == "noise" for n in self._graph_inputs)
        self._init_graph = self._initializer_graph(graph) if binding == "initializers" else None
        self.output_names = [o["name"] for o in self.outputs]
        self.cache_bytes = cache_bytes
        self.cache_entries = cache_entries
        self.stats = CacheStats()
        self._cache: OrderedDict[tuple[float, int, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[tuple[float, int, str], threading.Event] = {}
        self._side_sessions: dict[str, ort.InferenceSession] = {}
        self._thread_rng = threading.local()

    def _graph(self, chip: ChipState) -> bytes:
        """The chip's compiled graph; recompiled from its stored model when it was programmed
        with another graph layout (the graph is derived from the model, the profile and the
        layers' input ranges, none of which changed)."""
        if chip.meta.get("graph_format", 1) == GRAPH_FORMAT:
            return chip.attachments["compiled.onnx"]
        ranges = {plan.weight_name: layer.input_range for plan, layer in zip(self.plans, chip.layers)}
        compiled = compile_model(chip.attachments["model.onnx"], chip.profile, ranges=ranges)
        if [asdict(p) for p in compiled.plans] != [asdict(p) for p in self.plans]:
            raise ValueError(f"chip {chip.chip_id!r}: its stored model no longer compiles to its programmed layers")
        return compiled.graph

    def _options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        return opts

    def _initializer_graph(self, graph: bytes):
        """The compiled graph without its weight inputs: per age, the read-out weights are added
        to a copy as initializers (constants, so onnxruntime prepacks them and applies its
        layout optimisations)."""
        import onnx

        model = onnx.load_from_string(graph)
        keep = [vi for vi in model.graph.input
                if not (vi.name.startswith("chip/") and vi.name.rsplit("/", 1)[-1] in WEIGHT_INPUTS)]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        return model

    # ------------------------------------------------------------------ read-outs
    def _tile_weights(self, plan: LayerPlan, w: np.ndarray, input_range: float) -> dict[str, np.ndarray]:
        """The weight inputs of one tile (see compiler.tile_parts), by part, from its normalised
        weights (rows, cols); a Conv tile's parts are stacked into ``w``."""
        def conv_form(m: np.ndarray) -> np.ndarray:
            return m.T.reshape(plan.cols, -1, *plan.conv_shape[2:])  # type: ignore[index]

        parts = tile_parts(self.profile)
        if self._linear:
            mats = [w]  # α·s_col already applied (see compiler.is_linear)
        else:
            f = part_factors(self.profile, input_range, w.shape[0])
            mats = []
            for p in parts:
                if p == "r":  # the IR-drop position ramp, per row
                    mats.append(w * (ir_drop_ramp(w.shape[0], w) * f[p])[:, None])
                else:
                    mats.append((w if p == "w" else np.abs(w)) * f[p])
        if plan.kind == "conv":
            return {"w": np.ascontiguousarray(np.concatenate([conv_form(m) for m in mats], axis=0), dtype=np.float32)}
        return {p: np.ascontiguousarray(m, dtype=np.float32) for p, m in zip(parts, mats)}

    def _prepare(self, readout: ChipReadout, mode: GdcMode) -> _Entry:
        weights: dict[str, np.ndarray] = {}
        for plan, layer, lr in zip(self.plans, self.chip.layers, readout.layers):
            alpha = lr.alpha(mode) if self._linear else None
            for k, (a, b) in enumerate(plan.tiles):
                names = plan.input_names(k)
                w = lr.w_norm[a:b]
                if alpha is not None:  # linear tile: y = x @ (w·α_k·s_col), see compiler.is_linear
                    w = w * (alpha[k] * layer.col_scale)[None, :]
                for part, arr in self._tile_weights(plan, w, layer.input_range).items():
                    weights[names[part]] = arr
        entry = _Entry(readout, weights)
        if self.binding == "initializers":
            # The weights are embedded in a copy of the graph rather than passed with
            # SessionOptions.add_initializer: with onnxruntime 1.32, ORT_ENABLE_ALL's Conv layout
            # transformation (NCHWc) packed the graph's placeholder values instead of the
            # add_initializer ones (wrong Conv outputs), and without that optimisation Conv runs
            # ~10x slower. Embedding costs one serialisation of the weights per cached age.
            from onnx import numpy_helper

            model = type(self._init_graph)()
            model.CopyFrom(self._init_graph)
            model.graph.initializer.extend(numpy_helper.from_array(arr, name) for name, arr in weights.items())
            entry.session = ort.InferenceSession(model.SerializeToString(), self._options(),
                                                 providers=["CPUExecutionProvider"])
        return entry

    def _entry(self, age_s: float, read_seed: int, mode: GdcMode | None = None) -> _Entry:
        """The cached entry of (age, read seed) — and GDC mode for linear profiles, whose weights
        carry α. Single flight: concurrent misses of one key wait for the first thread's
        read-out (and session build) instead of repeating it."""
        mode = mode or self.gdc_mode(True)
        key = (age_s, read_seed, mode if self._linear else "")
        while True:
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None:
                    self._cache.move_to_end(key)
                    self.stats.hits += 1
                    return entry
                pending = self._inflight.get(key)
                if pending is None:
                    self.stats.misses += 1
                    pending = self._inflight[key] = threading.Event()
                    break
            pending.wait()  # another thread computes it; then look again (it may have failed)
        try:
            layers = [read_layer(layer, self.profile, self.chip.seed, i, age_s, read_seed)
                      for i, layer in enumerate(self.chip.layers)]
            entry = self._prepare(ChipReadout(age_s, read_seed, layers), mode)
        finally:
            with self._lock:
                del self._inflight[key]
            pending.set()
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

    def peek(self, age_s: float, read_seed: int = 0) -> ChipReadout | None:
        """The cached read-out if there is one, without counting a hit or changing LRU order."""
        with self._lock:
            entry = next((e for (a, r, _), e in self._cache.items() if a == float(age_s) and r == int(read_seed)), None)
        return None if entry is None else entry.readout

    def _scales(self, entry: _Entry, mode: GdcMode) -> dict[str, np.ndarray]:
        if self._linear:
            return {}  # folded into the weights
        scales = entry.scales.get(mode)
        if scales is None:
            scales = {}
            for plan, layer, lr in zip(self.plans, self.chip.layers, entry.readout.layers):
                alpha = lr.alpha(mode)
                base = np.float32(layer.input_range * adc_scale_step(self.profile)) * layer.col_scale
                shape = (plan.cols,) + ((1,) * (len(plan.conv_shape) - 2) if plan.kind == "conv" else ())  # type: ignore[arg-type]
                for k in range(len(plan.tiles)):
                    scales[plan.input_names(k)["scale"]] = (alpha[k] * base).astype(np.float32).reshape(shape)
            entry.scales[mode] = scales  # benign race: both writers compute the same arrays
        return scales

    # ------------------------------------------------------------------ noise
    def _mvm_rng(self, seed: int | None) -> np.random.Generator:
        """The chip's MVM stream of a seeded request; else this thread's generator, seeded once
        from OS entropy (creating a fresh one per request costs ~17 µs, measured)."""
        if seed is not None:
            return stream(self.chip.seed, Stream.MVM, check_seed(seed))
        rng = getattr(self._thread_rng, "rng", None)
        if rng is None:
            rng = self._thread_rng.rng = np.random.default_rng()
        return rng

    def noise_shapes(self, batch: int) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the per-MVM noise inputs (one per tile), in draw order."""
        out = []
        for plan in self.plans:
            for k in range(len(plan.tiles)):
                name = plan.input_names(k)["noise"]
                if name in self._graph_inputs:
                    out.append((name, (batch, *plan.out_shape[1:])))
        return out

    def draw_noise(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Standard normal per-MVM noise of every tile (read-only views in ``table`` mode)."""
        shapes = self.noise_shapes(batch)
        if self._noise_table is not None:
            arrays = self._noise_table.windows([s for _, s in shapes], rng)
        else:
            arrays = [rng.standard_normal(s, dtype=np.float32) for _, s in shapes]
        return {name: a for (name, _), a in zip(shapes, arrays)}

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, inputs: np.ndarray | dict[str, Any]) -> dict[str, np.ndarray]:
        """Validate and convert user inputs; raises :class:`InputError` naming the input."""
        return self._input_checker(inputs)

    # ------------------------------------------------------------------ inference
    def gdc_mode(self, gdc: bool | str) -> GdcMode:
        try:
            return GdcMode.resolve(gdc, self.profile.gdc)
        except ValueError as e:
            raise InputError(str(e), field="gdc") from None

    def run_tensor(
        self, inputs: np.ndarray | dict[str, Any], tensor: str, age_s: float, read_seed: int = 0,
        gdc: bool | str = True, seed: int | None = None,
    ) -> np.ndarray:
        """The value of an intermediate tensor of the compiled graph (e.g. the input of an analog
        layer as the aged chip computes it). Uses a side session with weights fed as inputs."""
        feeds = self.check_inputs(inputs)
        if tensor in feeds:
            return feeds[tensor]
        with self._lock:
            sess = self._side_sessions.get(tensor)
        if sess is None:
            import onnx
            from onnx import TensorProto, helper

            model = onnx.load_from_string(self.graph)
            if tensor not in {o for n in model.graph.node for o in n.output}:
                raise InputError(f"tensor: the compiled graph has no tensor {tensor!r}", field="tensor")
            model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
            sess = ort.InferenceSession(model.SerializeToString(), self._options(), providers=["CPUExecutionProvider"])
            with self._lock:
                self._side_sessions[tensor] = sess
        mode = self.gdc_mode(gdc)
        entry = self._entry(check_age(age_s), check_seed(read_seed, "read_seed"), mode)
        feeds.update(entry.weights)
        feeds.update(self._scales(entry, mode))
        batch = next(iter(feeds.values())).shape[0]
        rng = self._mvm_rng(seed)
        feeds.update(self.draw_noise(batch, rng))
        return sess.run([tensor], feeds)[0]

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
        return self.run_with_readout(inputs, age_s, read_seed, gdc, seed, noise)[0]

    def run_with_readout(
        self,
        inputs: np.ndarray | dict[str, Any],
        age_s: float,
        read_seed: int = 0,
        gdc: bool | str = True,
        seed: int | None = None,
        noise: dict[str, np.ndarray] | None = None,
    ) -> tuple[list[np.ndarray], ChipReadout]:
        """:meth:`run`, and the read-out the outputs were computed with (its GDC factors, for
        example), without a second cache look-up."""
        feeds = self.check_inputs(inputs)
        age_s = check_age(age_s)
        read_seed = check_seed(read_seed, "read_seed")
        mode = self.gdc_mode(gdc)
        entry = self._entry(age_s, read_seed, mode)
        batch = next(iter(feeds.values())).shape[0]
        feeds.update(self._static_feeds(entry, mode))
        if noise is None and self._has_noise:
            rng = self._mvm_rng(seed)
            noise = self.draw_noise(batch, rng)
        if noise:
            feeds.update(noise)
        return (entry.session or self.session).run(self.output_names, feeds), entry.readout

    def _static_feeds(self, entry: _Entry, mode: GdcMode) -> dict[str, np.ndarray]:
        """Weights (``inputs`` binding) and GDC-scaled column scales of an entry, merged once."""
        feeds = entry.feeds.get(mode)
        if feeds is None:
            feeds = dict(self._scales(entry, mode))
            if entry.session is None:
                feeds.update(entry.weights)
            entry.feeds[mode] = feeds  # benign race: both writers build the same dict
        return feeds
