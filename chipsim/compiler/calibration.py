"""DAC input ranges of the analog layers: from the model's metadata, from calibration data, or
a default (DESIGN §3.6).

Precedence, per weight: ranges given by the caller (recompiling a chip) > the model's
``agedchip.input_ranges`` metadata (learned by HWA training) > calibration on user data (the
:data:`CALIBRATION_QUANTILE` of |x|) > calibration on the first :data:`EVAL_CALIBRATION_SAMPLES`
of the model's eval set, when no calibration data is given > :data:`DEFAULT_INPUT_RANGE`. Each
layer records which (:class:`~chipsim.modes.RangeSource`), so a chip can say which of its layers
are uncalibrated.

Calibration data is fed in each input's own dtype (token ids stay integers): arrays are cast to
the dtype the model declares when that loses nothing, else refused naming the input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx

from chipsim.compiler.loader import io_specs
from chipsim.compiler.model_session import ModelSession
from chipsim.compiler.plan import CompileError
from chipsim.modes import RangeSource

#: DAC input range for layers with neither metadata nor calibration data: aihwkit's default
#: ``inp_bound = 1.0`` (inputs assumed normalised to [−1, 1]).
DEFAULT_INPUT_RANGE = 1.0
#: Calibration takes this quantile of |x| per layer, so rare outliers do not waste DAC levels.
CALIBRATION_QUANTILE = 0.9999
#: Samples of an eval set used to calibrate when no calibration data is given: enough for the
#: 0.9999 quantile of a layer's inputs (≥ 10⁴ values per layer for any layer wider than 78
#: inputs), and a bounded calibration run.
EVAL_CALIBRATION_SAMPLES = 128
#: Metadata key with learned input ranges: JSON {weight initializer name: r}.
META_INPUT_RANGES = "agedchip.input_ranges"

Calibration = dict[str, np.ndarray] | np.ndarray


def calibrate_ranges(
    model: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    weight_to_input: dict[str, str | list[str]],
    session: ModelSession | None = None,
) -> dict[str, float]:
    """Per analog layer, the CALIBRATION_QUANTILE of |input| on user data, by weight name. A
    weight read by several nodes (or a recurrence's hidden states) is calibrated on all the
    tensors it multiplies together. ``session``: the compiler's shared session of ``model``
    exposing those tensors (one is built when None)."""
    tensors = {w: [t] if isinstance(t, str) else list(t) for w, t in weight_to_input.items()}
    needed = list(dict.fromkeys(t for ts in tensors.values() for t in ts))
    values = (session or ModelSession(model, needed)).run(needed, inputs)
    out = {}
    for w, ts in tensors.items():
        v = np.concatenate([np.abs(np.asarray(values[t], dtype=np.float64)).ravel() for t in ts])
        r = float(np.quantile(v, CALIBRATION_QUANTILE)) if v.size else 0.0
        out[w] = r if r > 0 else DEFAULT_INPUT_RANGE
    return out


def metadata_ranges(metadata: dict[str, str]) -> dict[str, float]:
    """The learned ranges in a model's metadata (empty if it has none); raises CompileError if malformed."""
    if META_INPUT_RANGES not in metadata:
        return {}
    try:
        raw = json.loads(metadata[META_INPUT_RANGES])
        ranges = {str(k): float(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError):
        raise CompileError(f"model: metadata {META_INPUT_RANGES!r} must be a JSON object of positive numbers") from None
    bad = [k for k, v in ranges.items() if not (np.isfinite(v) and v > 0)]
    if bad:
        raise CompileError(f"model: metadata {META_INPUT_RANGES!r} has non-positive ranges for {bad[:5]}")
    return ranges


def calibration_error(field: str, message: str) -> CompileError:
    """A CompileError about calibration data, naming the field (``calibration.<input>``)."""
    err = CompileError(f"{field}: {message}")
    err.field = field
    return err


def calibration_feeds(model: onnx.ModelProto, data: Calibration, field: str = "calibration") -> dict[str, np.ndarray]:
    """Calibration data as the model's feeds: one array for a single-input model or
    {input name: array}, each cast to the dtype the model declares for it. Integer inputs (token
    ids) take integer data, or floats that are whole numbers; nothing is cast that would change
    a value's meaning."""
    init_names = {t.name for t in model.graph.initializer}
    specs = {s["name"]: s for s in io_specs(model.graph.input, init_names)}
    if not isinstance(data, dict):
        if len(specs) != 1:
            raise calibration_error(
                field, f"the model has {len(specs)} inputs {sorted(specs)}; give one array per input name"
            )
        data = {next(iter(specs)): data}
    unknown = sorted(set(data) - set(specs))
    if unknown:
        raise calibration_error(f"{field}.{unknown[0]}", f"not an input of the model (inputs: {sorted(specs)})")
    missing = sorted(set(specs) - set(data))
    if missing:
        raise calibration_error(f"{field}.{missing[0]}", f"missing; the model's inputs are {sorted(specs)}")
    feeds = {}
    for name, arr in data.items():
        arr = np.asarray(arr)
        want = np.dtype(specs[name]["dtype"])
        where = f"{field}.{name}"
        if arr.dtype.kind not in "biuf":
            raise calibration_error(where, f"must be a numeric array, got {arr.dtype}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise calibration_error(where, "contains NaN or infinity")
        if want.kind in "iub" and arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise calibration_error(
                where,
                f"the model's input is {want} (e.g. token ids); got {arr.dtype} values that are not whole numbers",
            )
        if want.kind in "iu" and arr.size and (arr.min() < np.iinfo(want).min or arr.max() > np.iinfo(want).max):
            raise calibration_error(where, f"values outside the range of the model's {want} input")
        feeds[name] = np.ascontiguousarray(arr.astype(want))
    return feeds


@dataclass
class RangePlan:
    """Input ranges before anything runs: those given or learned (with their sources), and the
    weights left to calibrate on ``data`` (from the request's ``field``)."""

    ranges: dict[str, float]
    sources: dict[str, RangeSource]
    missing: dict[str, list[str]]  # weight → the tensors it multiplies
    data: Calibration | None
    source: RangeSource
    field: str

    @property
    def tensors(self) -> list[str]:
        """The tensors calibration reads when it runs the model (empty: it does not run it)."""
        if self.data is None:
            return []
        return list(dict.fromkeys(t for ts in self.missing.values() for t in ts))


def plan_ranges(
    metadata: dict[str, str],
    weight_to_input: dict[str, list[str]],
    calibration: Calibration | None,
    given: dict[str, float] | None,
    eval_inputs: Calibration | None = None,
) -> RangePlan:
    """The precedence of the module docstring up to the data: given ranges, then the model's
    metadata; the weights left, with the data that calibrates them (the calibration data, else
    the first :data:`EVAL_CALIBRATION_SAMPLES` of the eval set, else none)."""
    ranges: dict[str, float] = {}
    sources: dict[str, RangeSource] = {}
    for found, source in ((given or {}, RangeSource.GIVEN), (metadata_ranges(metadata), RangeSource.METADATA)):
        for w, r in found.items():
            if w not in ranges:
                ranges[w], sources[w] = r, source
    missing = {w: t for w, t in weight_to_input.items() if w not in ranges}
    data, source, field = calibration, RangeSource.CALIBRATION, "calibration"
    if data is None and eval_inputs is not None:
        data, source, field = eval_inputs, RangeSource.EVAL, "eval"
        data = (
            {k: np.asarray(v)[:EVAL_CALIBRATION_SAMPLES] for k, v in data.items()}
            if isinstance(data, dict)
            else np.asarray(data)[:EVAL_CALIBRATION_SAMPLES]
        )
    return RangePlan(ranges, sources, missing, data if missing else None, source, field)


def finish_ranges(
    model: onnx.ModelProto, plan: RangePlan, session: ModelSession | None = None
) -> tuple[dict[str, float], dict[str, RangeSource]]:
    """Input range and its source by weight name: ``plan``'s, its missing weights calibrated on
    its data (on ``session``, the compiler's shared session exposing :attr:`RangePlan.tensors`;
    one is built when None), and :data:`DEFAULT_INPUT_RANGE` for any left."""
    ranges, sources = dict(plan.ranges), dict(plan.sources)
    if plan.data is not None:
        feeds = calibration_feeds(model, plan.data, plan.field)
        try:
            found = calibrate_ranges(model, feeds, plan.missing, session)
        except CompileError:  # the runnable check named a node onnxruntime cannot run
            raise
        except Exception as err:
            raise calibration_error(
                plan.field, f"could not run the model on the {plan.field} data ({str(err)[:200]})"
            ) from None
        for w, r in found.items():
            ranges[w], sources[w] = r, plan.source
    for w in plan.missing:
        if w not in ranges:
            ranges[w], sources[w] = DEFAULT_INPUT_RANGE, RangeSource.DEFAULT
    return ranges, sources


def resolve_ranges(
    model: onnx.ModelProto,
    metadata: dict[str, str],
    weight_to_input: dict[str, list[str]],
    calibration: Calibration | None,
    given: dict[str, float] | None,
    eval_inputs: Calibration | None = None,
) -> tuple[dict[str, float], dict[str, RangeSource]]:
    """Input range and its source by weight name, for every analog weight of ``weight_to_input``
    (weight → the tensors it multiplies). ``calibration`` and ``eval_inputs`` (the model's eval
    set, used only without calibration data): one array for a single-input model or
    {input name: array}. :func:`plan_ranges` then :func:`finish_ranges`."""
    return finish_ranges(model, plan_ranges(metadata, weight_to_input, calibration, given, eval_inputs))
