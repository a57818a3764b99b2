"""The ONNX compiler: program any ONNX model onto the chip (DESIGN §3.6).

Shaped like onnxruntime's static quantisation tool: walk the graph, hand each weight-bearing
node to a per-op rewriter from a registry (``MatMul``, ``Gemm``, ``Conv``), calibrate the DAC
input ranges, and leave every other node untouched. Each analog layer becomes standard ONNX ops:

    clip to ±r → DAC code round(x/(r·step))
      → per tile: the products x'@W, x'@(ramp⊙W), |x'|@|W|, x'²@|W| with the read-out weights
        (graph inputs, so a new age needs no new session; one grouped Conv for Conv tiles)
        → IR drop + per-MVM weight read noise and output noise → ADC code → × α_k·r·s_col·step
      → Σ over tiles → + bias (digital)

The graph works in integer DAC codes and ADC steps: the unit changes are folded into the
weights (:func:`part_factors`) and the per-column scales, which saves elementwise passes.
Noise enters as graph inputs drawn by the runtime, so a request with a seed is reproducible.
A ``MatMul`` between two activations (attention's QKᵀ and AV) stays digital.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chipsim.periphery import IR_DROP_G_RATIO, IR_DROP_POLY
from chipsim.profiles import ChipProfile
from chipsim.programming import program
from chipsim.state import ChipState, LayerSpec

#: DAC input range for layers with neither metadata nor calibration data: aihwkit's default
#: ``inp_bound = 1.0`` (inputs assumed normalised to [−1, 1]).
DEFAULT_INPUT_RANGE = 1.0
#: Calibration takes this quantile of |x| per layer, so rare outliers do not waste DAC levels.
CALIBRATION_QUANTILE = 0.9999
#: Metadata key with learned input ranges: JSON {weight initializer name: r}.
META_INPUT_RANGES = "agedchip.input_ranges"
MIN_OPSET = 13
MAX_MODEL_BYTES = 1 << 30

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


class CompileError(ValueError):
    """The model cannot be programmed; the message says why and what to do."""

    field = "model"


#: Per-tile weight inputs of the compiled graph, one per product (see tile_parts).
WEIGHT_INPUTS = ("w", "r", "a", "v")


@dataclass
class LayerPlan:
    """How one analog layer (or one group of a grouped Conv) sits in the compiled graph."""

    index: int  # position in ChipState.layers
    name: str
    node: str  # the original node's name
    kind: str  # "matmul" | "gemm" | "conv"
    weight_name: str
    tiles: list[tuple[int, int]]
    cols: int
    out_shape: list[int]  # per-sample output shape, batch dimension = 1
    conv_shape: list[int] | None = None  # (cols, channels, *kernel) for conv tiles
    tile_channels: list[tuple[int, int]] | None = None

    def input_names(self, k: int) -> dict[str, str]:
        p = f"chip/l{self.index}/t{k}/"
        return {n: p + n for n in (*WEIGHT_INPUTS, "scale", "noise")}


@dataclass
class CompiledModel:
    """Result of compilation: layer specs to program, the rewritten graph, and its plan."""

    specs: list[LayerSpec]
    plans: list[LayerPlan]
    graph: bytes
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    metadata: dict[str, str] = field(default_factory=dict)
    digital_nodes: int = 0

    def plan_json(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.plans]


# --------------------------------------------------------------------------- loading & checks
def load_model(model_bytes: bytes) -> onnx.ModelProto:
    """Parse and validate an ONNX model held in memory. Never reads paths named by the model."""
    if not isinstance(model_bytes, (bytes, bytearray)) or not model_bytes:
        raise CompileError("model: empty upload; expected an ONNX file")
    if len(model_bytes) > MAX_MODEL_BYTES:
        raise CompileError("model: larger than 1 GiB")
    try:
        model = onnx.load_from_string(bytes(model_bytes))
    except Exception as err:  # protobuf raises several types
        raise CompileError(f"model: not a valid ONNX protobuf ({type(err).__name__})") from None
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            raise CompileError(
                f"model: tensor {tensor.name!r} is stored in an external data file; the chip never reads files "
                "named by a model. Save the model with its weights inside (onnx.save(model, path, "
                "save_as_external_data=False))."
            )
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise CompileError(f"model: malformed ONNX ({str(err).splitlines()[0][:300]})") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise CompileError(f"model: opset {opset} is too old; export with opset ≥ {MIN_OPSET} (e.g. opset_version=17)")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"model: node {node.name or node.op_type!r} uses custom domain {node.domain!r}")
    return model


def model_inputs(model_bytes: bytes) -> list[dict[str, Any]]:
    """The inputs (name, dtype, shape) a chip programmed from this model takes, as in its
    meta, read without compiling: data can be checked against them before programming."""
    model = load_model(model_bytes)
    return _io(model.graph.input, {t.name for t in model.graph.initializer})


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
    for sub in _subgraphs(model.graph):
        yield from sub.initializer


def _subgraphs(graph: onnx.GraphProto):
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
                yield from _subgraphs(attr.g)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and outputs of ``Constant`` nodes (torch sometimes exports weights so)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return consts


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes of every tensor with symbolic input dims set to 1 (per-sample shapes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init_names = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in init_names:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = 1
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as err:
        raise CompileError(f"model: shape inference failed ({str(err).splitlines()[0][:200]})") from None
    shapes: dict[str, list[int | None]] = {}
    for vi in [*m.graph.value_info, *m.graph.output, *m.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _io(values, init_names: set[str]) -> list[dict[str, Any]]:
    out = []
    for vi in values:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        out.append({
            "name": vi.name,
            "dtype": helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "float32",
            "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim],
        })
    return out


# --------------------------------------------------------------------------- graph building
class _Builder:
    """Collects new nodes and constant initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}/{self._n}"

    def const(self, prefix: str, value: Any, dtype=np.float32) -> str:
        name = self.name(prefix + "/c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(f"{prefix}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(prefix + "/n"), **attrs))
        return out

    def split(self, x: str, axis: int, sizes: list[int], prefix: str) -> list[str]:
        outs = [self.name(f"{prefix}/Split") for _ in sizes]
        self.nodes.append(helper.make_node("Split", [x, self.const(prefix, sizes, np.int64)], outs,
                                           name=self.name(prefix + "/n"), axis=axis))
        return outs

    def graph_input(self, name: str, shape: list[Any]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name


def is_linear(profile: ChipProfile) -> bool:
    """True when every tile computes an exactly linear function of its input: ideal DAC and ADC,
    no per-MVM noise, no IR drop (weight effects only: drift, programming/read noise, faults).
    Then ``α_k·r·s_col / r`` is folded into the read-out weights and each analog layer compiles
    to the original model's own MatMul/Conv (plus a Sum over tiles)."""
    return (not profile.in_clip and profile.in_levels == 0 and profile.out_levels == 0 and profile.out_bound == 0
            and profile.w_noise == 0 and profile.out_noise == 0 and profile.ir_drop == 0)


#: Layout of the compiled graph (one product per tile part, integer DAC/ADC units). A chip stores
#: the graph it was programmed with; a runtime recompiles chips of another layout from their
#: stored model (their physical state does not depend on it).
GRAPH_FORMAT = 2


def tile_parts(profile: ChipProfile) -> list[str]:
    """The matrix products of one tile, in this order (see :func:`_tile_products`): ``w`` x'@W;
    ``r`` x'@(ramp⊙W) and ``a`` |x'|@|W| (IR drop); ``v`` x'²@|W| (per-MVM noise)."""
    parts = ["w"]
    if not is_linear(profile):
        if profile.ir_drop > 0:
            parts += ["r", "a"]
        if profile.w_noise > 0:
            parts.append("v")
    return parts


def input_unit(profile: ChipProfile, input_range: float) -> float:
    """One unit of the compiled DAC's output in normalised input units: the DAC step (the graph
    carries integer DAC codes) or ``1/r`` (no quantisation: the graph carries clipped ``x``)."""
    return 2.0 / profile.in_levels if profile.in_levels > 0 else 1.0 / input_range


def adc_scale_step(profile: ChipProfile) -> float:
    """One unit of the compiled ADC's input in normalised outputs: the ADC step (the graph
    rounds to integer ADC codes) or 1 (no quantisation)."""
    return 2.0 * profile.out_bound / profile.out_levels if profile.out_levels > 0 else 1.0


def part_factors(profile: ChipProfile, input_range: float, rows: int) -> dict[str, float]:
    """Factor each stacked product's weights carry, so the graph works in integer DAC codes in
    and ADC steps out (``s``) with no elementwise rescaling. With ``u`` = :func:`input_unit`:
    ``w``: u/s; ``r``: u·ir·c3/s (the IR polynomial's cubic coefficient, see
    :func:`_tile_periphery`); ``a``: u·rows/g_ratio (the IR-drop load ``a``, DESIGN §3.3);
    ``v``: w_noise²·u²/s² (noise variance in ADC steps²)."""
    u, s = input_unit(profile, input_range), adc_scale_step(profile)
    return {"w": u / s, "r": u * profile.ir_drop * IR_DROP_POLY[2] / s, "a": u * rows / IR_DROP_G_RATIO,
            "v": profile.w_noise**2 * u * u / (s * s)}


def _dac(b: _Builder, x: str, r: float, profile: ChipProfile, prefix: str) -> str:
    """clip(x, ±r), then the DAC code round(x/(r·step)) (periphery.dac without its final ×step,
    which :func:`part_factors` moves into the weights)."""
    if is_linear(profile):
        return x  # 1/r is folded into the weights (see is_linear)
    if profile.in_clip:
        x = b.op("Clip", [x, b.const(prefix, -r), b.const(prefix, r)], prefix)
    if profile.in_levels > 0:
        x = b.op("Round", [b.op("Mul", [x, b.const(prefix, 1.0 / (r * input_unit(profile, r)))], prefix)], prefix)
    return x


def _tile_products(b: _Builder, xk: str, plan: LayerPlan, k: int, profile: ChipProfile, prefix: str,
                   conv_attrs: dict | None) -> dict[str, str]:
    """All matrix products of one tile (:func:`tile_parts`), one tensor per part.

    Conv: one Conv with the inputs stacked along channels and ``group = P`` (weights
    ``[W; R; A; V]`` stacked along outputs), split after: one call and one NCHWc layout
    conversion in and out instead of P. MatMul: one MatMul per part with its own 2-D weight
    input (onnxruntime prepacks 2-D constant weights; a stacked 3-D MatMul measured slower)."""
    parts = tile_parts(profile)
    names = plan.input_names(k)
    s = adc_scale_step(profile)
    sources = {"w": xk, "r": xk}
    if "a" in parts:
        sources["a"] = b.op("Abs", [xk], prefix)
    if "v" in parts:
        sources["v"] = b.op("Mul", [xk, xk], prefix)
    if plan.kind == "conv":
        b.graph_input(names["w"], _weight_shape(plan, k, len(parts)))
        if len(parts) == 1:
            return {"w": b.op("Conv", [xk, names["w"]], prefix, **conv_attrs)}  # type: ignore[arg-type]
        inputs = [b.op("Concat", [sources[p] for p in parts], prefix, axis=1), names["w"]]
        if "v" in parts and profile.out_noise > 0:  # + (σ_out/s)², in the Conv's bias
            bias = np.zeros(len(parts) * plan.cols, np.float32)
            bias[parts.index("v") * plan.cols:] = (profile.out_noise / s) ** 2
            inputs.append(b.const(prefix, bias))
        out = b.op("Conv", inputs, prefix, **{**conv_attrs, "group": len(parts)})  # type: ignore[dict-item]
        return dict(zip(parts, b.split(out, 1, [plan.cols] * len(parts), prefix)))
    out = {}
    for p in parts:
        b.graph_input(names[p], _weight_shape(plan, k, 1))
        out[p] = b.op("MatMul", [sources[p], names[p]], prefix)
    if "v" in parts and profile.out_noise > 0:
        out["v"] = b.op("Add", [out["v"], b.const(prefix, (profile.out_noise / s) ** 2)], prefix)
    return out


def _tile_periphery(b: _Builder, xk: str, plan: LayerPlan, k: int, profile: ChipProfile, prefix: str,
                    conv_attrs: dict | None) -> str:
    """One tile: products, IR drop, noise, ADC and scale, in ADC steps (DESIGN §3.3).

    With the factors of :func:`part_factors` in the weights, ``y = w`` is the ideal output in ADC
    steps, ``a`` the IR-drop load, ``v`` the weight-noise variance. The IR drop
    ``ir·c(a)·x̃@W = ir·c3·a·(a·(a + c2/c3) + c1/c3)·x̃@W`` (Horner form, ``ir·c3`` in ``r``),
    the noise ``sqrt(v + (σ_out/s)²)·ξ``, the ADC ``clip(round(y), ±levels/2)`` and
    ``scale = α·r·s_col·s``. Every fold is exact in real arithmetic; float rounding differs from
    the reference only in the last bits.
    """
    p = _tile_products(b, xk, plan, k, profile, prefix, conv_attrs)
    y = p["w"]
    if is_linear(profile):
        return y  # α·s_col is folded into the weights (see is_linear)
    names = plan.input_names(k)
    if "r" in p:
        c1, c2, c3 = IR_DROP_POLY
        a = p["a"]
        t = b.op("Add", [a, b.const(prefix, c2 / c3)], prefix)
        t = b.op("Add", [b.op("Mul", [t, a], prefix), b.const(prefix, c1 / c3)], prefix)
        t = b.op("Mul", [b.op("Mul", [t, a], prefix), p["r"]], prefix)
        y = b.op("Sub", [y, t], prefix)
    if profile.w_noise > 0 or profile.out_noise > 0:
        b.graph_input(names["noise"], ["n", *plan.out_shape[1:]])
        if "v" in p:
            std = b.op("Sqrt", [p["v"]], prefix)
        else:
            std = b.const(prefix, profile.out_noise / adc_scale_step(profile))
        y = b.op("Add", [y, b.op("Mul", [std, names["noise"]], prefix)], prefix)
    if profile.out_levels > 0:
        y = b.op("Round", [y], prefix)
        if profile.out_bound > 0:
            half = profile.out_levels / 2.0
            y = b.op("Clip", [y, b.const(prefix, -half), b.const(prefix, half)], prefix)
    elif profile.out_bound > 0:
        y = b.op("Clip", [y, b.const(prefix, -profile.out_bound), b.const(prefix, profile.out_bound)], prefix)
    b.graph_input(names["scale"], _scale_shape(plan))
    return b.op("Mul", [y, names["scale"]], prefix)


def _weight_shape(plan: LayerPlan, k: int, parts: int) -> list[int]:
    """Shape of a tile's weight input (Conv: ``parts`` stacked along the outputs)."""
    a, e = plan.tiles[k]
    if plan.kind == "conv":
        ca, cb = plan.tile_channels[k]  # type: ignore[index]
        return [plan.cols * parts, cb - ca, *plan.conv_shape[2:]]  # type: ignore[index]
    return [e - a, plan.cols]


def _scale_shape(plan: LayerPlan) -> list[int]:
    if plan.kind == "conv":
        return [plan.cols] + [1] * (len(plan.conv_shape) - 2)  # type: ignore[arg-type]
    return [plan.cols]


def _analog_layer(b: _Builder, xq: str, plan: LayerPlan, profile: ChipProfile, conv_attrs: dict | None) -> str:
    """The tiles of one analog layer on the DAC output ``xq``; returns Σ_k tile outputs."""
    prefix = f"chip/l{plan.index}"
    outs: list[str] = []
    for k, (a, e) in enumerate(plan.tiles):
        if len(plan.tiles) == 1:
            xk = xq
        elif plan.kind == "conv":
            ca, cb = plan.tile_channels[k]  # type: ignore[index]
            xk = b.op("Slice", [xq, b.const(prefix, [ca], np.int64), b.const(prefix, [cb], np.int64),
                                b.const(prefix, [1], np.int64)], prefix)
        else:
            xk = b.op("Slice", [xq, b.const(prefix, [a], np.int64), b.const(prefix, [e], np.int64),
                                b.const(prefix, [-1], np.int64)], prefix)
        outs.append(_tile_periphery(b, xk, plan, k, profile, prefix, conv_attrs))
    return outs[0] if len(outs) == 1 else b.op("Sum", outs, prefix)


# --------------------------------------------------------------------------- per-op rewriters
@dataclass
class _Ctx:
    model: onnx.ModelProto
    consts: dict[str, np.ndarray]
    producers: dict[str, onnx.NodeProto]
    shapes: dict[str, list[int | None]]
    profile: ChipProfile
    ranges: dict[str, float]
    builder: _Builder
    specs: list[LayerSpec] = field(default_factory=list)
    plans: list[LayerPlan] = field(default_factory=list)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _out_shape(ctx: _Ctx, node: onnx.NodeProto, channels: int | None = None) -> list[int]:
    shape = ctx.shapes.get(node.output[0])
    if not shape or any(d is None for d in shape):
        raise CompileError(
            f"model: cannot infer the output shape of node {node.name or node.op_type!r}; export with static "
            "non-batch dimensions (only the leading batch dimension may be dynamic)"
        )
    shape = [int(d) for d in shape]
    if channels is not None:
        shape[1] = channels
    return shape


def _range_for(ctx: _Ctx, weight_name: str) -> float:
    return float(ctx.ranges.get(weight_name, DEFAULT_INPUT_RANGE))


def _new_plan(ctx: _Ctx, node: onnx.NodeProto, kind: str, weight_name: str, name: str, spec_weight: np.ndarray,
              out_shape: list[int], tiles=None, **extra: Any) -> LayerPlan:
    from chipsim.mapping import tile_bounds

    tiles = tiles or tile_bounds(spec_weight.shape[0], ctx.profile.tile_rows)
    plan = LayerPlan(index=len(ctx.specs), name=name, node=node.name or node.op_type, kind=kind,
                     weight_name=weight_name, tiles=tiles, cols=spec_weight.shape[1],
                     out_shape=out_shape, **extra)
    ctx.specs.append(LayerSpec(name=name, weight=spec_weight, input_range=_range_for(ctx, weight_name),
                               tiles=tiles, meta={"node": plan.node, "kind": kind, "weight": weight_name}))
    ctx.plans.append(plan)
    return plan


def _rewrite_matmul(ctx: _Ctx, node: onnx.NodeProto) -> bool:
    w = ctx.consts.get(node.input[1])
    if w is None or w.ndim != 2:
        return False  # activation × activation (attention) or batched constant: digital
    b = ctx.builder
    name = node.name or f"matmul_{len(ctx.specs)}"
    plan = _new_plan(ctx, node, "matmul", node.input[1], name, w.astype(np.float32), _out_shape(ctx, node))
    r = ctx.specs[-1].input_range
    xq = _dac(b, node.input[0], r, ctx.profile, f"chip/l{plan.index}")
    y = _analog_layer(b, xq, plan, ctx.profile, None)
    b.op("Identity", [y], f"chip/l{plan.index}", output=node.output[0])
    return True


def _rewrite_gemm(ctx: _Ctx, node: onnx.NodeProto) -> bool:
    w = ctx.consts.get(node.input[1])
    if w is None:
        return False
    attrs = _attrs(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    weight = (w.T if attrs.get("transB", 0) else w).astype(np.float32) * np.float32(alpha)
    b = ctx.builder
    name = node.name or f"gemm_{len(ctx.specs)}"
    plan = _new_plan(ctx, node, "gemm", node.input[1], name, weight, _out_shape(ctx, node))
    prefix = f"chip/l{plan.index}"
    x = node.input[0]
    if attrs.get("transA", 0):
        x = b.op("Transpose", [x], prefix, perm=[1, 0])
    y = _analog_layer(b, _dac(b, x, ctx.specs[-1].input_range, ctx.profile, prefix), plan, ctx.profile, None)
    if len(node.input) > 2 and node.input[2]:
        c = node.input[2]
        if beta != 1.0:
            c = b.op("Mul", [c, b.const(prefix, beta)], prefix)
        y = b.op("Add", [y, c], prefix)
    b.op("Identity", [y], prefix, output=node.output[0])
    return True


def _rewrite_conv(ctx: _Ctx, node: onnx.NodeProto) -> bool:
    w = ctx.consts.get(node.input[1])
    if w is None:
        raise CompileError(
            f"model: Conv {node.name!r} has dynamic weights (computed at run time); the chip maps only constant "
            "weights. Export with constant folding (torch.onnx.export(..., do_constant_folding=True))."
        )
    attrs = _attrs(node)
    groups = int(attrs.pop("group", 1))
    cols_total, cin_g = w.shape[0], w.shape[1]
    kernel = int(np.prod(w.shape[2:]))
    if kernel > ctx.profile.tile_rows:
        raise CompileError(
            f"model: Conv {node.name!r} has a {list(w.shape[2:])} kernel ({kernel} rows per input channel), more than "
            f"tile_rows={ctx.profile.tile_rows}; raise profile.tile_rows or use a smaller kernel"
        )
    ch_max = ctx.profile.tile_rows // kernel
    n_tiles = -(-cin_g // ch_max)
    base, extra = divmod(cin_g, n_tiles)
    ch_edges = np.concatenate([[0], np.cumsum([base + (1 if i < extra else 0) for i in range(n_tiles)])])
    tile_channels = [(int(a), int(e)) for a, e in zip(ch_edges[:-1], ch_edges[1:])]
    tiles = [(a * kernel, e * kernel) for a, e in tile_channels]
    cols = cols_total // groups
    b = ctx.builder
    base_name = node.name or f"conv_{len(ctx.specs)}"
    r = _range_for(ctx, node.input[1])
    xq = _dac(b, node.input[0], r, ctx.profile, f"chip/conv_{len(ctx.specs)}")
    outs = []
    for g in range(groups):
        wg = w[g * cols:(g + 1) * cols].astype(np.float32)
        name = base_name if groups == 1 else f"{base_name}/g{g}"
        plan = _new_plan(ctx, node, "conv", node.input[1], name, wg.reshape(cols, -1).T.copy(),
                         _out_shape(ctx, node, channels=cols), tiles=tiles,
                         conv_shape=list(wg.shape), tile_channels=tile_channels)
        xg = xq
        if groups > 1:
            pre = f"chip/l{plan.index}"
            xg = b.op("Slice", [xq, b.const(pre, [g * cin_g], np.int64), b.const(pre, [(g + 1) * cin_g], np.int64),
                                b.const(pre, [1], np.int64)], pre)
        outs.append(_analog_layer(b, xg, plan, ctx.profile, attrs))
    prefix = f"chip/l{ctx.plans[-1].index}"
    y = outs[0] if groups == 1 else b.op("Concat", outs, prefix, axis=1)
    if len(node.input) > 2 and node.input[2]:
        bias_shape = [1, cols_total] + [1] * (w.ndim - 2)
        y = b.op("Add", [y, b.op("Reshape", [node.input[2], b.const(prefix, bias_shape, np.int64)], prefix)], prefix)
    b.op("Identity", [y], prefix, output=node.output[0])
    return True


REWRITERS: dict[str, Callable[[_Ctx, onnx.NodeProto], bool]] = {
    "MatMul": _rewrite_matmul,
    "Gemm": _rewrite_gemm,
    "Conv": _rewrite_conv,
}


def _check_weight_operand(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """A weight computed at run time purely from constants is a folded-away weight, not an activation."""
    if node.op_type not in REWRITERS or len(node.input) < 2 or node.input[1] in ctx.consts:
        return
    seen, stack = set(), [node.input[1]]
    while stack:
        t = stack.pop()
        if t in ctx.consts or t in seen:
            continue
        seen.add(t)
        prod = ctx.producers.get(t)
        if prod is None:  # a graph input: a genuine activation
            return
        stack.extend(i for i in prod.input if i)
    raise CompileError(
        f"model: the weight of {node.op_type} {node.name!r} is computed at run time from constants "
        f"(by {ctx.producers[node.input[1]].op_type}); export with constant folding "
        "(torch.onnx.export(..., do_constant_folding=True)) so the chip sees constant weights"
    )


# --------------------------------------------------------------------------- calibration
def calibrate_ranges(model: onnx.ModelProto, inputs: dict[str, np.ndarray], weight_to_input: dict[str, str]) -> dict[str, float]:
    """Per analog layer, the CALIBRATION_QUANTILE of |input| on user data, by weight name."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for t in set(weight_to_input.values()) - existing:
        m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, inputs)))
    out = {}
    for w, t in weight_to_input.items():
        v = np.abs(np.asarray(values[t], dtype=np.float64)).ravel()
        r = float(np.quantile(v, CALIBRATION_QUANTILE)) if v.size else 0.0
        out[w] = r if r > 0 else DEFAULT_INPUT_RANGE
    return out


# --------------------------------------------------------------------------- entry points
def compile_model(
    model_bytes: bytes, profile: ChipProfile, calibration: dict[str, np.ndarray] | np.ndarray | None = None,
    ranges: dict[str, float] | None = None,
) -> CompiledModel:
    """Find the analog layers, resolve their input ranges and rewrite the graph. ``ranges``
    (weight initializer name → r) override metadata and calibration (recompiling a chip)."""
    model = load_model(model_bytes)
    consts = _constants(model)
    init_names = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in UNMAPPABLE and any(i in consts for i in node.input[1:] if i):
            raise CompileError(
                f"model: node {node.name or node.op_type!r} is a {node.op_type} with weights the chip cannot map; "
                f"{UNMAPPABLE[node.op_type]}"
            )
        if node.op_type == "If" or node.op_type == "Loop" or node.op_type == "Scan":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH and any(n.op_type in REWRITERS for n in attr.g.node):
                    raise CompileError(f"model: weight-bearing ops inside a {node.op_type} body are not supported")
    metadata = {p.key: p.value for p in model.metadata_props}
    ranges_override, ranges = dict(ranges or {}), {}
    if META_INPUT_RANGES in metadata:
        try:
            raw = json.loads(metadata[META_INPUT_RANGES])
            ranges = {str(k): float(v) for k, v in raw.items()}
        except (ValueError, TypeError, AttributeError):
            raise CompileError(f"model: metadata {META_INPUT_RANGES!r} must be a JSON object of positive numbers") from None
        bad = [k for k, v in ranges.items() if not (np.isfinite(v) and v > 0)]
        if bad:
            raise CompileError(f"model: metadata {META_INPUT_RANGES!r} has non-positive ranges for {bad[:5]}")
    analog_nodes = [n for n in model.graph.node if n.op_type in REWRITERS and len(n.input) > 1 and n.input[1] in consts
                    and (n.op_type != "MatMul" or consts[n.input[1]].ndim == 2)]
    ranges.update(ranges_override)
    missing = {n.input[1]: n.input[0] for n in analog_nodes if n.input[1] not in ranges}
    if missing and calibration is not None:
        feeds = calibration if isinstance(calibration, dict) else {_io(model.graph.input, init_names)[0]["name"]: calibration}
        try:
            ranges.update(calibrate_ranges(model, {k: np.asarray(v, np.float32) for k, v in feeds.items()}, missing))
        except Exception as err:
            raise CompileError(f"calibration: could not run the model on the calibration data ({str(err)[:200]})") from None
    ctx = _Ctx(model=model, consts=consts, producers={o: n for n in model.graph.node for o in n.output},
               shapes=_static_shapes(model), profile=profile, ranges=ranges, builder=_Builder())
    new_nodes: list[onnx.NodeProto] = []
    digital = 0
    for node in model.graph.node:
        _check_weight_operand(ctx, node)
        rewriter = REWRITERS.get(node.op_type)
        if rewriter and rewriter(ctx, node):
            new_nodes.extend(ctx.builder.nodes)
            ctx.builder.nodes = []
        else:
            digital += node.op_type != "Constant"
            new_nodes.append(node)
    if not ctx.plans:
        raise CompileError("model: no weight-bearing MatMul, Gemm or Conv with constant weights; nothing to map")
    mapped = {p.weight_name for p in ctx.plans}
    used = {i for n in new_nodes for i in n.input}
    graph = helper.make_graph(
        new_nodes,
        model.graph.name or "agedchip",
        [i for i in model.graph.input if i.name not in init_names] + ctx.builder.inputs,
        list(model.graph.output),
        initializer=[t for t in model.graph.initializer if t.name not in mapped or t.name in used] + ctx.builder.inits,
    )
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="agedchip")
    out.ir_version = model.ir_version
    try:
        onnx.checker.check_model(out)
    except Exception as err:  # a compiler bug, not user input
        raise RuntimeError(f"compiled graph failed the ONNX checker: {err}") from err
    return CompiledModel(
        specs=ctx.specs, plans=ctx.plans, graph=out.SerializeToString(),
        inputs=_io(model.graph.input, init_names), outputs=_io(model.graph.output, set()),
        metadata=metadata, digital_nodes=digital,
    )


def program_onnx(
    model_bytes: bytes,
    profile: ChipProfile,
    seed: int,
    chip_id: str = "chip",
    calibration: dict[str, np.ndarray] | np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> ChipState:
    """Compile an ONNX model and program its analog layers onto a new chip."""
    compiled = compile_model(model_bytes, profile, calibration)
    digest = hashlib.sha256(model_bytes).hexdigest()
    chip_meta = {
        "model_digest": digest,
        "plans": compiled.plan_json(),
        "inputs": compiled.inputs,
        "outputs": compiled.outputs,
        "model_metadata": compiled.metadata,
        "digital_nodes": compiled.digital_nodes,
        "graph_format": GRAPH_FORMAT,
        **(meta or {}),
    }
    return program(compiled.specs, profile, seed, chip_id=chip_id, meta=chip_meta,
                   attachments={"model.onnx": bytes(model_bytes), "compiled.onnx": compiled.graph}, progress=progress)
