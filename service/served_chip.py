"""A chip the service serves: its immutable state, runtimes, description, inference, counters and
gauges; its evaluations (eval set, accuracy, SLO breach, drift) are :mod:`service.chip_evaluation`.

Every method is blocking (onnxruntime, numpy): call it from a worker thread. Bad requests raise
:mod:`service.problems`; the chip itself never changes (ages are read-outs), so a request holding
a chip keeps working even if the chip is deleted meanwhile. A read-out at an age not yet cached
is computed only if the memory budget admits it (:class:`~service.memory.MemoryGuard`); long
evaluations poll a ``cancelled`` callable between read-outs and chunks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from chipsim import ChipState
from chipsim import faults as fl
from chipsim.cost import CostError, CostEstimator
from chipsim.modes import GdcMode
from chipsim.readout import ChipReadout, LayerReadout
from chipsim.runtime import ChipRuntime, InputError
from service.chip_evaluation import ChipEvaluation
from service.chip_gauges import ChipGauges
from service.datasets import EvalSet
from service.durations import DurationError, parse_age, quantise_age
from service.memory import MemoryGuard, readout_cost
from service.problems import InvalidField
from service.settings import Settings

log = logging.getLogger("agedchip.service")

#: Read-out cache of a chip's evaluation runtime: bytes and entries (ages × read seeds).
EVAL_CACHE_BYTES, EVAL_CACHE_ENTRIES = 64 << 20, 4


def reported_alpha(layer: LayerReadout, mode: GdcMode) -> np.ndarray:
    """The GDC factors reported for a layer in a mode: those applied, or with GDC off the global
    factors measured (not applied), so that a client sees how far the chip drifted."""
    if mode is GdcMode.COLUMN:
        return layer.alpha_column
    if mode is GdcMode.EXACT:
        return layer.alpha_exact
    return layer.alpha_global


def io_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A model input or output for clients: dynamic dimensions are null."""
    return {
        "name": meta["name"],
        "dtype": str(meta["dtype"]),
        "shape": [d if isinstance(d, int) and d > 0 else None for d in meta["shape"]],
    }


@dataclass
class InferResult:
    outputs: list[np.ndarray]
    age_s: float
    age_source: str
    gdc: GdcMode
    read_seed: int
    seed: int | None
    batch: int
    alpha: list[dict[str, Any]]
    energy_j: float  # estimated energy of the request (chipsim.cost), J
    latency_s: float  # estimated latency of the request on the chip, s


def _runtime(chip: ChipState, settings: Settings, binding: str, cache_bytes: int, cache_entries: int) -> ChipRuntime:
    return ChipRuntime(
        chip,
        threads=settings.ort_threads or None,
        cache_bytes=cache_bytes,
        cache_entries=cache_entries,
        binding=binding,
        noise=settings.mvm_noise,
        initializers_max_bytes=settings.initializers_max_bytes,
    )


