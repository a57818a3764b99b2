"""DAC input ranges of the analog layers: from the model's metadata, from calibration data, or
a default (DESIGN §3.6).

Precedence, per weight: ranges given by the caller (recompiling a chip) > the model's
``agedchip.input_ranges`` metadata (learned by HWA training) > calibration on user data (the
:data:`CALIBRATION_QUANTILE` of |x|) > :data:`DEFAULT_INPUT_RANGE`.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from chipsim.compiler.loader import io_specs
from chipsim.compiler.plan import CompileError
from chipsim.ort_session import cpu_session

#: DAC input range for layers with neither metadata nor calibration data: aihwkit's default
#: ``inp_bound = 1.0`` (inputs assumed normalised to [−1, 1]).
DEFAULT_INPUT_RANGE = 1.0
#: Calibration takes this quantile of |x| per layer, so rare outliers do not waste DAC levels.
CALIBRATION_QUANTILE = 0.9999
#: Metadata key with learned input ranges: JSON {weight initializer name: r}.
META_INPUT_RANGES = "agedchip.input_ranges"

Calibration = dict[str, np.ndarray] | np.ndarray


def calibrate_ranges(model: onnx.ModelProto, inputs: dict[str, np.ndarray],
                     weight_to_input: dict[str, str | list[str]]) -> dict[str, float]:
    """Per analog layer, the CALIBRATION_QUANTILE of |input| on user data, by weight name. A
    weight read by several nodes (or a recurrence's hidden states) is calibrated on all the
    tensors it multiplies together."""
    tensors = {w: [t] if isinstance(t, str) else list(t) for w, t in weight_to_input.items()}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for t in {t for ts in tensors.values() for t in ts} - existing:
        m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = cpu_session(m.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, inputs)))
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


def resolve_ranges(model: onnx.ModelProto, metadata: dict[str, str], weight_to_input: dict[str, list[str]],
                   calibration: Calibration | None, given: dict[str, float] | None) -> dict[str, float]:
    """Input range by weight name for the weights that have one; the rest get DEFAULT_INPUT_RANGE
    when their layer is built. ``weight_to_input``: every analog weight → the tensors it multiplies;
    ``calibration``: one array for a single-input model or {input name: array}."""
    ranges = metadata_ranges(metadata)
    ranges.update(given or {})
    missing = {w: t for w, t in weight_to_input.items() if w not in ranges}
    if missing and calibration is not None:
        if isinstance(calibration, dict):
            feeds = calibration
        else:
            init_names = {t.name for t in model.graph.initializer}
            feeds = {io_specs(model.graph.input, init_names)[0]["name"]: calibration}
        try:
            ranges.update(calibrate_ranges(model, {k: np.asarray(v, np.float32) for k, v in feeds.items()}, missing))
        except Exception as err:
            raise CompileError(f"calibration: could not run the model on the calibration data ({str(err)[:200]})") from None
    return ranges
