"""Loaded chips and their runtimes: program, delete, reload (DESIGN §4–5).

The registry is the only owner of mutable service state. Its dictionaries are guarded by one
lock held only for dictionary operations, never during programming, loading or inference, so
programming a chip (seconds) never blocks inference on the others. A chip enters the registry
only after the store has published it atomically and its runtime is built: a half-programmed
chip is never visible. Chip objects themselves are immutable (ages are read-outs), so requests
that hold a chip keep working even if it is deleted meanwhile.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipsim import (
    ChipCorruptError,
    ChipExistsError,
    ChipNotFoundError,
    ChipState,
    ChipStore,
    ProfileError,
    check_chip_id,
    drift_metrics,
    get_profile,
)
from chipsim import faults as fl
from chipsim.compiler import CompileError, program_onnx
from chipsim.readout import MAX_AGE_S
from chipsim.runtime import ChipRuntime, InputError
from service.durations import DurationError, parse_age
from service.errors import ApiError
from service.settings import Settings

log = logging.getLogger("agedchip.service")

ZOO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EVAL_ATTACHMENT = "eval.npz"
#: Samples per onnxruntime call when evaluating (bounds memory for large eval sets).
EVAL_CHUNK = 512
#: Wall-clock ages are rounded to this many steps per decade (≤ 2.3 % apart, so the drift factor
#: ((t+t0)/t0)^−ν with ν ≤ 0.1 moves by < 0.23 % between steps) so that consecutive requests
#: share a cached read-out instead of computing one per request.
AGE_STEPS_PER_DECADE = 100


def quantise_age(age_s: float) -> float:
    """A wall-clock-derived age rounded onto a log grid (see AGE_STEPS_PER_DECADE), in [0, MAX_AGE_S]."""
    if not math.isfinite(age_s) or age_s <= 0:
        return 0.0
    if age_s < 1.0:
        return round(age_s, 2)
    q = 10 ** (round(math.log10(age_s) * AGE_STEPS_PER_DECADE) / AGE_STEPS_PER_DECADE)
    return float(min(float(f"{q:.6g}"), MAX_AGE_S))


# ----------------------------------------------------------------------------------- npz data
def load_npz(data: bytes, field_name: str) -> dict[str, np.ndarray]:
    """Arrays of an uploaded ``.npz`` (no pickle); errors name the field."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise ApiError(422, f"{field_name}: not a readable .npz file of plain arrays ({str(err)[:200]})",
                       field_name) from None


def _feeds_from_npz(arrays: dict[str, np.ndarray], input_names: list[str], field_name: str,
                    label_key: str | None) -> dict[str, np.ndarray]:
    """Model inputs from npz arrays: ``x`` for a single-input model, else one array per input name."""
    feeds = {k: v for k, v in arrays.items() if k in input_names}
    if not feeds and "x" in arrays and len(input_names) == 1:
        feeds = {input_names[0]: arrays["x"]}
    missing = [n for n in input_names if n not in feeds]
    if missing:
        want = "'x'" if len(input_names) == 1 else f"one array per input {input_names}"
        raise ApiError(422, f"{field_name}: expected {want}"
                       + (f" and labels {label_key!r}" if label_key else "") + f"; found {sorted(arrays)}",
                       field_name)
    return feeds


@dataclass
class EvalSet:
    feeds: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int) -> EvalSet:
        if n >= len(self):
            return self
        return EvalSet({k: v[:n] for k, v in self.feeds.items()}, self.labels[:n])


