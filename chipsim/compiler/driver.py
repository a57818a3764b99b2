"""The compiler's entry points: ONNX model → compiled graph + layer specs → programmed chip.

``compile_model`` runs the passes in order: load and check the model (:mod:`.loader`), refuse
what the chip cannot map, resolve the DAC input ranges (:mod:`.calibration`), hand each
weight-bearing node to its rewriter (:mod:`.rewriters`), which lowers it to the periphery's ONNX
ops (:mod:`.lowering`), and assemble and check the new graph. Every other node is kept as is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import onnx
from onnx import helper

from chipsim import heap
from chipsim.caws import caws_specs
from chipsim.compiler.bounds import AllocationLimits, check_allocations, refuse_sparse
from chipsim.compiler.calibration import Calibration, RangePlan, finish_ranges, plan_ranges
from chipsim.compiler.float_types import compute_in_fp32
from chipsim.compiler.folding import Folds, find_folds
from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.loader import (
    MAX_MODEL_BYTES,
    ONNX_DOMAINS,
    constants,
    io_specs,
    load_model,
    probe_shapes,
    static_shapes,
)
from chipsim.compiler.model_session import ModelSession
from chipsim.compiler.plan import GRAPH_FORMAT, CompiledModel, CompileError
from chipsim.compiler.rewriters import REWRITERS, UNMAPPABLE, RewriteContext, rewriter_of
from chipsim.compiler.runnable import check_runnable
from chipsim.modes import ColumnScaling, GraphLowering, RangeSource
from chipsim.profiles import ChipProfile
from chipsim.programming import program
from chipsim.state import ChipState

#: Control-flow ops: a weight-bearing op inside their bodies is refused.
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")


def unmappable_nodes(model: onnx.ModelProto, consts: dict[str, Any]) -> Iterator[tuple[onnx.NodeProto, str]]:
    """Each weight-bearing op no rewriter maps, or control-flow node with one in its body, and why."""
    for node in model.graph.node:
        if node.domain in ONNX_DOMAINS and node.op_type in UNMAPPABLE and any(i in consts for i in node.input[1:] if i):
            yield (
                node,
                (
                    f"model: node {node.name or node.op_type!r} is a {node.op_type} with weights the chip cannot "
                    f"map; {UNMAPPABLE[node.op_type]}"
                ),
            )
        if node.op_type in CONTROL_FLOW_OPS:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH and any(n.op_type in REWRITERS for n in attr.g.node):
                    yield (
                        node,
                        (
                            f"model: node {node.name or node.op_type!r}: weight-bearing ops inside a "
                            f"{node.op_type} body are not supported"
                        ),
                    )


def refuse_unmappable(model: onnx.ModelProto, consts: dict[str, Any]) -> None:
    """Raise CompileError for a weight-bearing op no rewriter maps, or one inside a control-flow body."""
    for _, message in unmappable_nodes(model, consts):
        raise CompileError(message)


def check_weight_operands(ctx: RewriteContext, node: onnx.NodeProto) -> None:
    """A weight computed at run time purely from constants is a folded-away weight, not an activation."""
    rewriter = rewriter_of(node)
    if rewriter is None:
        return
    for weight in rewriter.weight_inputs(node):
        if weight in ctx.consts:
            continue
        seen, stack = set(), [weight]
        while stack:
            t = stack.pop()
            if t in ctx.consts or t in seen:
                continue
            seen.add(t)
            prod = ctx.producers.get(t)
            if prod is None:  # a graph input: a genuine activation
                break
            stack.extend(i for i in prod.input if i)
        else:
            raise CompileError(
                f"model: the weight of {node.op_type} {node.name!r} is computed at run time from constants "
                f"(by {ctx.producers[weight].op_type}); export with constant folding "
                "(torch.onnx.export(..., do_constant_folding=True)) so the chip sees constant weights"
            )


def maps_node(node: onnx.NodeProto, consts: dict[str, Any]) -> bool:
    """True if a rewriter will put (some of) the node's weights on the chip."""
    rewriter = rewriter_of(node)
    return rewriter is not None and bool(rewriter.analog_weights(node, consts))


def analog_weight_inputs(model: onnx.ModelProto, consts: dict[str, Any]) -> dict[str, list[str]]:
    """Every weight the rewriters will map → the tensors it multiplies (one per node reading
    it), in node order."""
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        rewriter = rewriter_of(node)
        if rewriter is not None:
            for w, t in rewriter.analog_weights(node, consts).items():
                if t not in out.setdefault(w, []):
                    out[w].append(t)
    return out


#: Ops whose constant operand is a weight matrix or table; left digital, they are reported.
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Einsum", "LSTM", "GRU", "RNN")


