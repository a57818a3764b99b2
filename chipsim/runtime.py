"""Run a programmed chip at an age with onnxruntime (DESIGN §2, §3.7).

The compiled graph takes the read-out weights of every tile as graph inputs. Two bindings,
chosen per runtime (never mixed, so a seeded request is bit-identical however often it runs):

- ``initializers`` (default): one session per cached age with the read-out weights embedded
  as initializers (constants), so onnxruntime prepacks them and optimises Conv layouts. A new
  age also costs a session build (4–50 ms for the zoo models); repeated ages run up to 4×
  faster than with ``inputs`` (bench/results/runtime.md).
- ``inputs``: one session per chip; the weights of an age are fed with every run. A new age
  costs only the numpy read-out (2–20 ms for the zoo models): for one-off ages.

An ``initializers`` runtime whose weight inputs together exceed ``initializers_max_bytes`` binds
them as ``inputs`` instead (``binding`` says which it uses): embedding them costs three transient
copies (the protobuf initializers, their serialisation, onnxruntime's parse) beside onnxruntime's
own and its prepacked ones, ~100 bytes per analog weight at a new age against ~20 as inputs, and a
serialised model cannot exceed protobuf's 2 GiB (reached near 134M weights on 'pcm'). Such a
runtime also decodes the devices afresh at every read-out rather than caching them (24 bytes per
weight; see :func:`chipsim.state.decode_devices`). Outputs are those of the ``inputs`` binding.
Its read-outs still embed the weights of the Conv tiles that the session graph leaves as Convs
(more than 4 output pixels, :mod:`chipsim.compiler.conv_matmul`), up to ``initializers_max_bytes``
of them, in a session per cached age built with the read-out (``embed_convs``; every request at
that read-out runs it, so seeded requests stay bit-identical): onnxruntime runs a Conv with fed weights
image by image and only a constant one on its prepacked NCHWc path (resnet18: its stem, layer1
and layer2, 11 MB of 187 MB of read-out weights; see docs/benchmarks.md).

With the ``lean`` lowering, an ``initializers`` runtime's session of a read-out leaves out each
tile's IR cubic term and ADC clip where that read-out's weights prove them below 1e-5 of their
term, or never reached (:mod:`chipsim.compiler.tile_bounds`; ``tile_drops=False`` keeps them).

Read-outs per (age, read seed) live in a bounded LRU with a memory limit
(:mod:`chipsim.readout_cache`), together with their session in ``initializers`` mode; the
weights and scales fed to the graph are packed by :mod:`chipsim.compiler.weight_packing`.
Per-MVM noise (:mod:`chipsim.mvm_noise`): one fresh standard normal per analog output, shaped
like each request's actual outputs; a request with a seed draws from a generator keyed by
(chip seed, seed, chunk) — bit-identical outputs, chunks of one evaluation independent — and one
without from its thread's generator.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from chipsim.compiler import GRAPH_FORMAT, compile_model, is_linear
from chipsim.compiler.plan import load_plans, physical_plan
from chipsim.compiler.session_graph import SessionGraph, session_graph
from chipsim.compiler.tile_bounds import XI_MAX
from chipsim.compiler.tile_drops import read_out_graph
from chipsim.compiler.weight_packing import scale_inputs, weight_inputs
from chipsim.model_inputs import InputError, ModelInputs
from chipsim.modes import (
    DEFAULT_MVM_NOISE,
    MVM_NOISE_TABLE_DEPRECATION,
    GdcMode,
    GraphLowering,
    MvmNoiseSource,
    WeightBinding,
)
from chipsim.mvm_noise import NoiseShapes, draw, seeded_generator, thread_generator
from chipsim.ort_session import cpu_session
from chipsim.readout import ChipReadout, check_age, read_layer
from chipsim.readout_cache import CacheStats, ReadoutCache
from chipsim.readout_entry import SESSION_CHARGE, ReadoutEntry
from chipsim.rng import check_seed
from chipsim.state import ChipState
from chipsim.weight_binding import (
    INITIALIZERS_MAX_BYTES,
    conv_weights_embedded,
    embedded_session,
    initializer_graph,
    weight_input_bytes,
)

__all__ = ["INITIALIZERS_MAX_BYTES", "SESSION_CHARGE", "CacheStats", "ChipRuntime", "InputError", "load_plans"]


#: Default bound of the read-out cache, bytes: two ages of resnet18 on 'pcm' (0.23 GB each as
#: inputs) fit, so a client alternating two ages does not pay a read-out per request.
CACHE_BYTES = 1 << 30


class ChipRuntime:
    """Inference on one programmed chip. Thread-safe; one onnxruntime session per chip."""

    BINDINGS = tuple(b.value for b in WeightBinding)
    NOISE_SOURCES = tuple(s.value for s in MvmNoiseSource)

    def __init__(
        self,
        chip: ChipState,
        *,
        threads: int | None = None,
        cache_bytes: int = CACHE_BYTES,
        cache_entries: int = 32,
        binding: str = WeightBinding.INITIALIZERS,
        noise: str = DEFAULT_MVM_NOISE,
        lowering: GraphLowering | str | None = None,
        initializers_max_bytes: int = INITIALIZERS_MAX_BYTES,
        tile_drops: bool = True,
        embed_convs: bool = True,
    ):
        if binding not in self.BINDINGS:
            raise ValueError(f"binding: expected one of {self.BINDINGS}, got {binding!r}")
        if noise not in self.NOISE_SOURCES:
            raise ValueError(f"noise: expected one of {self.NOISE_SOURCES}, got {noise!r}")
        if noise == MvmNoiseSource.TABLE:
            warnings.warn(MVM_NOISE_TABLE_DEPRECATION, DeprecationWarning, stacklevel=2)
            noise = MvmNoiseSource.FRESH
        #: The sampler of per-MVM noise (``fresh`` exact ziggurat, ``fresh-q16`` quantile bins).
        self.noise_source = MvmNoiseSource(noise).value
        if "compiled.onnx" not in chip.attachments:
            raise ValueError(f"chip {chip.chip_id!r} was not programmed from an ONNX model")
        self.chip = chip
        self.profile = chip.profile
        self.plans = load_plans(chip)
        self.inputs: list[dict[str, Any]] = chip.meta["inputs"]
        self._model_inputs = ModelInputs(self.inputs)
        self.outputs: list[dict[str, Any]] = chip.meta["outputs"]
        self.output_names = [o["name"] for o in self.outputs]
        self.threads = threads
        self.graph = graph = self._graph(chip, None if lowering is None else GraphLowering(lowering))
        proto = onnx.load_from_string(graph)
        self._graph_inputs = {i.name for i in proto.graph.input}
        #: Bytes of the weight inputs of one read-out (all tiles, float32).
        self.weight_bytes = weight_input_bytes(proto.graph.input)
        #: The binding asked for and the one used (``inputs`` above ``initializers_max_bytes``).
        self.requested_binding = WeightBinding(binding).value
        self.large = self.weight_bytes > initializers_max_bytes
        self.binding = WeightBinding.INPUTS.value if self.large else self.requested_binding
        binding = self.binding
        self._linear = is_linear(self.profile)
        self._noise_shapes = NoiseShapes(graph, [i["name"] for i in self.inputs])
        self._has_noise = len(self._noise_shapes) > 0
        self._init_graph = None
        #: how the sessions of the initializers binding are fed (chipsim.compiler.session_graph)
        self._init_feeds: SessionGraph | None = None
        if binding == WeightBinding.INITIALIZERS:
            self._init_feeds = session_graph(proto, inputs_binding=False)
            self._init_graph = initializer_graph(self._init_feeds.model)  # the same graph, weights not inputs
        #: the session graph with weights as inputs, once built (chipsim.compiler.session_graph)
        self._inputs_graph: SessionGraph | None = None
        #: A large chip (bound as ``inputs`` for its size, not by request) embeds its Conv tiles'
        #: weights per read-out (see the module doc), up to this many bytes; 0: never.
        by_size = self.large and self.requested_binding != WeightBinding.INPUTS
        self._embed_convs_max = initializers_max_bytes if embed_convs and by_size else 0
        self._partial: tuple[onnx.ModelProto, frozenset[str]] | None = None
        #: A read-out's session drops the ops its weights prove negligible (chipsim.compiler.tile_drops):
        #: lean lowering, ``initializers`` binding only (``inputs`` shares one session across ages).
        self.tile_drops = bool(tile_drops) and self._init_graph is not None and self.lowering == GraphLowering.LEAN
        self._session: ort.InferenceSession | None = None
        self.cache_bytes = cache_bytes
        self.cache_entries = cache_entries
        self._cache: ReadoutCache[tuple[float, int, str], ReadoutEntry] = ReadoutCache(cache_bytes, cache_entries)
        self._lock = threading.Lock()
        self._side_sessions: dict[str, tuple[ort.InferenceSession, list]] = {}
        self._full: tuple[bytes, list] | None = None  # the full lowering, for run_tensor

    def evict_readouts(self, keep: int = 0) -> int:
        """Drop cached read-outs (and their sessions), oldest first, until ``keep`` remain;
        returns the bytes the cache charged them. For a memory budget across chips."""
        return self._cache.evict(keep)

    @property
    def stats(self) -> CacheStats:
        """Hits, misses and evictions of the read-out cache, and what it holds."""
        return self._cache.stats

    def _graph(self, chip: ChipState, lowering: GraphLowering | None) -> bytes:
        """The compiled graph this runtime runs: the chip's own if it has the current layout and
        the requested ``lowering`` (None: whichever it stored), else recompiled from its stored
        model (the graph is derived from the model, the profile and the layers' input ranges,
        none of which changed; the plans follow the new graph)."""
        stored = chip.meta.get("graph_lowering") if chip.meta.get("graph_format", 1) == GRAPH_FORMAT else None
        self.lowering = lowering or GraphLowering(stored or GraphLowering.LEAN)
        if stored == self.lowering:
            return chip.attachments["compiled.onnx"]
        ranges = {plan.weight_name: layer.input_range for plan, layer in zip(self.plans, chip.layers)}
        compiled = compile_model(chip.attachments["model.onnx"], chip.profile, ranges=ranges, lowering=self.lowering)
        if compiled.physical() != [physical_plan(p) for p in self.plans]:
            raise ValueError(f"chip {chip.chip_id!r}: its stored model no longer compiles to its programmed layers")
        self.plans = compiled.plans
        return compiled.graph

    @property
    def session(self) -> ort.InferenceSession:
        """The session of the compiled graph, weights fed as inputs; built on first use (an
        ``initializers`` runtime runs a session per cached age and never needs it, so programming
        a chip builds none)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    model = self._session_graph().model
                    self._session = cpu_session(model.SerializeToString(), self.threads)
        return self._session

    def _session_graph(self) -> SessionGraph:
        """The graph of :attr:`session` and how to feed it (built once; a benign race)."""
        if self._inputs_graph is None:
            self._inputs_graph = session_graph(self.graph, inputs_binding=True)
        return self._inputs_graph

    def _partial_graph(self) -> tuple[onnx.ModelProto, frozenset[str]] | None:
        """:func:`~chipsim.weight_binding.conv_weights_embedded` of the session graph (built once)."""
        if self._embed_convs_max <= 0:
            return None
        if self._partial is None:
            self._partial = conv_weights_embedded(self._session_graph().model, self._embed_convs_max)
        return self._partial if self._partial[1] else None

    def _fed(self, arrays: dict[str, np.ndarray], graph: SessionGraph | None = None) -> dict[str, np.ndarray]:
        """``arrays`` (a read-out's weight or scale inputs) as the session of ``graph`` takes
        them (default: :attr:`session`'s)."""
        graph = graph or self._session_graph()
        return {k: graph.feed(k, v) for k, v in arrays.items() if k in self._graph_inputs}

    # ------------------------------------------------------------------ read-outs
    def _weights(self, readout: ChipReadout, mode: GdcMode) -> dict[str, np.ndarray]:
        return weight_inputs(self.plans, self.chip.layers, readout, self.profile, mode)

    def _prepare(self, readout: ChipReadout, mode: GdcMode) -> ReadoutEntry:
        weights = self._weights(readout, mode)
        entry = ReadoutEntry(readout, weights, sum(a.nbytes for a in weights.values()))
        if self._init_graph is not None:
            entry.weights = {}  # the session keeps its own copy; run_tensor packs them again
            graph = self._init_graph
            if self.tile_drops:
                ranges = [layer.input_range for layer in self.chip.layers]
                graph, entry.drops = read_out_graph(graph, self.plans, ranges, weights, self.profile)
            entry.session = embedded_session(graph, weights, self.threads)
        else:
            entry.fed_weights = self._fed(weights)
            entry.weight_bytes += sum(a.nbytes for k, a in entry.fed_weights.items() if a is not weights[k])
            partial = self._partial_graph()
            if partial is not None:  # with the read-out, so that every request at it runs one session
                graph, names = partial
                embed = {k: entry.fed_weights.pop(k) for k in names}
                entry.partial, entry.embedded_bytes = True, sum(a.nbytes for a in embed.values())
                entry.session = embedded_session(graph, embed, self.threads)
        return entry

    def _read(self, age_s: float, read_seed: int, mode: GdcMode) -> ReadoutEntry:
        keep = not self.large  # a large chip decodes its devices per read-out (see module doc)
        layers = [
            read_layer(layer, self.profile, self.chip.seed, i, age_s, read_seed, keep_decoded=keep)
            for i, layer in enumerate(self.chip.layers)
        ]
        return self._prepare(ChipReadout(age_s, read_seed, layers), mode)

    def _entry(self, age_s: float, read_seed: int, mode: GdcMode | None = None) -> ReadoutEntry:
        """The cached entry of (age, read seed) — and GDC mode for linear profiles, whose weights
        carry α — read out (and its session built) on a miss, once across threads."""
        mode = mode or self.gdc_mode(True)
        key = (age_s, read_seed, mode if self._linear else "")
        return self._cache.get(key, lambda: self._read(age_s, read_seed, mode))

    def readout(self, age_s: float, read_seed: int = 0) -> ChipReadout:
        """The (cached) read-out of the chip at an age."""
        return self._entry(check_age(age_s), check_seed(read_seed, "read_seed")).readout

    def dropped_ops(self, age_s: float, read_seed: int = 0) -> frozenset:
        """The (layer, tile, :class:`~chipsim.modes.TileDrop`) ops the session of a read-out
        dropped (:mod:`chipsim.compiler.tile_bounds`); empty with ``tile_drops=False``."""
        return self._entry(check_age(age_s), check_seed(read_seed, "read_seed")).drops

    def peek(self, age_s: float, read_seed: int = 0) -> ChipReadout | None:
        """The cached read-out if there is one, without counting a hit or changing LRU order."""
        entry = self._cache.find(lambda key: key[0] == float(age_s) and key[1] == int(read_seed))
        return None if entry is None else entry.readout

    def _scales(self, entry: ReadoutEntry, mode: GdcMode) -> dict[str, np.ndarray]:
        scales = entry.scales.get(mode)
        if scales is None:
            scales = scale_inputs(self.plans, self.chip.layers, entry.readout, self.profile, mode)
            entry.scales[mode] = scales  # benign race: both writers compute the same arrays
        return scales

    def _bound(self, entry: ReadoutEntry, mode: GdcMode) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
        """The session a run of ``entry`` uses, and its weights and scales."""
        return entry.session or self.session, self._static_feeds(entry, mode)

    def _static_feeds(self, entry: ReadoutEntry, mode: GdcMode) -> dict[str, np.ndarray]:
        """Weights (``inputs`` binding; a partial session's own are not among ``fed_weights``) and
        GDC-scaled column scales of an entry, merged once."""
        feeds = entry.feeds.get(mode)
        if feeds is None:
            embedded = entry.session is not None and not entry.partial  # the initializers binding
            feeds = self._fed(self._scales(entry, mode), self._init_feeds if embedded else None)
            if not embedded:
                feeds.update(entry.fed_weights)
            entry.feeds[mode] = feeds  # benign race: both writers build the same dict
        return feeds

    # ------------------------------------------------------------------ noise
    def _mvm_rng(self, seed: int | None, chunk: int = 0) -> np.random.Generator:
        """The generator of a request's per-MVM noise: keyed by (chip seed, seed, chunk) when it
        has a seed, else this thread's (see :mod:`chipsim.mvm_noise`)."""
        if seed is None:
            return thread_generator()
        try:
            return seeded_generator(self.chip.seed, check_seed(seed), chunk)
        except ValueError as e:
            raise InputError(str(e), field="chunk" if str(e).startswith("chunk") else "seed") from None

    def noise_shapes(self, inputs: np.ndarray | dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the per-MVM noise inputs (one per read and tile, in draw order) for these
        inputs: the shapes of the tiles' outputs in a run on them."""
        return self._noise_shapes.shapes(self.check_inputs(inputs))

    def draw_noise(self, inputs: np.ndarray | dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Standard normal per-MVM noise of every tile for a run on ``inputs``, each shaped like
        the tile's output (what :meth:`run` takes as ``noise``)."""
        shapes = self.noise_shapes(inputs)
        flat = draw(shapes, rng, self.noise_source)
        return {name: flat[name].reshape(shape) for name, shape in shapes}

    # ------------------------------------------------------------------ inference
    def check_inputs(self, inputs: np.ndarray | dict[str, Any]) -> dict[str, np.ndarray]:
        """Validate and convert user inputs; raises :class:`InputError` naming the input."""
        return self._model_inputs.check(inputs)

    def gdc_mode(self, gdc: bool | str) -> GdcMode:
        try:
            return GdcMode.resolve(gdc, self.profile.gdc)
        except ValueError as e:
            raise InputError(str(e), field="gdc") from None

    def run_tensor(
        self,
        inputs: np.ndarray | dict[str, Any],
        tensor: str,
        age_s: float,
        read_seed: int = 0,
        gdc: bool | str = True,
        seed: int | None = None,
        chunk: int = 0,
    ) -> np.ndarray:
        """The value of an intermediate tensor of the compiled graph (e.g. the input of an analog
        layer as the aged chip computes it). Uses a side session with weights fed as inputs, of the
        full lowering where it has the tensor: the lean one folds the next layer's DAC scale (and a
        Relu) into tensors between analog layers (:mod:`chipsim.compiler.folding`)."""
        feeds = self.check_inputs(inputs)
        if tensor in feeds:
            return feeds[tensor]
        sess, plans = self._side_session(tensor)
        mode = self.gdc_mode(gdc)
        entry = self._entry(check_age(age_s), check_seed(read_seed, "read_seed"), mode)
        if plans is self.plans:
            feeds.update(entry.weights or self._weights(entry.readout, mode))
            feeds.update(self._scales(entry, mode))
        else:
            feeds.update(weight_inputs(plans, self.chip.layers, entry.readout, self.profile, mode))
            feeds.update(scale_inputs(plans, self.chip.layers, entry.readout, self.profile, mode))
        if self._has_noise:  # both lowerings: the same noise inputs, shapes and order
            feeds.update(draw(self._noise_shapes.shapes(feeds), self._mvm_rng(seed, chunk), self.noise_source))
        return sess.run([tensor], feeds)[0]

    def _full_graph(self) -> tuple[bytes, list]:
        """The chip's graph and plans in the full lowering (compiled once, for :meth:`run_tensor`)."""
        if self.lowering == GraphLowering.FULL:
            return self.graph, self.plans
        if self._full is None:
            ranges = {plan.weight_name: layer.input_range for plan, layer in zip(self.plans, self.chip.layers)}
            compiled = compile_model(
                self.chip.attachments["model.onnx"], self.profile, ranges=ranges, lowering=GraphLowering.FULL
            )
            self._full = (compiled.graph, compiled.plans)
        return self._full

    def _side_session(self, tensor: str) -> tuple[ort.InferenceSession, list]:
        """A session (weights as inputs) that also outputs ``tensor``, and the plans of its graph."""
        with self._lock:
            hit = self._side_sessions.get(tensor)
        if hit is None:
            for graph, plans in (self._full_graph(), (self.graph, self.plans)):
                model = onnx.load_from_string(graph)
                if tensor in {o for n in model.graph.node for o in n.output}:
                    break
            else:
                raise InputError(f"tensor: the compiled graph has no tensor {tensor!r}", field="tensor")
            model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
            hit = (cpu_session(model.SerializeToString(), self.threads), plans)
            with self._lock:
                self._side_sessions[tensor] = hit
        return hit

    def run(
        self,
        inputs: np.ndarray | dict[str, Any],
        age_s: float,
        read_seed: int = 0,
        gdc: bool | str = True,
        seed: int | None = None,
        noise: dict[str, np.ndarray] | None = None,
        chunk: int = 0,
    ) -> list[np.ndarray]:
        """Outputs of the model on the chip at ``age_s`` seconds after programming.

        ``read_seed`` selects the read-out (1/f noise); ``seed`` makes the per-MVM noise
        reproducible (``None``: fresh noise); ``chunk`` is the index of these inputs in a longer
        seeded run split into calls (chunk k of an evaluation): seeded noise is keyed by
        (chip, seed, chunk), so chunks get independent noise; ``noise`` feeds explicit draws
        (tests; one array per tile with its output's number of elements).
        """
        return self.run_with_readout(inputs, age_s, read_seed, gdc, seed, noise, chunk)[0]

    def run_with_readout(
        self,
        inputs: np.ndarray | dict[str, Any],
        age_s: float,
        read_seed: int = 0,
        gdc: bool | str = True,
        seed: int | None = None,
        noise: dict[str, np.ndarray] | None = None,
        chunk: int = 0,
    ) -> tuple[list[np.ndarray], ChipReadout]:
        """:meth:`run`, and the read-out the outputs were computed with (its GDC factors, for
        example), without a second cache look-up."""
        feeds = self.check_inputs(inputs)
        age_s = check_age(age_s)
        read_seed = check_seed(read_seed, "read_seed")
        mode = self.gdc_mode(gdc)
        entry = self._entry(age_s, read_seed, mode)
        session, static = self._bound(entry, mode)
        feeds.update(static)
        if noise is None and self._has_noise:
            noise = draw(self._noise_shapes.shapes(feeds), self._mvm_rng(seed, chunk), self.noise_source)
        elif noise and entry.drops and any(np.max(np.abs(v), initial=0.0) > XI_MAX for v in noise.values()):
            # noise beyond the bound the drops assume: the undropped graph, weights and scales fed
            session = self.session
            feeds.update(self._fed({**self._weights(entry.readout, mode), **self._scales(entry, mode)}))
        if noise:
            feeds.update({k: np.ravel(v) for k, v in noise.items()})
        return session.run(self.output_names, feeds), entry.readout
