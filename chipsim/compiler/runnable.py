"""Whether onnxruntime can run a model: nodes of any op domain (``ai.onnx.ml`` from skl2onnx,
``com.microsoft`` from onnxruntime's own optimisers) stay digital and pass through when it can;
a node it cannot run is refused by name, before anything is programmed.

The check builds a CPU session with graph optimisations off, which resolves every node's kernel
(the part that fails) without the optimisers' cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from chipsim.compiler import light_copy
from chipsim.compiler.plan import CompileError
from chipsim.ort_session import PROVIDERS, session_options

_NODE_NAME = re.compile(r"node with name '([^']*)'")
_UNREGISTERED = re.compile(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op")
_OP_TYPE = re.compile(r"implementation for (\w+)\(")


def node_label(node: onnx.NodeProto) -> str:
    """``'name' (domain.Op)``, the way refusals name a node."""
    return f"{node.name or node.op_type!r} ({node.domain or 'ai.onnx'}.{node.op_type})"


def culprit(model: onnx.ModelProto, message: str) -> onnx.NodeProto | None:
    """The node an onnxruntime error message is about, if it names one we can find."""
    nodes = list(model.graph.node)
    m = _NODE_NAME.search(message)
    if m and m.group(1):
        found = [n for n in nodes if n.name == m.group(1)]
        if found:
            return found[0]
    m = _UNREGISTERED.search(message)
    if m:
        domain, op = m.group(1), m.group(2)
        found = [n for n in nodes if n.op_type == op and (n.domain or "") == (domain if domain != "ai.onnx" else "")]
        if found:
            return found[0]
    m = _OP_TYPE.search(message)
    if m:
        found = [n for n in nodes if n.op_type == m.group(1)]
        if len(found) == 1:
            return found[0]
    return None


def runnable_error(model: onnx.ModelProto, err: Exception) -> CompileError:
    """A CompileError naming the node onnxruntime refused (or quoting onnxruntime if none is named)."""
    message = " ".join(str(err).split())
    detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", message)[:300]
    node = culprit(model, message)
    where = f"node {node_label(node)}" if node is not None else "the model"
    return CompileError(
        f"model: {where} cannot run in onnxruntime {ort.__version__} on the CPU ({detail}); the chip runs every "
        "digital node with onnxruntime: replace the op, or export it in an opset/type onnxruntime implements"
    )


def without(model: onnx.ModelProto, replaced: Callable[[onnx.NodeProto], bool]) -> onnx.ModelProto:
    """A copy of ``model`` without the nodes ``replaced`` selects, their outputs graph inputs of
    unknown shape: the nodes onnxruntime will run, with what the chip computes in their place."""
    gone = [n for n in model.graph.node if replaced(n)]
    # the weights only the replaced nodes read are left out: onnxruntime would parse them for nothing
    out = light_copy.keep(model, [n for n in model.graph.node if not replaced(n)])
    if not gone:
        return out
    # Analog layers compute in float32 (compute_in_fp32 ran before), whatever the op
    out.graph.input.extend(
        helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for n in gone for o in n.output if o
    )
    return out


def check_runnable(model: onnx.ModelProto, replaced: Callable[[onnx.NodeProto], bool] | None = None) -> None:
    """Raise :class:`CompileError` naming the first node onnxruntime cannot run. ``replaced``: the
    nodes the chip computes instead (analog layers lowered to standard ops), left out of the
    check — onnxruntime need not run them as exported (e.g. an ``LSTM`` with ``layout = 1``,
    which onnxruntime refuses)."""
    opts = session_options(1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    checked = without(model, replaced) if replaced is not None else model
    try:
        ort.InferenceSession(checked.SerializeToString(), opts, providers=PROVIDERS)
    except Exception as err:  # onnxruntime raises its own exception types (Fail, NotImplemented, InvalidGraph…)
        raise runnable_error(checked, err) from None