def parse_eval_set(data: bytes, input_names: list[str], max_samples: int, field_name: str = "eval") -> EvalSet:
    arrays = load_npz(data, field_name)
    if "y" not in arrays:
        raise ApiError(422, f"{field_name}: labelled eval data needs integer labels 'y' (N,) besides the inputs; "
                       f"found {sorted(arrays)}", field_name)
    y = arrays["y"]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise ApiError(422, f"{field_name}.y: labels must be a 1-D integer array, got {y.dtype} {list(y.shape)}",
                       f"{field_name}.y")
    if y.size == 0:
        raise ApiError(422, f"{field_name}.y: empty eval set", f"{field_name}.y")
    if y.size > max_samples:
        raise ApiError(422, f"{field_name}.y: {y.size} samples, more than the limit of {max_samples}",
                       f"{field_name}.y")
    if np.any(y < 0):
        raise ApiError(422, f"{field_name}.y: labels must be ≥ 0 (class indices)", f"{field_name}.y")
    feeds = _feeds_from_npz(arrays, input_names, field_name, "y")
    for name, arr in feeds.items():
        if arr.ndim == 0 or arr.shape[0] != y.shape[0]:
            raise ApiError(422, f"{field_name}.{name}: {list(arr.shape)} does not have {y.shape[0]} samples like 'y'",
                           f"{field_name}.{name}")
    return EvalSet(feeds, y.astype(np.int64))


# ----------------------------------------------------------------------------------- the zoo
class Zoo:
    """Read-only model zoo: ``<name>.onnx`` (+ ``<name>.eval.npz``) and an optional ``index.json``.

    Reading it never imports torch: it is plain files.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def _index(self) -> dict[str, dict[str, Any]]:
        path = self.root / "index.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        entries: list[Any]
        if isinstance(raw, dict) and isinstance(raw.get("models"), list):
            entries = raw["models"]
        elif isinstance(raw, dict) and isinstance(raw.get("models"), dict):
            entries = [{"name": k, **(v if isinstance(v, dict) else {})} for k, v in raw["models"].items()]
        elif isinstance(raw, list):
            entries = raw
        elif isinstance(raw, dict):
            entries = [{"name": k, **v} for k, v in raw.items() if isinstance(v, dict)]
        else:
            entries = []
        out = {}
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                out[e["name"]] = e
        return out

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = {p.name[: -len(".onnx")] for p in self.root.glob("*.onnx")}
        return sorted(n for n in found if ZOO_NAME_RE.match(n))

    def listing(self) -> list[dict[str, Any]]:
        index = self._index()
        out = []
        for name in self.names():
            entry = {k: v for k, v in index.get(name, {}).items() if isinstance(v, (str, int, float, bool)) or v is None}
            entry.update(name=name, has_eval_set=(self.root / f"{name}.eval.npz").is_file())
            out.append(entry)
        return out

    def check_name(self, name: str, field_name: str = "model") -> str:
        if not isinstance(name, str) or not ZOO_NAME_RE.match(name):
            raise ApiError(422, f"{field_name}: {name!r} is not a valid zoo model name", field_name)
        if name not in self.names():
            raise ApiError(422, f"{field_name}: no zoo model {name!r}; available: {self.names()}", field_name)
        return name

    def model_bytes(self, name: str) -> bytes:
        return (self.root / f"{self.check_name(name)}.onnx").read_bytes()

    def eval_bytes(self, name: str) -> bytes | None:
        path = self.root / f"{self.check_name(name)}.eval.npz"
        return path.read_bytes() if path.is_file() else None


# ----------------------------------------------------------------------------------- chips
@dataclass
class ChipGauges:
    """The background refresher's latest numbers for one chip (read by /metrics)."""

    age_s: float | None = None
    alpha: dict[str, float] = field(default_factory=dict)
    weight_error: float | None = None
    weight_error_gdc: float | None = None
    g_ratio: float | None = None
    current_accuracy: dict[str, float] = field(default_factory=dict)  # gdc "on"/"off" → accuracy
    eval_accuracy: dict[tuple[str, str], float] = field(default_factory=dict)  # (age label, gdc) → accuracy
    refreshed_at: float | None = None


def _runtime(chip: ChipState, settings: Settings, binding: str, cache_bytes: int, cache_entries: int) -> ChipRuntime:
    return ChipRuntime(chip, threads=settings.ort_threads or None, cache_bytes=cache_bytes,
                       cache_entries=cache_entries, binding=binding, noise=settings.mvm_noise)


