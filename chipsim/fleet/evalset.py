"""A model's labelled eval set (the ``eval.npz`` attachment of a chip) and the model's
floating-point accuracy on it, the reference of the normalised-accuracy SLO.

The ``.npz`` holds integer labels ``y`` (N,) and either ``x`` (single-input models) or one array
per model input, the format ``POST /program`` accepts (README "POST /program fields").
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from chipsim.fleet.errors import FleetError

#: The attachment name under which a chip carries its eval set (as the service stores it).
EVAL_ATTACHMENT = "eval.npz"
#: Samples per onnxruntime call (bounds memory for large eval sets). Part of the result's
#: definition: each chunk's per-MVM noise is keyed by (chip seed, read seed, chunk index).
EVAL_CHUNK = 512


@dataclass(frozen=True)
class EvalSet:
    feeds: dict[str, np.ndarray]  # input name → (N, …) array
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int | None) -> EvalSet:
        if n is None or n >= len(self):
            return self
        return EvalSet({k: v[:n] for k, v in self.feeds.items()}, self.labels[:n])

    def chunks(self):
        """(feeds, labels) of consecutive chunks of at most EVAL_CHUNK samples."""
        for start in range(0, len(self), EVAL_CHUNK):
            yield (
                {k: v[start : start + EVAL_CHUNK] for k, v in self.feeds.items()},
                self.labels[start : start + EVAL_CHUNK],
            )


def load_eval_set(data: bytes, input_names: list[str], field: str = "eval") -> EvalSet:
    """Parse eval ``.npz`` bytes (no pickle); errors are :class:`FleetError` naming ``field``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise FleetError(f"{field}: not a readable .npz of plain arrays ({str(err)[:200]})", field) from None
    y = arrays.get("y")
    if y is None or y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer) or np.any(y < 0):
        raise FleetError(f"{field}.y: labelled eval data needs non-empty integer class labels 'y' (N,)", f"{field}.y")
    feeds = {k: v for k, v in arrays.items() if k in input_names}
    if not feeds and "x" in arrays and len(input_names) == 1:
        feeds = {input_names[0]: arrays["x"]}
    missing = [n for n in input_names if n not in feeds]
    if missing:
        raise FleetError(f"{field}: no array for model input(s) {missing}; found {sorted(arrays)}", field)
    for name, arr in feeds.items():
        if arr.ndim == 0 or arr.shape[0] != y.shape[0]:
            raise FleetError(
                f"{field}.{name}: {list(arr.shape)} does not have {y.shape[0]} samples like 'y'", f"{field}.{name}"
            )
    return EvalSet(feeds, y.astype(np.int64))


def correct_count(outputs: np.ndarray, labels: np.ndarray) -> int:
    """Samples whose arg-max over the first output's non-batch dimensions equals the label."""
    pred = np.asarray(outputs).reshape(outputs.shape[0], -1).argmax(axis=1)
    return int(np.count_nonzero(pred == labels))


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def digital_accuracy(model_bytes: bytes, eval_set: EvalSet) -> float:
    """Accuracy of the original floating-point model (onnxruntime, no chip) on ``eval_set``:
    the FP reference of ``normalised_accuracy`` (Rasch et al. 2023)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    first = sess.get_outputs()[0].name
    dtypes = {i.name: _ORT_DTYPES.get(i.type) for i in sess.get_inputs()}
    correct = 0
    for feeds, labels in eval_set.chunks():
        feeds = {k: v if dtypes.get(k) is None else v.astype(dtypes[k], copy=False) for k, v in feeds.items()}
        correct += correct_count(sess.run([first], feeds)[0], labels)
    return correct / len(eval_set)
