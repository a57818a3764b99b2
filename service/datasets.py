"""Uploaded data: ``.npz`` files of plain arrays, labelled eval sets, calibration inputs.

An eval set maps the model's inputs to arrays (``x`` for a single-input model, else one array
per input name) plus integer labels ``y``. Errors are :class:`~service.problems.InvalidField`
naming the upload field (``eval``, ``data``, ``calibration``) or one of its arrays (``eval.y``).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from chipsim.model_inputs import InputError, ModelInputs
from service.problems import InvalidField


def load_npz(data: bytes, field_name: str) -> dict[str, np.ndarray]:
    """Arrays of an uploaded ``.npz`` (no pickle); errors name the field."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise InvalidField(
            field_name, f"{field_name}: not a readable .npz file of plain arrays ({str(err)[:200]})"
        ) from None


def _feeds_from_npz(
    arrays: dict[str, np.ndarray], input_names: list[str], field_name: str, label_key: str | None
) -> dict[str, np.ndarray]:
    """Model inputs from npz arrays: ``x`` for a single-input model, else one array per input name."""
    feeds = {k: v for k, v in arrays.items() if k in input_names}
    if not feeds and "x" in arrays and len(input_names) == 1:
        feeds = {input_names[0]: arrays["x"]}
    missing = [n for n in input_names if n not in feeds]
    if missing:
        want = "'x'" if len(input_names) == 1 else f"one array per input {input_names}"
        raise InvalidField(
            field_name,
            f"{field_name}: expected {want}"
            + (f" and labels {label_key!r}" if label_key else "")
            + f"; found {sorted(arrays)}",
        )
    return feeds


@dataclass
class EvalSet:
    """Labelled samples: model inputs by name (first dimension: samples) and class indices."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int) -> EvalSet:
        if n >= len(self):
            return self
        return EvalSet({k: v[:n] for k, v in self.feeds.items()}, self.labels[:n])


def parse_eval_set(data: bytes, input_names: list[str], max_samples: int, field_name: str = "eval") -> EvalSet:
    """A labelled ``.npz`` upload → an :class:`EvalSet` (arrays as stored; not yet checked against
    the model's shapes, see :func:`check_eval_set`)."""
    arrays = load_npz(data, field_name)
    if "y" not in arrays:
        raise InvalidField(
            field_name,
            f"{field_name}: labelled eval data needs integer labels 'y' (N,) besides the "
            f"inputs; found {sorted(arrays)}",
        )
    y = arrays["y"]
    labels = f"{field_name}.y"
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise InvalidField(labels, f"{labels}: labels must be a 1-D integer array, got {y.dtype} {list(y.shape)}")
    if y.size == 0:
        raise InvalidField(labels, f"{labels}: empty eval set")
    if y.size > max_samples:
        raise InvalidField(labels, f"{labels}: {y.size} samples, more than the limit of {max_samples}")
    if np.any(y < 0):
        raise InvalidField(labels, f"{labels}: labels must be ≥ 0 (class indices)")
    feeds = _feeds_from_npz(arrays, input_names, field_name, "y")
    for name, arr in feeds.items():
        if arr.ndim == 0 or arr.shape[0] != y.shape[0]:
            raise InvalidField(
                f"{field_name}.{name}",
                f"{field_name}.{name}: {list(arr.shape)} does not have {y.shape[0]} samples like 'y'",
            )
    return EvalSet(feeds, y.astype(np.int64))


def check_eval_set(eval_set: EvalSet, inputs: ModelInputs, field_name: str = "eval") -> None:
    """The eval set fits the model's declared inputs (dtypes, dimensions; checked on its first
    two samples, which fixes the per-sample shape); the error names the upload field."""
    try:
        inputs.check({k: v[:2] for k, v in eval_set.feeds.items()})
    except InputError as err:
        raise InvalidField(field_name, f"{field_name}: {err}") from None


def calibration_feeds(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
    """Calibration inputs (``x``, or one array per input name) in their own dtypes: the compiler
    casts each to the dtype its input declares (token ids stay integers); numbers only, finite."""
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf" or (v.dtype.kind == "f" and not np.all(np.isfinite(v))):
            raise InvalidField(f"calibration.{k}", f"calibration.{k}: must be a finite numeric array")
    if "x" in arrays and len(arrays) == 1:
        return arrays["x"]
    return dict(arrays)