class LoadedChip:
    """A ready chip: its state, serving runtime, counters and refreshed gauges."""

    def __init__(self, chip: ChipState, settings: Settings, disk_bytes: int = 0, shared_bytes: int = 0):
        self.chip = chip
        self.chip_id = chip.chip_id
        self.settings = settings
        self.runtime = _runtime(chip, settings, settings.binding, settings.cache_bytes, settings.cache_entries)
        self._eval_runtime: ChipRuntime | None = None
        self._eval_set: EvalSet | None = None
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
        self.gauges = ChipGauges()
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
            out.append({
                "name": layer.name,
                "kind": str(layer.meta.get("kind", "matmul")),
                "rows": int(rows),
                "cols": int(cols),
                "tiles": len(layer.tiles),
                "devices": int(layer.nu.size),
                "input_range": float(layer.input_range),
                "stuck_reset": int(np.count_nonzero(codes == fl.STUCK_RESET)),
                "stuck_set": int(np.count_nonzero(codes == fl.STUCK_SET)),
            })
        return out

    def wall_age(self, now: float | None = None) -> float:
        """The chip's age from the wall clock: (now − programmed_at) × time scale, quantised."""
        now = time.time() if now is None else now
        return quantise_age(max(0.0, now - self.chip.programmed_at) * self.time_scale)

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
            "tiles": sum(layer["tiles"] for layer in self.layers),
            "weights": chip.n_weights,
            "devices": devices,
            "stuck_reset": self.stuck_reset,
            "stuck_set": self.stuck_set,
            "stuck_fraction": stuck / devices if devices else 0.0,
            "layers": self.layers,
            "inputs": [_io_meta(i) for i in self.runtime.inputs],
            "outputs": [_io_meta(o) for o in self.runtime.outputs],
            "classifier": self.classifier,
            "eval_samples": len(eval_set) if eval_set is not None else 0,
            "disk_bytes": self.disk_bytes,
            "shared_bytes": self.shared_bytes,
            "parent": meta.get("parent"),  # set on chips derived by recalibration
            "recalibration": meta.get("recalibration"),
        }

    # ------------------------------------------------------------------ evaluation
    def eval_set(self) -> EvalSet | None:
        if self._eval_set is None and EVAL_ATTACHMENT in self.chip.attachments:
            try:
                self._eval_set = parse_eval_set(self.chip.attachments[EVAL_ATTACHMENT],
                                                [i["name"] for i in self.runtime.inputs], 1 << 62)
            except ApiError as err:
                log.warning("chip %s: unusable eval set: %s", self.chip_id, err.message)
                return None
        return self._eval_set

    @property
    def eval_runtime(self) -> ChipRuntime:
        """A second runtime for evaluations and the refresher: its read-out cache does not evict
        the ages that serve traffic, and weights are fed per run (many one-off ages)."""
        with self._lock:
            if self._eval_runtime is None:
                self._eval_runtime = _runtime(self.chip, self.settings, "inputs", 64 << 20, 4)
            return self._eval_runtime

    def accuracy(self, eval_set: EvalSet, age_s: float, read_seed: int, gdc: bool | str) -> float:
        """Accuracy of the chip on ``eval_set`` at an age, read-out ``read_seed``; the per-MVM
        noise is seeded with the read seed too, so the number is reproducible."""
        rt = self.eval_runtime
        correct = 0
        n = len(eval_set)
        for start in range(0, n, EVAL_CHUNK):
            feeds = {k: v[start:start + EVAL_CHUNK] for k, v in eval_set.feeds.items()}
            out = rt.run(feeds, age_s, read_seed=read_seed, gdc=gdc, seed=read_seed)[0]
            pred = np.asarray(out).reshape(out.shape[0], -1).argmax(axis=1)
            correct += int(np.count_nonzero(pred == eval_set.labels[start:start + EVAL_CHUNK]))
        return correct / n

    def drift(self, age_s: float, read_seed: int = 0, gdc: str | None = None) -> dict[str, Any]:
        readout = self.eval_runtime.readout(age_s, read_seed)
        return drift_metrics(self.chip, age_s, read_seed=read_seed, gdc=gdc, readout=readout)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ inference
    def infer(self, inputs: Any, age: Any = None, read_seed: int = 0, gdc: bool | str = True,
              seed: int | None = None, age_field: str = "age") -> InferResult:
        """Validate and run one inference request. Blocking: call from a worker thread."""
        if age is None:
            age_s, source = self.wall_age(), "wall_clock"
        else:
            try:
                age_s, source = parse_age(age, age_field), "request"
            except DurationError as err:
                raise ApiError(422, str(err), age_field) from None
        rt = self.runtime
        try:
            feeds = rt.check_inputs(inputs)
            mode = rt.gdc_mode(gdc)
        except InputError as err:
            raise ApiError(422, str(err), err.field) from None
        batch = int(next(iter(feeds.values())).shape[0])
        if batch > self.settings.max_batch:
            name = next(iter(feeds))
            raise ApiError(422, f"inputs.{name}: batch {batch} exceeds the limit of {self.settings.max_batch} "
                           "(AGEDCHIP_MAX_BATCH)", f"inputs.{name}")
        outputs = rt.run(feeds, age_s, read_seed=read_seed, gdc=mode, seed=seed)
        return InferResult(outputs=outputs, age_s=age_s, age_source=source, gdc=mode, read_seed=read_seed,
                           seed=seed, batch=batch, alpha=self.alpha_summary(age_s, read_seed, mode))

    def alpha_summary(self, age_s: float, read_seed: int, mode: str) -> list[dict[str, Any]]:
        """GDC α per layer at a read-out (cached: a chip is immutable, so α of an age never changes)."""
        key = (age_s, read_seed, mode)
        cached = self._alpha_cache.get(key)
        if cached is not None:
            return cached
        out = self._alpha_summary(age_s, read_seed, mode)
        with self._lock:
            if len(self._alpha_cache) >= 256:
                self._alpha_cache.pop(next(iter(self._alpha_cache)))
            self._alpha_cache[key] = out
        return out

    def _alpha_summary(self, age_s: float, read_seed: int, mode: str) -> list[dict[str, Any]]:
        readout = _peek_readout(self.runtime, age_s, read_seed)
        out = []
        for layer, lr in zip(self.chip.layers, readout.layers):
            if mode == "column":
                a = lr.alpha_column
            elif mode == "exact":
                a = lr.alpha_exact
            else:  # global, and the measured (not applied) factor when GDC is off
                a = lr.alpha_global
            out.append({"layer": layer.name, "alpha_mean": float(np.mean(a)), "alpha_min": float(np.min(a)),
                        "alpha_max": float(np.max(a)), "tiles": len(layer.tiles)})
        return out

    # ------------------------------------------------------------------ counters
    def count(self, samples: int, labelled: int = 0, correct: int = 0) -> None:
        with self._lock:
            self.inferences += 1
            self.samples += samples
            self.labelled += labelled
            self.correct += correct

    def live_accuracy(self) -> float | None:
        with self._lock:
            return self.correct / self.labelled if self.labelled else None


