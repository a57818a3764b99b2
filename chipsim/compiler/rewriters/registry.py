"""The rewriter registry: one :class:`OpRewriter` per ONNX op type that carries weights the
crossbar maps (onnxruntime's quantisation tool keeps its op quantisers in such a registry).

A new op family is one module in this package with a subclass decorated ``@register`` and one
import line in ``rewriters/__init__.py``; remove its entry from :data:`UNMAPPABLE` if it has one.
A rewriter gets the node and a :class:`RewriteContext`, adds its analog layers with
:meth:`RewriteContext.new_plan`, builds the replacement nodes with ``ctx.builder`` (writing the
node's original output names last) and returns True, or returns False to leave the node digital.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from chipsim.compiler.calibration import DEFAULT_INPUT_RANGE
from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.plan import CompileError, LayerPlan
from chipsim.mapping import tile_bounds
from chipsim.modes import LayerKind
from chipsim.profiles import ChipProfile
from chipsim.state import LayerSpec

#: Ops that carry weights the crossbar cannot map, with what to do instead.
UNMAPPABLE: dict[str, str] = {
    "LSTM": "export the recurrence unrolled (e.g. torch.nn.LSTMCell in a loop) so its gates are MatMul/Gemm",
    "GRU": "export the recurrence unrolled (torch.nn.GRUCell in a loop) so its gates are MatMul/Gemm",
    "RNN": "export the recurrence unrolled so its weights are MatMul/Gemm",
    "ConvTranspose": "replace it by Upsample + Conv, which the chip maps",
    "ConvInteger": "export the float model; the chip does its own quantisation",
    "MatMulInteger": "export the float model; the chip does its own quantisation",
    "QLinearConv": "export the float model; the chip does its own quantisation",
    "QLinearMatMul": "export the float model; the chip does its own quantisation",
    "DeformConv": "use a plain Conv",
    "Einsum": "export the contraction as MatMul (e.g. torch.matmul) so it can be mapped",
}


@dataclass
class RewriteContext:
    """What rewriters share within one compilation; collects the layer specs and plans."""

    model: onnx.ModelProto
    consts: dict[str, np.ndarray]  # initializers and Constant outputs by name
    producers: dict[str, onnx.NodeProto]  # tensor name → the node writing it
    shapes: dict[str, list[int | None]]  # per-sample shapes (batch 1), see loader.static_shapes
    profile: ChipProfile
    ranges: dict[str, float]  # DAC input range by weight name (calibration.resolve_ranges)
    builder: GraphBuilder
    specs: list[LayerSpec] = field(default_factory=list)
    plans: list[LayerPlan] = field(default_factory=list)

    def out_shape(self, node: onnx.NodeProto, channels: int | None = None) -> list[int]:
        """Per-sample output shape of ``node`` (``channels`` replaces dim 1: one Conv group).

        A crossbar needs only its weight's own axes (K, N): dimensions that are symbolic, or
        that shape inference cannot resolve (a sequence length sliced from ``Shape``, as Hugging
        Face exports do), are recorded as 1, like the batch. Only the rank must be known; when
        inference lost it, it is the rank of the node's data input (MatMul, Conv) or 2 (Gemm)."""
        shape = self.shapes.get(node.output[0])
        if not shape:
            x = self.shapes.get(node.input[0]) if node.input else None
            rank = 2 if node.op_type == "Gemm" else (max(len(x), 2) if x else 0)
            if not rank:
                raise CompileError(
                    f"model: cannot infer the rank of the output of node {node.name or node.op_type!r} (its input's "
                    "rank is unknown too); export with shape information (torch.onnx.export keeps it)"
                )
            shape = [None] * rank
        shape = [1 if d is None else int(d) for d in shape]
        if channels is not None:
            shape[1] = channels
        return shape

    def range_for(self, weight_name: str) -> float:
        return float(self.ranges.get(weight_name, DEFAULT_INPUT_RANGE))

    def new_plan(self, node: onnx.NodeProto, kind: LayerKind, weight_name: str, name: str, spec_weight: np.ndarray,
                 out_shape: list[int], tiles=None, **extra: Any) -> LayerPlan:
        """Add an analog layer with weights ``spec_weight`` (rows = inputs, cols = outputs):
        its spec to program and its plan in the graph."""
        tiles = tiles or tile_bounds(spec_weight.shape[0], self.profile.tile_rows)
        plan = LayerPlan(index=len(self.specs), name=name, node=node.name or node.op_type, kind=kind,
                         weight_name=weight_name, tiles=tiles, cols=spec_weight.shape[1],
                         out_shape=out_shape, **extra)
        self.specs.append(LayerSpec(name=name, weight=spec_weight, input_range=self.range_for(weight_name),
                                    tiles=tiles, meta={"node": plan.node, "kind": plan.kind, "weight": weight_name}))
        self.plans.append(plan)
        return plan


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class OpRewriter:
    """Maps nodes of one op type onto analog layers. The defaults fit ops of the form
    ``op(x, W, …)``: the weight is input 1 and multiplies input 0."""

    op_type: str = ""

    def weight_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Inputs that must be constant for the node to be mapped (a weight computed from
        constants at run time is refused with a hint to fold constants)."""
        return [node.input[1]] if len(node.input) > 1 else []

    def maps_weight(self, weight: np.ndarray) -> bool:
        """Whether a constant weight of this op goes onto the chip (else the node stays digital)."""
        return True

    def analog_weights(self, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> dict[str, str]:
        """Weight name → the tensor it multiplies, for each weight the node maps (calibration
        measures those tensors)."""
        if len(node.input) > 1 and node.input[1] in consts and self.maps_weight(consts[node.input[1]]):
            return {node.input[1]: node.input[0]}
        return {}

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        raise NotImplementedError


#: The rewriter of each mapped op type.
REWRITERS: dict[str, OpRewriter] = {}


def rewriter_of(node: onnx.NodeProto) -> OpRewriter | None:
    """The rewriter of a node of the default ONNX domain (a node of another domain that shares an
    op type name, e.g. ``com.microsoft.nchwc.Conv``, is another op and stays digital)."""
    return REWRITERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None


def register(cls: type[OpRewriter]) -> type[OpRewriter]:
    """Class decorator: make ``cls`` the rewriter of its ``op_type``."""
    if not cls.op_type or cls.op_type in REWRITERS:
        raise ValueError(f"rewriter {cls.__name__}: op_type {cls.op_type!r} is empty or already registered")
    REWRITERS[cls.op_type] = cls()
    return cls
