"""float32 ↔ float16 conversion of large arrays through onnxruntime's ``Cast``.

numpy 2.4 converts float16 one element at a time (~7 ns each here); onnxruntime's Cast uses the
CPU's conversion instructions (~0.3 ns). Both round to nearest even, handle subnormals and
overflow to ±inf the same way: bit-identical for every non-NaN float32 (checked on random bit
patterns by tests/test_half.py); NaNs stay NaN (their payload may differ, the chip stores none).
Small arrays go through numpy, where a session call would cost more than it saves.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from chipsim.ort_session import PROVIDERS, session_options

#: Arrays with fewer elements than this are converted by numpy (a session call costs ~20 µs).
MIN_ELEMENTS = 1 << 14
_sessions: dict[int, ort.InferenceSession] = {}
_lock = threading.Lock()


def _session(to: int) -> ort.InferenceSession:
    with _lock:
        sess = _sessions.get(to)
        if sess is None:
            src = TensorProto.FLOAT if to == TensorProto.FLOAT16 else TensorProto.FLOAT16
            graph = helper.make_graph(
                [helper.make_node("Cast", ["x"], ["y"], to=to)],
                "cast",
                [helper.make_tensor_value_info("x", src, None)],
                [helper.make_tensor_value_info("y", to, None)],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8
            opts = session_options(1)
            # no arena: the outputs are the chip's arrays, each freed on its own, not a pool that
            # grows by doubling and stays resident (resnet18: ~9 B/weight more after programming)
            opts.enable_cpu_mem_arena = False
            sess = _sessions[to] = ort.InferenceSession(model.SerializeToString(), opts, providers=PROVIDERS)
        return sess


def _cast(a: np.ndarray, dtype: type, to: int) -> np.ndarray:
    if a.size < MIN_ELEMENTS:
        return a.astype(dtype)
    return _session(to).run(None, {"x": np.ascontiguousarray(a)})[0]


def to_float16(a: np.ndarray) -> np.ndarray:
    """``a.astype(np.float16)`` for a float32 array, fast."""
    return _cast(np.asarray(a, np.float32), np.float16, TensorProto.FLOAT16)


def to_float32(a: np.ndarray) -> np.ndarray:
    """``a.astype(np.float32)`` for a float16 array, fast."""
    return _cast(np.asarray(a, np.float16), np.float32, TensorProto.FLOAT)