@dataclass
class InferResult:
    outputs: list[np.ndarray]
    age_s: float
    age_source: str
    gdc: str
    read_seed: int
    seed: int | None
    batch: int
    alpha: list[dict[str, Any]]


def _peek_readout(rt: ChipRuntime, age_s: float, read_seed: int):
    """The read-out a run just used, without counting a second cache access (the service
    reports cache hits as a metric); falls back to a read when it was evicted meanwhile."""
    return rt.peek(age_s, read_seed) or rt.readout(age_s, read_seed)


def _io_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {"name": meta["name"], "dtype": str(meta["dtype"]),
            "shape": [d if isinstance(d, int) and d > 0 else None for d in meta["shape"]]}


@dataclass
class ProgramSpec:
    """A validated POST /program request."""

    model_bytes: bytes | None = None
    model_filename: str | None = None
    zoo_model: str | None = None
    chip_id: str | None = None
    preset: str = "pcm"
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    time_scale: float = 1.0
    calibration: bytes | None = None
    eval_data: bytes | None = None


class Registry:
    """All chips of the store, loaded; thread-safe."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = ChipStore(settings.state_dir)
        self.zoo = Zoo(settings.zoo_dir)
        self._lock = threading.Lock()
        self._chips: dict[str, LoadedChip] = {}
        self._corrupt: dict[str, str] = {}
        self._pending: set[str] = set()
        self.loaded = False

    # ------------------------------------------------------------------ queries
    def get(self, chip_id: str) -> LoadedChip:
        """A ready chip, or an ApiError (422 bad id, 404 unknown, 409 corrupt)."""
        try:
            check_chip_id(chip_id)
        except ValueError as err:
            raise ApiError(422, str(err), "chip_id") from None
        with self._lock:
            chip = self._chips.get(chip_id)
            if chip is not None:
                return chip
            if chip_id in self._corrupt:
                raise ApiError(409, f"chip_id: chip {chip_id!r} is corrupt and cannot serve: {self._corrupt[chip_id]}",
                               "chip_id")
            if chip_id in self._pending:
                raise ApiError(404, f"chip_id: chip {chip_id!r} is still being programmed", "chip_id")
        raise ApiError(404, f"chip_id: no chip {chip_id!r}", "chip_id")

    def ready(self) -> list[LoadedChip]:
        with self._lock:
            return list(self._chips.values())

    def corrupt(self) -> dict[str, str]:
        with self._lock:
            return dict(self._corrupt)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"ready": len(self._chips), "corrupt": len(self._corrupt)}

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            chips, corrupt = list(self._chips.values()), dict(self._corrupt)
        out: list[dict[str, Any]] = []
        for c in chips:
            out.append({"chip_id": c.chip_id, "state": "ready", "model": c.model_name, "profile": c.preset,
                        "seed": c.chip.seed, "programmed_at": c.chip.programmed_at, "time_scale": c.time_scale,
                        "age_s": c.wall_age(), "error": None})
        for chip_id, err in corrupt.items():
            out.append({"chip_id": chip_id, "state": "corrupt", "model": None, "profile": None, "seed": None,
                        "programmed_at": None, "time_scale": None, "age_s": None, "error": err})
        return sorted(out, key=lambda e: e["chip_id"])

    # ------------------------------------------------------------------ loading
    def _shared_bytes(self, manifest: dict[str, Any]) -> int:
        total = 0
        for entry in manifest.get("arrays", {}).values():
            if isinstance(entry, dict) and "blob" in entry:
                p = self.store.blobs_dir / f"{entry['blob']}.npy"
                total += p.stat().st_size if p.is_file() else 0
        for digest in manifest.get("attachments", {}).values():
            p = self.store.blobs_dir / f"{digest}.bin"
            total += p.stat().st_size if p.is_file() else 0
        return total

    def _sizes(self, chip_id: str) -> tuple[int, int]:
        try:
            return self.store.disk_bytes(chip_id), self._shared_bytes(self.store.read_manifest(chip_id))
        except Exception:  # sizes are informative only
            return 0, 0

    def load_all(self) -> None:
        """(Re)load every chip of the store; unreadable ones are listed as corrupt."""
        for listing in self.store.list(verify=False):
            chip_id = listing.chip_id
            if listing.status != "ready":
                self._mark_corrupt(chip_id, listing.error or "unreadable")
                continue
            try:
                chip = self.store.load(chip_id)
                loaded = LoadedChip(chip, self.settings, *self._sizes(chip_id))
            except ChipCorruptError as err:
                self._mark_corrupt(chip_id, str(err))
                continue
            except Exception as err:  # a chip this build cannot run is listed, not fatal
                log.exception("chip %s could not be loaded", chip_id)
                self._mark_corrupt(chip_id, f"cannot be loaded: {type(err).__name__}: {str(err)[:300]}")
                continue
            with self._lock:
                self._chips[chip_id] = loaded
                self._corrupt.pop(chip_id, None)
        self.loaded = True
        log.info("loaded %d chip(s), %d corrupt", *self.counts().values())

    def _mark_corrupt(self, chip_id: str, error: str) -> None:
        log.warning("chip %s is corrupt: %s", chip_id, error)
        with self._lock:
            self._chips.pop(chip_id, None)
            self._corrupt[chip_id] = error

    # ------------------------------------------------------------------ programming
    def _reserve(self, chip_id: str | None, hint: str) -> str:
        with self._lock:
            if chip_id is None:
                base = re.sub(r"[^a-z0-9_-]+", "-", hint.lower()).strip("-_")[:40] or "chip"
                if not base[0].isalnum():
                    base = "chip-" + base
                while True:
                    chip_id = f"{base}-{secrets.token_hex(4)}"
                    if chip_id not in self._chips and chip_id not in self._corrupt and chip_id not in self._pending:
                        break
            else:
                try:
                    check_chip_id(chip_id)
                except ValueError as err:
                    raise ApiError(422, str(err), "chip_id") from None
                if chip_id in self._chips or chip_id in self._corrupt or chip_id in self._pending \
                        or self.store.exists(chip_id):
                    raise ApiError(409, f"chip_id: chip {chip_id!r} already exists (chips are immutable; delete it "
                                   "or choose another id)", "chip_id")
            n = len(self._chips) + len(self._corrupt) + len(self._pending)
            if n >= self.settings.max_chips:
                raise ApiError(409, f"chip_id: the store holds the maximum of {self.settings.max_chips} chips "
                               "(AGEDCHIP_MAX_CHIPS); delete one first", "chip_id")
            self._pending.add(chip_id)
            return chip_id

    def program(self, spec: ProgramSpec) -> LoadedChip:
        """Compile, program, publish and load a chip. Blocking: call from a worker thread."""
        if spec.zoo_model is not None:
            self.zoo.check_name(spec.zoo_model)
        elif not spec.model_bytes:
            raise ApiError(422, "model: upload an ONNX file (multipart field 'model') or name a zoo model "
                           f"(available: {self.zoo.names()})", "model")
        try:
            profile = get_profile(spec.preset, **spec.overrides)
        except ProfileError as err:
            raise ApiError(422, str(err), f"profile.{err.field}" if err.field else "profile") from None
        seed = spec.seed if spec.seed is not None else secrets.randbits(31)
        hint = spec.zoo_model or Path(spec.model_filename or "chip").stem
        chip_id = self._reserve(spec.chip_id, hint)
        try:
            model_bytes = spec.model_bytes
            eval_bytes = spec.eval_data
            if spec.zoo_model is not None:
                model_bytes = self.zoo.model_bytes(spec.zoo_model)
                if eval_bytes is None:
                    eval_bytes = self.zoo.eval_bytes(spec.zoo_model)
            assert model_bytes is not None
            calibration = None
            if spec.calibration is not None:
                calibration = load_npz(spec.calibration, "calibration")
            meta = {
                "time_scale": spec.time_scale,
                "model_name": spec.zoo_model or (spec.model_filename or "upload")[:64],
                "model_source": "zoo" if spec.zoo_model else "upload",
                "profile_preset": spec.preset,
                "profile_overrides": spec.overrides,
                "service": "agedchip",
            }
            t0 = time.perf_counter()
            try:
                calib = self._calibration_feeds(calibration) if calibration is not None else None
                chip = program_onnx(model_bytes, profile, seed, chip_id=chip_id, calibration=calib, meta=meta)
            except CompileError as err:
                raise ApiError.from_value_error(err, default_field="model") from None
            except ValueError as err:  # e.g. layer validation in chipsim.program
                raise ApiError.from_value_error(err, default_field="model") from None
            loaded_check = _runtime(chip, self.settings, "inputs", 1 << 20, 1)
            if eval_bytes is not None:
                names = [i["name"] for i in loaded_check.inputs]
                ev = parse_eval_set(eval_bytes, names, self.settings.max_eval_samples)
                try:
                    loaded_check.check_inputs({k: v[:2] for k, v in ev.feeds.items()})
                except InputError as err:
                    raise ApiError(422, f"eval: {err}", "eval") from None
                chip.attachments[EVAL_ATTACHMENT] = eval_bytes
            del loaded_check
            try:
                self.store.save(chip)
            except ChipExistsError as err:
                raise ApiError(409, str(err), "chip_id") from None
            loaded = LoadedChip(chip, self.settings, *self._sizes(chip_id))
            log.info("programmed chip %s (%s, %s, seed %d) in %.2f s", chip_id, meta["model_name"], spec.preset,
                     seed, time.perf_counter() - t0)
            with self._lock:
                self._chips[chip_id] = loaded
            return loaded
        finally:
            with self._lock:
                self._pending.discard(chip_id)

    @staticmethod
    def _calibration_feeds(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
        if "x" in arrays and len(arrays) == 1:
            x = arrays["x"]
            if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
                raise ApiError(422, "calibration.x: must be a finite numeric array", "calibration.x")
            return x.astype(np.float32)
        for k, v in arrays.items():
            if not np.issubdtype(v.dtype, np.number) or not np.all(np.isfinite(v)):
                raise ApiError(422, f"calibration.{k}: must be a finite numeric array", f"calibration.{k}")
        return {k: v.astype(np.float32) for k, v in arrays.items()}

    # ------------------------------------------------------------------ derived chips (recalibration)
    def taken(self, chip_id: str) -> bool:
        """True if ``chip_id`` is a chip (ready, corrupt, being made, or on disk)."""
        with self._lock:
            if chip_id in self._chips or chip_id in self._corrupt or chip_id in self._pending:
                return True
        return self.store.exists(chip_id)

    def reserve(self, chip_id: str) -> str:
        """Reserve an id for a chip made outside :meth:`program` (409 if taken or the store is full);
        :meth:`publish` or :meth:`release` ends the reservation."""
        return self._reserve(chip_id, chip_id)

    def release(self, chip_id: str) -> None:
        with self._lock:
            self._pending.discard(chip_id)

    def publish(self, chip: ChipState) -> LoadedChip:
        """Save a chip made elsewhere (its id reserved) atomically, then serve it. Blocking.

        Nothing is visible before the store's atomic rename; the reservation ends either way."""
        try:
            try:
                self.store.save(chip)
            except ChipExistsError as err:
                raise ApiError(409, str(err), "chip_id") from None
            loaded = LoadedChip(chip, self.settings, *self._sizes(chip.chip_id))
            with self._lock:
                self._chips[chip.chip_id] = loaded
            return loaded
        finally:
            self.release(chip.chip_id)

    # ------------------------------------------------------------------ deleting
    def delete(self, chip_id: str) -> None:
        try:
            check_chip_id(chip_id)
        except ValueError as err:
            raise ApiError(422, str(err), "chip_id") from None
        with self._lock:
            if chip_id in self._pending:
                raise ApiError(409, f"chip_id: chip {chip_id!r} is being programmed", "chip_id")
            known = chip_id in self._chips or chip_id in self._corrupt
            self._chips.pop(chip_id, None)
            self._corrupt.pop(chip_id, None)
        try:
            self.store.delete(chip_id)
        except ChipNotFoundError:
            if not known:
                raise ApiError(404, f"chip_id: no chip {chip_id!r}", "chip_id") from None