class ServedChip(ChipEvaluation):
    """A ready chip: its state, serving runtime, counters and refreshed gauges.

    ``eval_set`` is the chip's parsed eval set when the caller has it (just programmed); otherwise
    it is parsed from the chip's attachment on first use."""

    def __init__(
        self,
        chip: ChipState,
        settings: Settings,
        disk_bytes: int = 0,
        shared_bytes: int = 0,
        eval_set: EvalSet | None = None,
        memory: MemoryGuard | None = None,
    ):
        self.chip = chip
        self.memory = memory
        self.chip_id = chip.chip_id
        self.settings = settings
        self.runtime = _runtime(chip, settings, settings.binding, settings.cache_bytes, settings.cache_entries)
        self._eval_runtime: ChipRuntime | None = None
        self._eval_set = eval_set
        self._lock = threading.Lock()
        meta = chip.meta
        try:
            self.time_scale = float(meta.get("time_scale", 1.0))
        except (TypeError, ValueError):
            self.time_scale = 1.0
        if not math.isfinite(self.time_scale) or self.time_scale < 0:
            self.time_scale = 1.0
        self.model_name = str(meta.get("model_name") or meta.get("model_digest", "")[:12] or "model")
        self.preset = str(meta.get("profile_preset") or chip.profile.name)
        self.disk_bytes = disk_bytes
        self.shared_bytes = shared_bytes
        # counters (monotonic while the process lives)
        self.inferences = 0
        self.samples = 0
        self.labelled = 0
        self.correct = 0
        self.energy_j = 0.0  # estimated energy of every inference served, J
        self.gauges = ChipGauges()
        self._cost: CostEstimator | None = None
        self._cost_summary: dict[str, Any] | None = None
        self._fp_accuracy: dict[int, float] = {}  # eval samples used → the FP model's accuracy on them
        self._alpha_cache: dict[tuple[float, int, str], list[dict[str, Any]]] = {}
        self.layers = self._layer_summary()
        self.stuck_reset = sum(layer["stuck_reset"] for layer in self.layers)
        self.stuck_set = sum(layer["stuck_set"] for layer in self.layers)
        out = self.runtime.outputs
        self.classifier = bool(out) and len(out[0]["shape"]) == 2 and str(out[0]["dtype"]).startswith("float")

    # ------------------------------------------------------------------ description
    def _layer_summary(self) -> list[dict[str, Any]]:
        out = []
        for layer in self.chip.layers:
            codes = fl.decode_faults(layer.nu)
            rows, cols = layer.shape
            out.append(
                {
                    "name": layer.name,
                    "kind": str(layer.meta.get("kind", "matmul")),
                    "rows": int(rows),
                    "cols": int(cols),
                    "tiles": len(layer.tiles),
                    "devices": int(layer.nu.size),
                    "input_range": float(layer.input_range),
                    "input_range_source": str(layer.meta.get("input_range_source", "unknown")),
                    "stuck_reset": int(np.count_nonzero(codes == fl.STUCK_RESET)),
                    "stuck_set": int(np.count_nonzero(codes == fl.STUCK_SET)),
                }
            )
        return out

    def wall_age(self, now: float | None = None) -> float:
        """The chip's age from the wall clock: (now − programmed_at) × time scale, quantised."""
        now = time.time() if now is None else now
        return quantise_age(max(0.0, now - self.chip.programmed_at) * self.time_scale)

    def age_of(self, value: Any, field_name: str = "age") -> tuple[float, str]:
        """(age in seconds, its source) of a request's age; ``None`` is the wall-clock age."""
        if value is None:
            return self.wall_age(), "wall_clock"
        try:
            return parse_age(value, field_name), "request"
        except DurationError as err:
            raise InvalidField(field_name, str(err)) from None

    def gdc_mode(self, gdc: bool | str | None, field_name: str = "gdc") -> GdcMode:
        """The GDC mode a request gets (chipsim's rule: true/None → the profile's, false → off)."""
        try:
            return GdcMode.resolve(gdc, self.chip.profile.gdc)
        except ValueError as err:
            raise InvalidField(field_name, str(err)) from None

    def summary(self) -> dict[str, Any]:
        chip, meta = self.chip, self.chip.meta
        devices = chip.n_devices
        stuck = self.stuck_reset + self.stuck_set
        eval_set = self.eval_set()
        return {
            "chip_id": self.chip_id,
            "state": "ready",
            "model": {
                "name": self.model_name,
                "source": meta.get("model_source", "upload"),
                "digest": meta.get("model_digest"),
                "bytes": len(chip.attachments.get("model.onnx", b"")),
            },
            "profile": {
                "preset": self.preset,
                "overrides": meta.get("profile_overrides", {}),
                "values": chip.profile.model_dump(mode="json"),
            },
            "seed": chip.seed,
            "time_scale": self.time_scale,
            "programmed_at": chip.programmed_at,
            "age_s": self.wall_age(),
            "analog_layers": len(chip.layers),
            "digital_nodes": int(meta.get("digital_nodes", 0)),
            "digital_parameters": int(meta.get("digital_parameters", 0)),
            "digital_weight_nodes": list(meta.get("digital_weight_nodes", [])),
            "tiles": sum(layer["tiles"] for layer in self.layers),
            "weights": chip.n_weights,
            "devices": devices,
            "stuck_reset": self.stuck_reset,
            "stuck_set": self.stuck_set,
            "stuck_fraction": stuck / devices if devices else 0.0,
            "layers": self.layers,
            "uncalibrated_layers": [layer["name"] for layer in self.layers if layer["input_range_source"] == "default"],
            "inputs": [io_meta(i) for i in self.runtime.inputs],
            "outputs": [io_meta(o) for o in self.runtime.outputs],
            "classifier": self.classifier,
            "eval_samples": len(eval_set) if eval_set is not None else 0,
            "disk_bytes": self.disk_bytes,
            "shared_bytes": self.shared_bytes,
            "parent": meta.get("parent"),  # set on chips derived by recalibration
            "recalibration": meta.get("recalibration"),
            "cost": self.cost_summary(),
        }

    # ------------------------------------------------------------------ energy and latency (estimates)
    @property
    def cost(self) -> CostEstimator:
        """The chip's cost estimator (chipsim.cost), built on first use: parses the model once."""
        with self._lock:
            if self._cost is None:
                self._cost = CostEstimator(self.chip)
            return self._cost

    def cost_summary(self) -> dict[str, Any] | None:
        """The estimate of one sample by layer (``CostEstimate.to_dict``), cached: a chip is immutable."""
        if self._cost_summary is None:
            try:
                self._cost_summary = self.cost.estimate(batch=1).to_dict()
            except CostError as err:  # e.g. symbolic non-batch dimensions: a summary must not fail for it
                log.warning("chip %s: no per-sample cost estimate: %s", self.chip_id, err)
                return None
        return self._cost_summary

    def request_cost(self, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """(energy J, latency s) estimated for one request of these (checked) inputs."""
        batch = int(next(iter(feeds.values())).shape[0])
        try:
            return self.cost.request(batch, {k: list(v.shape) for k, v in feeds.items()})
        except CostError as err:
            raise InvalidField(err.field, str(err)) from None

    # ------------------------------------------------------------------ evaluation
    @property
    def eval_runtime(self) -> ChipRuntime:
        """A second runtime for evaluations and the refresher: its read-out cache does not evict
        the ages that serve traffic, and weights are fed per run (many one-off ages)."""
        with self._lock:
            if self._eval_runtime is None:
                self._eval_runtime = _runtime(self.chip, self.settings, "inputs", EVAL_CACHE_BYTES, EVAL_CACHE_ENTRIES)
            return self._eval_runtime

    def drop_eval_runtime(self) -> bool:
        """Forget the evaluation runtime (its read-outs and session); evaluations in progress keep
        theirs, the next one builds a new one. True if there was one."""
        with self._lock:
            dropped, self._eval_runtime = self._eval_runtime is not None, None
        return dropped

    def evict_readouts(self, keep: int = 1) -> int:
        """Drop the serving runtime's cached read-outs but the ``keep`` newest; bytes charged."""
        return self.runtime.evict_readouts(keep)

    def cache_stats(self) -> dict[str, tuple[int, int]]:
        """(bytes, entries) of the read-out caches, as the runtimes account them: 'serving', and
        'eval' while the evaluation runtime exists."""
        out = {"serving": (self.runtime.stats.bytes, self.runtime.stats.entries)}
        with self._lock:
            ev = self._eval_runtime
        if ev is not None:
            out["eval"] = (ev.stats.bytes, ev.stats.entries)
        return out

    def new_readout(
        self, rt: ChipRuntime, age_s: float, read_seed: int, field_name: str, workload: str
    ) -> AbstractContextManager[None]:
        """Admission of the read-out ``rt`` needs at an age: nothing when it is cached (or there is
        no budget), else a reservation of its estimated memory, or Unavailable naming ``field_name``."""
        if self.memory is None or rt.peek(age_s, read_seed) is not None:
            return nullcontext()
        return self.memory.reserve(readout_cost(self.chip.n_weights, rt.binding), field_name, workload)

    # ------------------------------------------------------------------ inference
    def infer(
        self,
        inputs: Any,
        age: Any = None,
        read_seed: int = 0,
        gdc: bool | str = True,
        seed: int | None = None,
        age_field: str = "age",
        gdc_field: str = "gdc",
    ) -> InferResult:
        """Validate and run one inference request; ``*_field`` name the request fields (OIP puts
        age and gdc under ``parameters``)."""
        age_s, source = self.age_of(age, age_field)
        rt = self.runtime
        feeds = self.check_feeds(inputs)
        mode = self.gdc_mode(gdc, gdc_field)
        batch = int(next(iter(feeds.values())).shape[0])
        energy_j, latency_s = self.request_cost(feeds)
        with self.new_readout(rt, age_s, read_seed, age_field, "infer"):
            outputs, readout = rt.run_with_readout(feeds, age_s, read_seed=read_seed, gdc=mode, seed=seed)
        return InferResult(
            outputs=outputs,
            age_s=age_s,
            age_source=source,
            gdc=mode,
            read_seed=read_seed,
            seed=seed,
            batch=batch,
            alpha=self._alpha(readout, mode),
            energy_j=energy_j,
            latency_s=latency_s,
        )

    def check_feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        """A request's inputs as the model's arrays (batch first), within AGEDCHIP_MAX_BATCH."""
        rt = self.runtime
        try:
            feeds = rt.check_inputs(inputs)
        except InputError as err:
            raise InvalidField(err.field, str(err)) from None
        except OverflowError:  # an integer beyond any float or int the model takes (chipsim lets it through)
            names = [i["name"] for i in rt.inputs]
            where = f"inputs.{names[0]}" if len(names) == 1 else "inputs"
            raise InvalidField(where, f"{where}: a number is too large for the input's dtype") from None
        batch = int(next(iter(feeds.values())).shape[0])
        if batch > self.settings.max_batch:
            name = f"inputs.{next(iter(feeds))}"
            raise InvalidField(
                name, f"{name}: batch {batch} exceeds the limit of {self.settings.max_batch} (AGEDCHIP_MAX_BATCH)"
            )
        return feeds

    def _alpha(self, readout: ChipReadout, mode: GdcMode) -> list[dict[str, Any]]:
        """GDC α per layer of a read-out (cached: a chip is immutable, so α of an age never changes)."""
        key = (readout.age_s, readout.read_seed, mode)
        cached = self._alpha_cache.get(key)
        if cached is not None:
            return cached
        out = []
        for layer, lr in zip(self.chip.layers, readout.layers):
            a = reported_alpha(lr, mode)
            out.append(
                {
                    "layer": layer.name,
                    "alpha_mean": float(np.mean(a)),
                    "alpha_min": float(np.min(a)),
                    "alpha_max": float(np.max(a)),
                    "tiles": len(layer.tiles),
                }
            )
        with self._lock:
            if len(self._alpha_cache) >= 256:
                self._alpha_cache.pop(next(iter(self._alpha_cache)))
            self._alpha_cache[key] = out
        return out

    # ------------------------------------------------------------------ counters
    def count(self, samples: int, labelled: int = 0, correct: int = 0, energy_j: float = 0.0) -> None:
        with self._lock:
            self.energy_j += energy_j
            self.inferences += 1
            self.samples += samples
            self.labelled += labelled
            self.correct += correct

    def counters(self) -> tuple[int, int, int, int]:
        """(inferences, samples, labelled samples, correct labelled samples), read together."""
        with self._lock:
            return self.inferences, self.samples, self.labelled, self.correct

    def live_accuracy(self) -> float | None:
        with self._lock:
            return self.correct / self.labelled if self.labelled else None