def digital_parameters(
    model: onnx.ModelProto, consts: dict[str, Any], ctx: RewriteContext, mapped_nodes: set[int]
) -> tuple[int, list[dict[str, Any]]]:
    """(float constants of the model not held by the chip — biases, norms, embeddings, weights of
    ops left digital — in elements; the weight-bearing nodes left digital, with their weights)."""
    on_chip = {p.weight_name for p in ctx.plans}
    floats = {n: v for n, v in consts.items() if getattr(v, "dtype", None) is not None and v.dtype.kind == "f"}
    count = sum(int(v.size) for n, v in floats.items() if n not in on_chip)
    nodes = []
    for i, node in enumerate(model.graph.node):
        if i in mapped_nodes or node.op_type not in WEIGHT_OPS:
            continue
        weights = [n for n in node.input if n in floats and floats[n].ndim >= 2 and n not in on_chip]
        if weights:
            nodes.append(
                {
                    "node": node.name or node.op_type,
                    "op": node.op_type,
                    "parameters": sum(int(floats[n].size) for n in weights),
                }
            )
    return count, nodes


def rewrite_nodes(ctx: RewriteContext) -> tuple[list[onnx.NodeProto], int, set[int]]:
    """The new node list (each mapped node replaced by its lowering), the count of digital
    nodes and the positions of the mapped ones."""
    new_nodes: list[onnx.NodeProto] = []
    digital = 0
    mapped: set[int] = set()
    for i, node in enumerate(ctx.model.graph.node):
        check_weight_operands(ctx, node)
        rewriter = rewriter_of(node)
        if rewriter and rewriter.rewrite(ctx, node):
            new_nodes.extend(ctx.builder.take_nodes())
            mapped.add(i)
        else:
            digital += node.op_type != "Constant"
            new_nodes.append(ctx.folds.rewrite_digital(node, lambda v: ctx.builder.const("chip/fold", v)))
    return new_nodes, digital, mapped


def assemble(ctx: RewriteContext, new_nodes: list[onnx.NodeProto]) -> bytes:
    """The compiled model: the new nodes, the original inputs plus the chip's graph inputs, the
    original initializers the mapped layers no longer use dropped; checked by the ONNX checker."""
    model = ctx.model
    init_names = {t.name for t in model.graph.initializer}
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
    return out.SerializeToString()


def check_runnable_and_bounded(
    model: onnx.ModelProto, consts: dict[str, Any], limits: AllocationLimits | None, shared: bool
) -> None:
    """Refuse a model onnxruntime cannot run (naming the node) or over ``limits``. ``shared``: a
    :class:`ModelSession` will run the model after the bounds, and its build is the runnable
    check (one session of the model, not two); the check runs here only when the bounds refuse
    the model, so that a node onnxruntime cannot run is still named first."""

    def replaced(node: onnx.NodeProto) -> bool:
        return maps_node(node, consts)

    if not shared:
        # A session build without optimisations allocates no intermediate: safe before the
        # bounds, whose trial run needs a model onnxruntime runs (and would blame no node).
        check_runnable(model, replaced)
        check_allocations(model, limits)
        return
    try:
        check_allocations(model, limits)
    except CompileError:
        check_runnable(model, replaced)
        raise


def ranges_and_shapes(
    model: onnx.ModelProto, consts: dict[str, Any], plan: RangePlan
) -> tuple[dict[str, float], dict[str, RangeSource], dict[str, list[int | None]]]:
    """Input ranges and their sources (``plan`` finished: calibration runs the model), and the
    static shapes, with the outputs of mapped nodes that shape inference leaves without a rank
    measured by a run on zeros. Both runs share one :class:`ModelSession`, built once."""
    shapes = static_shapes(model)
    rankless = [
        n.output[0]
        for n in model.graph.node
        if n.output and n.output[0] and maps_node(n, consts) and not shapes.get(n.output[0])
    ]
    session = None
    if plan.tensors:  # built by calibration's run: its build is the runnable check
        session = ModelSession(model, [*plan.tensors, *rankless], lambda node: maps_node(node, consts))
    ranges, sources = finish_ranges(model, plan, session)
    if rankless:
        shapes.update(probe_shapes(model, rankless, session))
    if session is not None:
        session.close()
    return ranges, sources, shapes


