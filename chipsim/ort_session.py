"""onnxruntime sessions, configured in one place for every session chipsim builds.

Every session runs on the CPU provider and logs errors only (onnxruntime's warnings would go to the
process's stderr, where a client of the service never sees them). ``threads`` sets the
intra-op pool and pins the inter-op pool to one thread, so that ``threads`` bounds the cores one
session uses.
"""

from __future__ import annotations

import onnxruntime as ort

PROVIDERS = ["CPUExecutionProvider"]
#: onnxruntime's "error" level: warnings and below are dropped.
LOG_ERRORS_ONLY = 3


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options of every chipsim session; ``threads`` None or 0: onnxruntime's default pool."""
    opts = ort.SessionOptions()
    opts.log_severity_level = LOG_ERRORS_ONLY
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def cpu_session(model: bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session of a serialised ONNX model with :func:`session_options`."""
    return ort.InferenceSession(model, session_options(threads), providers=PROVIDERS)
