"""One onnxruntime session of the model being compiled, shared by every pass that runs it.

Calibration (on user data or the eval set) and the shape probe (:func:`.loader.probe_shapes`)
run the model as the chip path sees it (fp16/bf16 computed in fp32) with some intermediate
tensors exposed as outputs. Each used to build its own session, and the runnable check
(:func:`.runnable.check_runnable`) a third: every build parses the model with its weights and
optimises the graph again (issue #20, finding 7: ``/program`` built the model's graph twice).
A :class:`ModelSession` exposes, up front, every tensor those passes read, is built on first
use, and its build is the runnable check: when it fails, the check names the node onnxruntime
refuses.

The session is built after :func:`.bounds.check_allocations` (its optimisers fold constants,
which a model over the bounds could make huge): the compiler creates it only then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from chipsim.compiler.runnable import check_runnable
from chipsim.ort_session import cpu_session


class ModelSession:
    """A session of ``model`` whose outputs are the model's own plus ``tensors``, built once on
    the first :meth:`run`. ``replaced``: the nodes the chip computes instead (as for
    :func:`.runnable.check_runnable`), so that a failed build names a node onnxruntime cannot run
    among the others; the build's own error is raised when there is none."""

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: Iterable[str],
        replaced: Callable[[onnx.NodeProto], bool] | None = None,
    ):
        self.model = model
        self.replaced = replaced
        existing = [o.name for o in model.graph.output]
        self.tensors = list(dict.fromkeys([*existing, *tensors]))
        self._new = [t for t in self.tensors if t not in existing]
        self._session: ort.InferenceSession | None = None

    def session(self) -> ort.InferenceSession:
        """The session, built on first use (see the class docstring for a failed build)."""
        if self._session is None:
            m = onnx.ModelProto()
            m.CopyFrom(self.model)
            # no type nor shape: onnxruntime takes the tensor's own (fp16 models' included)
            m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in self._new)
            try:
                self._session = cpu_session(m.SerializeToString())
            except Exception:  # onnxruntime raises its own exception types
                check_runnable(self.model, self.replaced)  # a CompileError naming the node, if one is at fault
                raise
        return self._session

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The values of ``names`` (exposed tensors) on ``feeds``, by name."""
        unknown = [n for n in names if n not in self.tensors]
        if unknown:  # a compiler bug: the pass did not declare what it reads
            raise ValueError(f"tensors {unknown[:3]} were not exposed when the session was made")
        return dict(zip(names, self.session().run(names, feeds)))

    def close(self) -> None:
        """Release the session (the compiler's later passes no longer run the model)."""
        self._session = None