def widened_within_limit(widened: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``widened`` (an fp16/bf16 model computing in float32), refused when its float32 weights
    take it over protobuf's limit: the passes after this one serialise it."""
    if widened is not original and (size := widened.ByteSize()) > MAX_MODEL_BYTES:
        raise CompileError(
            f"model: with its fp16/bf16 weights widened to float32 it is {size} bytes, more than "
            f"protobuf's limit of {MAX_MODEL_BYTES} bytes on one ONNX model"
        )
    return widened


def compile_model(
    model_bytes: bytes,
    profile: ChipProfile,
    calibration: Calibration | None = None,
    ranges: dict[str, float] | None = None,
    eval_inputs: Calibration | None = None,
    limits: AllocationLimits | None = None,
    lowering: GraphLowering | str = GraphLowering.LEAN,
    free_products: bool = False,
) -> CompiledModel:
    """Find the analog layers, resolve their input ranges and rewrite the graph. ``ranges``
    (weight initializer name → r) override metadata and calibration (recompiling a chip);
    ``eval_inputs`` (the model's eval set) calibrate when ``calibration`` is None. Each layer's
    spec records where its range came from (``meta["input_range_source"]``). ``limits`` bound
    what the model may allocate (:mod:`.bounds`), checked before anything runs it (calibration
    included), on the model as the chip path runs it (fp16/bf16 widened to fp32). ``lowering``
    chooses how the periphery is written (:class:`~chipsim.modes.GraphLowering`, both exact);
    ``free_products`` is for benchmarks only (see :mod:`.lean`)."""
    lowering = GraphLowering(lowering)
    lean = lowering == GraphLowering.LEAN
    if free_products and not lean:
        raise ValueError("free_products: only with the lean lowering")
    model = load_model(model_bytes)
    refuse_sparse(model)  # before anything reads its initializers
    model = widened_within_limit(compute_in_fp32(model, maps_node), model)
    consts = constants(model)
    init_names = {t.name for t in model.graph.initializer}
    refuse_unmappable(model, consts)
    metadata = {p.key: p.value for p in model.metadata_props}
    plan = plan_ranges(metadata, analog_weight_inputs(model, consts), calibration, ranges, eval_inputs)
    check_runnable_and_bounded(model, consts, limits, shared=bool(plan.tensors))
    ranges, sources, shapes = ranges_and_shapes(model, consts, plan)
    ctx = RewriteContext(
        model=model,
        consts=consts,
        producers={o: n for n in model.graph.node for o in n.output},
        shapes=shapes,
        profile=profile,
        ranges=ranges,
        builder=GraphBuilder(lean=lean, free_products=free_products),
        folds=find_folds(model, consts, profile, ranges) if lean else Folds(),
    )
    new_nodes, digital, mapped = rewrite_nodes(ctx)
    if not ctx.plans:
        raise CompileError(
            "model: no weight-bearing MatMul, Gemm, Conv, ConvTranspose or recurrent node with "
            "constant weights; nothing to map"
        )
    n_params, weight_nodes = digital_parameters(model, consts, ctx, mapped)
    for spec in ctx.specs:
        spec.meta["input_range_source"] = str(sources.get(spec.meta["weight"], RangeSource.DEFAULT))
    return CompiledModel(
        specs=ctx.specs,
        plans=ctx.plans,
        graph=assemble(ctx, new_nodes),
        inputs=io_specs(model.graph.input, init_names),
        outputs=io_specs(model.graph.output, set()),
        metadata=metadata,
        digital_nodes=digital,
        digital_parameters=n_params,
        digital_weight_nodes=weight_nodes,
        layer_readers=[ctx.readers.get(i, []) for i in range(len(ctx.plans))],
        lowering=lowering.value,
    )


def program_onnx(
    model_bytes: bytes,
    profile: ChipProfile,
    seed: int,
    chip_id: str = "chip",
    calibration: Calibration | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
    eval_inputs: Calibration | None = None,
    limits: AllocationLimits | None = None,
    lowering: GraphLowering | str = GraphLowering.LEAN,
    column_scaling: ColumnScaling | str = ColumnScaling.MAX,
) -> ChipState:
    """Compile an ONNX model and program its analog layers onto a new chip (``calibration``,
    ``eval_inputs``, ``limits`` and ``lowering``: see :func:`compile_model`; ``column_scaling``: how
    each column's scale is chosen, :class:`~chipsim.modes.ColumnScaling`)."""
    scaling = ColumnScaling(column_scaling)
    compiled = compile_model(
        model_bytes, profile, calibration, eval_inputs=eval_inputs, limits=limits, lowering=lowering
    )
    heap.trim()  # the parsed model's memory, before the chip's arrays are allocated
    specs = caws_specs(compiled.specs, profile) if scaling is ColumnScaling.CAWS else compiled.specs
    digest = hashlib.sha256(model_bytes).hexdigest()
    chip_meta = {
        "model_digest": digest,
        "plans": compiled.plan_json(),
        "inputs": compiled.inputs,
        "outputs": compiled.outputs,
        "model_metadata": compiled.metadata,
        "digital_nodes": compiled.digital_nodes,
        "digital_parameters": compiled.digital_parameters,
        "digital_weight_nodes": compiled.digital_weight_nodes,
        "uncalibrated_layers": compiled.uncalibrated_layers(),
        "graph_format": GRAPH_FORMAT,
        "graph_lowering": compiled.lowering,
        "column_scaling": str(scaling),
        **(meta or {}),
    }
    return program(
        specs,
        profile,
        seed,
        chip_id=chip_id,
        meta=chip_meta,
        attachments={"model.onnx": bytes(model_bytes), "compiled.onnx": compiled.graph},
        progress=progress,
    )
