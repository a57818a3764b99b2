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
from chipsim.compiler.folding import Folds, nonnegative
from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.layers import emit_layer_dac
from chipsim.compiler.lean import TileOptions
from chipsim.compiler.plan import CompileError, LayerPlan
from chipsim.mapping import tile_bounds
from chipsim.modes import LayerKind
from chipsim.profiles import ChipProfile
from chipsim.state import LayerSpec

#: Ops that carry weights the crossbar cannot map, with what to do instead.
UNMAPPABLE: dict[str, str] = {
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
    #: (weight name, layout) → index of the layer holding it: a weight read again is not programmed again.
    shared: dict[tuple[str, str], int] = field(default_factory=dict)
    #: layer index → the nodes reading it (``node.name or op_type``), the one holding it first.
    readers: dict[int, list[str]] = field(default_factory=dict)
    #: the lean lowering's folds across layers (empty for the full lowering)
    folds: Folds = field(default_factory=Folds)
    _fixed: dict[str, list[bool]] | None = None

    def out_factor(self, node: onnx.NodeProto) -> float:
        """The factor folded into ``node``'s outputs (the next layer's DAC scale), or 1."""
        return self.folds.out_factor.get(node.output[0], 1.0)

    def dac(self, node: onnx.NodeProto, x: str, weight_name: str, prefix: str) -> str:
        """The DAC of ``node``'s analog layer on ``x`` (its input already scaled when folded)."""
        out = node.output[0]
        return emit_layer_dac(
            self.builder,
            x,
            self.range_for(weight_name),
            self.profile,
            prefix,
            self.folds.prescaled.get(out),
            self.folds.relu_clip.get(out, False),
        )

    def tile_options(self, node: onnx.NodeProto, x: str) -> TileOptions:
        """What the lean lowering knows of ``node``'s input ``x`` (sign) and output (a moved MaxPool)."""
        if not self.builder.lean:
            return TileOptions()
        nonneg = self.folds.relu_clip.get(node.output[0], False) or nonnegative(x, self.producers, self.consts)
        return TileOptions(nonneg=nonneg, pool=self.folds.pool.get(node.output[0]))

    def fixed_dims(self) -> dict[str, list[bool]]:
        """Per tensor, which dimensions have a fixed size in the model as exported (shape
        inference without setting symbolic inputs to 1; computed once, on first use)."""
        if self._fixed is None:
            self._fixed = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
            except Exception:  # the per-sample inference succeeded: leave every dimension unknown
                return self._fixed
            for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
                self._fixed[vi.name] = [d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim]
        return self._fixed

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

    def new_plan(
        self,
        node: onnx.NodeProto,
        kind: LayerKind,
        weight_name: str,
        name: str,
        spec_weight: np.ndarray,
        out_shape: list[int],
        tiles=None,
        layout: str | None = None,
        **extra: Any,
    ) -> LayerPlan:
        """Add an analog layer with weights ``spec_weight`` (rows = inputs, cols = outputs):
        its spec to program and its plan in the graph; returns the plan of its first read.

        ``layout`` names how ``spec_weight`` is laid out from the initializer ``weight_name``
        (e.g. ``"w"``, ``"w.T"``, a recurrent op's direction). When a layer with the same weight
        and layout exists, no devices are added: the call returns a new read of that layer
        (:meth:`LayerPlan.read_view`) with its own noise inputs. ``None`` never shares.
        """
        key = (weight_name, layout) if layout is not None else None
        if key is not None and key in self.shared:
            self.note_reader(self.shared[key], node)
            return self.add_read(self.plans[self.shared[key]], out_shape, spec_weight)
        tiles = tiles or tile_bounds(spec_weight.shape[0], self.profile.tile_rows)
        plan = LayerPlan(
            index=len(self.specs),
            name=self.unique_name(name),
            node=node.name or node.op_type,
            kind=kind,
            weight_name=weight_name,
            tiles=tiles,
            cols=spec_weight.shape[1],
            out_shape=out_shape,
            lean=self.builder.lean,
            **extra,
        )
        self.specs.append(
            LayerSpec(
                name=plan.name,
                weight=spec_weight,
                input_range=self.range_for(weight_name),
                tiles=tiles,
                meta={"node": plan.node, "kind": plan.kind, "weight": weight_name},
            )
        )
        self.plans.append(plan)
        self.note_reader(plan.index, node)
        if key is not None:
            self.shared[key] = plan.index
        return plan

    def note_reader(self, index: int, node: onnx.NodeProto) -> None:
        """Record that ``node`` reads layer ``index`` (once per node, however many reads)."""
        readers = self.readers.setdefault(index, [])
        label = node.name or node.op_type
        if label not in readers:
            readers.append(label)

    def add_read(self, plan: LayerPlan, out_shape: list[int], spec_weight: np.ndarray | None = None) -> LayerPlan:
        """A further read of ``plan``'s layer with per-sample output shape ``out_shape``."""
        stored = self.plans[plan.index]
        if spec_weight is not None and not np.array_equal(self.specs[plan.index].weight, spec_weight):
            raise RuntimeError(f"layer {stored.name!r}: a read with other weights under the same layout")
        stored.reads.append(list(out_shape))
        return stored.read_view(stored.n_reads - 1)

    def unique_name(self, name: str) -> str:
        """``name``, or ``name#2``, ``name#3``… if a layer already has it (ONNX node names need
        not be unique; chip layer names must be)."""
        taken = {s.name for s in self.specs}
        out, i = name, 1
        while out in taken:
            i += 1
            out = f"{name}#{i}"
        return out


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
