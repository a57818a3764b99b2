"""Per-MVM noise: one independent standard normal ξ per analog output of every request (DESIGN §3.3).

**Shapes.** The compiled graph takes one flat noise input per tile, reshaped in the graph to
the tile's output (``compiler.lowering.emit_noise_like``; a recurrence run as a ``Scan``: to its
steps' outputs, ``[N, T, cols]``, scanned).
:class:`NoiseShapes` finds that output through the Reshape and infers its shape for the actual
input shapes of a request (ONNX shape inference, cached per input signature), so every pixel,
token and sample gets its own draw whatever dimensions were symbolic when the model was
exported, and wherever the batch sits (sequence-first layers, ``Gemm(transA=1)``). Where ONNX
shape inference loses a shape (after an op it has no inference for, e.g. ``ai.onnx.ml.Scaler``),
one onnxruntime run of the graph on zeros, its noise replaced by zeros, measures the missing ones
(:meth:`NoiseShapes.probe`, once per input signature too).

**Generators.** Every ξ is a fresh draw from an SFC64 generator (Doty-Humphrey's Small Fast
Chaotic generator, 256-bit state with a 64-bit counter), chosen by measurement over Philox, PCG64,
the former shared table and onnxruntime's in-graph ``RandomNormalLike`` (``python -m
bench.mvm_noise``, ``bench/results/mvm_noise.md``). ``RandomNormalLike`` was rejected for its
generator: ``std::default_random_engine`` (minstd, period 2^31 − 1) seeded with the process-wide
seed plus the node index, so every session built from one graph draws the same sequence.

**Samplers** (:class:`chipsim.modes.MvmNoiseSource`). ``fresh``: numpy's ziggurat, an exact
float32 N(0, 1) (7.8 ns per draw here). ``fresh-q16`` (the default): each draw takes 16 fresh
bits of the generator's raw output (four draws per 64-bit word) as the index of one of 2^16
equiprobable bins of N(0, 1) and returns that bin's conditional mean E[Z | Z in bin] =
2^16 (φ(a) − φ(b)) for the bin [a, b] (:func:`q16_table`; 1.2–1.3 ns per draw here vs 7.7–8.1, ``bench.mvm_noise``).
Its draws are exactly as independent as ``fresh``'s (every draw reads bits no other draw
reads). Its marginal is a 2^16-point distribution: every atom lies inside its own bin, so its
CDF differs from Φ by at most 2^-16 ≈ 1.5e-5 (Kolmogorov distance; 9.5e-6 computed); it is
symmetric (odd moments 0), is rescaled to unit variance, and stops at ±4.39 σ (the outermost
bins' means), where N(0, 1) puts 1.1e-5 of its mass beyond. Per-MVM noise adds to outputs that
the ADC quantises to far coarser steps, so the difference is below anything a read-out can show.
- A seeded request draws from a generator keyed by (chip seed, request seed, chunk): the key's
  seven 32-bit words (a stream tag, then each 64-bit value as two words, fixed width) seed a
  ``SeedSequence``. Its noise is a pure function of the chip, the seed and the chunk index —
  bit-identical on every run and restart (within one numpy version) — and chunk ``k`` of an
  evaluation has its own key, so chunks never repeat each other's noise.
- An unseeded request reads the next stretch of its thread's generator, seeded once per thread
  (and again after a fork) from 128 bits of OS entropy: consecutive requests on a thread read
  disjoint stretches of one stream.

Independence, and its bound: SFC64's step is a bijection of its state and every seeding sets the
counter word alike (numpy: 1, then 12 steps), so two generators with different initial states
never pass through a common state within 2^64 draws — no stretch of noise is ever shared. Two
generators start alike only if their ``SeedSequence`` keys hash to the same 128-bit pool:
probability 2^-128 per pair of keys (threads, processes, seeded keys) — the documented,
negligible bound. Per-MVM noise is thus independent across outputs, samples, chunks and
requests, and has no size-dependent path: ``n`` outputs cost ``n`` draws.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np
import onnx

from chipsim.model_inputs import InputError
from chipsim.modes import DEFAULT_MVM_NOISE, MvmNoiseSource
from chipsim.rng import Stream, check_seed

#: Input signatures whose noise shapes a :class:`NoiseShapes` keeps (one per distinct batch size
#: and, for dynamic models, per distinct spatial or sequence size); inference costs 2–3 ms for a zoo model.
SHAPE_CACHE_ENTRIES = 64
#: onnxruntime input types → numpy dtypes (the probe's zero feeds).
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
#: Chunks of one seeded evaluation: a 64-bit part of the key.
MAX_CHUNK = 2**64 - 1

#: Stream tag of per-MVM noise keys (chipsim.rng.Stream.MVM), the first word of a seeded key.
_TAG = int(Stream.MVM)

_thread = threading.local()
_fork_epoch = 0


def _after_fork_in_child() -> None:
    global _fork_epoch
    _fork_epoch += 1  # a forked child must not replay its parent's thread streams


os.register_at_fork(after_in_child=_after_fork_in_child)


def _words(value: int) -> tuple[int, int]:
    return value & 0xFFFFFFFF, value >> 32


def seeded_generator(chip_seed: int, seed: int, chunk: int = 0) -> np.random.Generator:
    """The generator of a seeded request: SFC64 seeded from the fixed-width key (tag, chip seed,
    seed, chunk); ~10 µs to create (one SeedSequence)."""
    chunk = int(chunk)
    if not 0 <= chunk <= MAX_CHUNK:
        raise ValueError(f"chunk: must be an integer in [0, 2^64-1], got {chunk}")
    key = np.array([_TAG, *_words(check_seed(chip_seed)), *_words(check_seed(seed)), *_words(chunk)], np.uint32)
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(key)))


def thread_generator() -> np.random.Generator:
    """This thread's generator for unseeded requests: SFC64 seeded from 128 bits of OS entropy,
    once per thread and process (a generator per request would cost ~10 µs)."""
    held = getattr(_thread, "held", None)
    if held is None or held[0] != _fork_epoch:
        held = _thread.held = (_fork_epoch, np.random.Generator(np.random.SFC64(np.random.SeedSequence())))
    return held[1]


#: Bins of the ``fresh-q16`` sampler: one per value of a 16-bit index.
Q16_BINS = 1 << 16
#: Draws per step of the ``fresh-q16`` look-up: its widened indices (0.5 MiB) stay in the cache.
Q16_BLOCK = 1 << 16


@functools.cache
def q16_table() -> np.ndarray:
    """The ``fresh-q16`` sampler's 2^16 values, float32: the conditional mean of N(0, 1) over each
    of 2^16 equiprobable bins [a_k, a_k+1], a_k = Φ^-1(k / 2^16), which is
    (φ(a_k) − φ(a_k+1)) · 2^16; made exactly odd (ξ_k = −ξ_(2^16−1−k)) and rescaled to unit
    variance. ~70 ms once per process (the quantiles are pure Python)."""
    nd = NormalDist()
    half = Q16_BINS // 2
    # edges of the upper half: Φ^-1(1/2) = 0 ... Φ^-1(1) = inf
    edges = [0.0] + [nd.inv_cdf(0.5 + k / Q16_BINS) for k in range(1, half)] + [math.inf]
    pdf = np.array([nd.pdf(e) if math.isfinite(e) else 0.0 for e in edges])
    upper = (pdf[:-1] - pdf[1:]) * Q16_BINS
    table = np.concatenate([-upper[::-1], upper])
    table /= math.sqrt(float(np.mean(table**2)))
    return table.astype(np.float32)


def standard_normal(rng: np.random.Generator, n: int, source: MvmNoiseSource | str = DEFAULT_MVM_NOISE) -> np.ndarray:
    """``n`` independent standard normal float32 draws from ``rng`` with the sampler of ``source``
    (``fresh``: the ziggurat; ``fresh-q16``: 16 raw bits per draw into :func:`q16_table`)."""
    if MvmNoiseSource(source) is not MvmNoiseSource.FRESH_Q16:
        return rng.standard_normal(n, dtype=np.float32)
    index = rng.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]
    table, out = q16_table(), np.empty(n, np.float32)
    # in blocks: np.take widens its indices to intp (8 bytes per draw, twice the output: resnet18's
    # 5.5M draws per request cost 76 MB at once, 6.5 B per analog weight); 'wrap' skips the bounds
    # check that 'raise' pays: uint16 indices are always in range
    for a in range(0, n, Q16_BLOCK):
        np.take(table, index[a : a + Q16_BLOCK], out=out[a : a + Q16_BLOCK], mode="wrap")
    return out


def draw(
    shapes: list[tuple[str, tuple[int, ...]]],
    rng: np.random.Generator,
    source: MvmNoiseSource | str = DEFAULT_MVM_NOISE,
) -> dict[str, np.ndarray]:
    """Flat standard normal float32 noise feeds, one per (name, tile output shape), as the
    compiled graph takes them (C order, reshaped in the graph): one draw from ``rng`` with the
    sampler of ``source``, split in order (one call instead of one per tile)."""
    sizes = [int(np.prod(s)) for _, s in shapes]
    flat = standard_normal(rng, sum(sizes), source)
    out, start = {}, 0
    for (name, _), n in zip(shapes, sizes):
        out[name] = flat[start : start + n]
        start += n
    return out


class NoiseShapes:
    """The shape of every per-MVM noise input of a compiled graph, per request input shapes."""

    def __init__(self, graph: bytes | onnx.ModelProto, input_names: list[str]):
        model = graph if isinstance(graph, onnx.ModelProto) else onnx.load_from_string(graph)
        self.input_names = list(input_names)
        declared = {i.name for i in model.graph.input}
        producers = {o: n for n in model.graph.node for o in n.output}
        #: (noise input, the tile output it is reshaped to), in graph order
        self.noise_of: list[tuple[str, str]] = []
        for node in model.graph.node:
            if node.op_type == "Reshape" and node.input[0] in declared and node.input[0].endswith("/noise"):
                shape_node = producers.get(node.input[1])
                if shape_node is None or shape_node.op_type != "Shape":
                    raise ValueError(f"noise input {node.input[0]!r} is not reshaped to Shape(tile output)")
                self.noise_of.append((node.input[0], shape_node.input[0]))
        self._model = model
        self._cache: OrderedDict[tuple, list[tuple[str, tuple[int, ...]]]] = OrderedDict()
        self._lock = threading.Lock()
        self._probe_session: Any = None

    def __len__(self) -> int:
        return len(self.noise_of)

    def shapes(self, feeds: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
        """(noise input, shape) of every tile for inputs shaped like ``feeds``' arrays (checked
        inputs of the model); raises :class:`InputError` if the shapes cannot be inferred."""
        if not self.noise_of:
            return []
        key = tuple(tuple(feeds[n].shape) for n in self.input_names)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        shapes = self._infer(dict(zip(self.input_names, key)))
        with self._lock:
            self._cache[key] = shapes
            while len(self._cache) > SHAPE_CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return shapes

    def _infer(self, dims: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
        m = onnx.ModelProto()
        m.CopyFrom(self._model)
        for inp in m.graph.input:
            if inp.name in dims:
                shape = inp.type.tensor_type.shape
                del shape.dim[:]
                for size in dims[inp.name]:
                    shape.dim.add().dim_value = int(size)
        try:
            m = onnx.shape_inference.infer_shapes(m, data_prop=True)
        except Exception as err:  # onnx raises several types; the inputs did not fit the model
            raise InputError(
                f"inputs: the model cannot run on inputs of shapes {dims} ({str(err).splitlines()[0][:200]})"
            ) from None
        known = {}
        for vi in [*m.graph.value_info, *m.graph.output]:
            d = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(x.HasField("dim_value") for x in d):
                known[vi.name] = tuple(int(x.dim_value) for x in d)
        missing = [like for _, like in self.noise_of if like not in known]
        if missing:
            known.update(self.probe(dims, missing))
        return [(name, known[like]) for name, like in self.noise_of]

    def probe(self, dims: dict[str, tuple[int, ...]], tensors: list[str]) -> dict[str, tuple[int, ...]]:
        """Shapes of ``tensors`` measured by one onnxruntime run of the graph on zero inputs of
        shapes ``dims`` (weights and scales zero too) with every noise Reshape replaced by zeros
        of its shape: for what ONNX shape inference cannot resolve. Raises :class:`InputError`
        if the run fails."""
        from chipsim.ort_session import cpu_session  # onnxruntime only on this fallback path

        with self._lock:
            if self._probe_session is None:
                self._probe_session = cpu_session(self._probe_graph(), 1)
            sess = self._probe_session
        feeds = {}
        for vi in sess.get_inputs():
            shape = dims.get(vi.name) or [d if isinstance(d, int) else 1 for d in vi.shape]
            feeds[vi.name] = np.zeros(shape, _NUMPY_TYPES.get(vi.type, np.float32))
        wanted = list(dict.fromkeys(tensors))
        try:
            values = sess.run(wanted, feeds)
        except Exception as err:  # onnxruntime raises its own types; the inputs did not fit the model
            raise InputError(
                f"inputs: cannot infer the output shape of the analog layer(s) computing {wanted[:3]} "
                f"for inputs of shapes {dims} ({str(err).splitlines()[0][:200]})"
            ) from None
        return {t: tuple(int(d) for d in v.shape) for t, v in zip(wanted, values)}

    def _probe_graph(self) -> bytes:
        """The graph without noise inputs (each noise Reshape a ConstantOfShape of zeros) that
        also outputs every tile output a noise input is shaped like."""
        m = onnx.ModelProto()
        m.CopyFrom(self._model)
        noise = {name for name, _ in self.noise_of}
        for node in m.graph.node:
            if node.op_type == "Reshape" and node.input[0] in noise:
                shape = node.input[1]
                node.op_type = "ConstantOfShape"
                del node.input[:]
                node.input.append(shape)
        keep = [vi for vi in m.graph.input if vi.name not in noise]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        outputs = {o.name for o in m.graph.output}
        m.graph.output.extend(
            onnx.helper.make_empty_tensor_value_info(like)
            for like in dict.fromkeys(like for _, like in self.noise_of)
            if like not in outputs
        )
        return m.SerializeToString()
