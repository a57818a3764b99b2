"""A dry run of the compiler: which nodes of a model go analog (layers, tiles, devices), which
stay digital and why, and what would be refused — without programming anything.

``POST /program`` with ``dry_run=true`` and ``python -m chipsim.inspect model.onnx`` only print
the :class:`InspectReport` this module builds. The report runs the compiler's own passes (so it
cannot disagree with a real programming) and collects every refusal it can find instead of
stopping at the first: ops the chip cannot map, weights computed at run time, the node
onnxruntime refuses (onnxruntime names one node per session build), and any other compile error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx

from chipsim.compiler.bounds import AllocationLimits, refuse_sparse
from chipsim.compiler.calibration import Calibration
from chipsim.compiler.driver import check_weight_operands, compile_model, maps_node, unmappable_nodes
from chipsim.compiler.float_types import compute_in_fp32
from chipsim.compiler.loader import ONNX_DOMAINS, constants, io_specs, load_model
from chipsim.compiler.plan import CompileError
from chipsim.compiler.rewriters import rewriter_of
from chipsim.compiler.runnable import check_runnable
from chipsim.profiles import ChipProfile

#: Devices per weight: the differential pair G+/G− (DESIGN §3.1).
DEVICES_PER_WEIGHT = 2


@dataclass(frozen=True)
class AnalogNode:
    """A node mapped onto the chip: the analog layers it reads, and the tiles and devices of those
    it holds. A weight read by several nodes is one layer, held (programmed, counted) by the
    first node that reads it and read by the others, which add no devices."""

    node: str
    op: str
    weight: str  # the initializer of the first layer it reads
    weight_shape: list[int]
    layers: int  # layers it holds (its first reader); tiles, weights and devices are theirs
    tiles: int
    weights: int
    devices: int
    input_range: float  # DAC input range r of the first layer it reads, input units
    # A RangeSource value of that layer; "not compiled" when the model is refused (no layer counts then).
    input_range_source: str
    reads: list[str] = field(default_factory=list)  # every layer it reads, its own and shared ones
    shared_from: list[str] = field(default_factory=list)  # the nodes holding the shared layers it reads


@dataclass(frozen=True)
class DigitalNode:
    """A node left to onnxruntime, with the reason."""

    node: str
    op: str
    domain: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """Something that stops the model from being programmed; ``node`` is None for the whole model."""

    node: str | None
    op: str | None
    reason: str


@dataclass
class InspectReport:
    """What programming the model on a profile would do. ``programmable`` iff nothing is refused."""

    profile: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    analog: list[AnalogNode] = field(default_factory=list)
    digital: list[DigitalNode] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    uncalibrated_layers: list[str] = field(default_factory=list)

    @property
    def programmable(self) -> bool:
        return not self.refused

    def totals(self) -> dict[str, int]:
        return {
            "analog_nodes": len(self.analog),
            "analog_layers": sum(a.layers for a in self.analog),
            "tiles": sum(a.tiles for a in self.analog),
            "weights": sum(a.weights for a in self.analog),
            "devices": sum(a.devices for a in self.analog),
            "digital_nodes": len(self.digital),
            "refused": len(self.refused),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "programmable": self.programmable,
            "profile": self.profile,
            "totals": self.totals(),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "analog": [asdict(a) for a in self.analog],
            "digital": [asdict(d) for d in self.digital],
            "refused": [asdict(r) for r in self.refused],
            "uncalibrated_layers": self.uncalibrated_layers,
        }

    def format_text(self) -> str:
        t = self.totals()
        head = "programmable" if self.programmable else f"REFUSED ({t['refused']} reason(s))"
        lines = [
            f"{head} on profile {self.profile!r}: {t['analog_nodes']} analog nodes ({t['analog_layers']} layers, "
            f"{t['tiles']} tiles, {t['weights']:,} weights, {t['devices']:,} devices); "
            f"{t['digital_nodes']} digital nodes"
        ]
        if self.analog:
            lines.append("analog:")
            for a in self.analog:
                shared = f"; reads the layer(s) of {', '.join(repr(n) for n in a.shared_from)}" if a.shared_from else ""
                lines.append(
                    f"  {a.node}  {a.op}  weight {a.weight!r} {'x'.join(map(str, a.weight_shape))}  "
                    f"{a.layers} layer(s), {a.tiles} tile(s), {a.devices:,} devices{shared}  "
                    f"r={a.input_range:g} ({a.input_range_source})"
                )
        if self.digital:
            lines.append("digital:")
            lines += [f"  {d.node}  {d.domain + '.' if d.domain else ''}{d.op}  {d.reason}" for d in self.digital]
        if self.refused:
            lines.append("refused:")
            lines += [f"  {r.node or '(model)'}  {r.op or ''}  {r.reason}" for r in self.refused]
        if self.uncalibrated_layers:
            lines.append(f"uncalibrated (input range 1.0): {', '.join(self.uncalibrated_layers)}")
        return "\n".join(lines)


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.op_type


def digital_reason(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> str:
    """Why a node that is not mapped stays digital."""
    if node.domain not in ONNX_DOMAINS:
        return f"an {node.domain} op: runs digitally in onnxruntime"
    rewriter = rewriter_of(node)
    if rewriter is not None:
        weights = rewriter.weight_inputs(node)
        if not any(w in consts for w in weights):
            return "no constant weight: both operands are activations (e.g. attention's QKᵀ), computed digitally"
        shapes = [list(consts[w].shape) for w in weights if w in consts]
        return f"its constant operand {shapes[0]} is not a matrix the crossbar holds; computed digitally"
    tables = [n for n in node.input[:1] if n in consts and np.ndim(consts[n]) >= 2]
    if node.op_type == "Gather" and tables:
        return "a table lookup (embedding): a memory read, not a matrix-vector product"
    return "no weight matrix (elementwise, normalisation, shape or data movement): runs digitally"


def _collect_refusals(model: onnx.ModelProto, report: InspectReport) -> None:
    consts = constants(model)
    for node, message in unmappable_nodes(model, consts):
        report.refused.append(Refusal(_label(node), node.op_type, message))
    ctx = SimpleNamespace(consts=consts, producers={o: n for n in model.graph.node for o in n.output})
    for node in model.graph.node:
        try:
            check_weight_operands(ctx, node)  # type: ignore[arg-type]
        except CompileError as err:
            report.refused.append(Refusal(_label(node), node.op_type, str(err)))
    try:
        check_runnable(model, lambda node: maps_node(node, consts))
    except CompileError as err:
        named = [n for n in model.graph.node if f"node {n.name or n.op_type!r} " in str(err)]
        report.refused.append(
            Refusal(_label(named[0]) if named else None, named[0].op_type if named else None, str(err))
        )


def inspect_model(
    model_bytes: bytes,
    profile: ChipProfile,
    profile_name: str = "custom",
    calibration: Calibration | None = None,
    eval_inputs: Calibration | None = None,
    limits: AllocationLimits | None = None,
) -> InspectReport:
    """The dry-run report of programming ``model_bytes`` on ``profile`` (see the module docstring);
    ``limits``: what the model may allocate, checked before calibration runs it (a model over
    them is refused in the report)."""
    report = InspectReport(profile=profile_name)
    try:
        model = load_model(model_bytes)
        refuse_sparse(model)
    except CompileError as err:
        report.refused.append(Refusal(None, None, str(err)))
        return report
    init_names = {t.name for t in model.graph.initializer}
    report.inputs = io_specs(model.graph.input, init_names)
    report.outputs = io_specs(model.graph.output, set())
    prepared = compute_in_fp32(model, maps_node)
    _collect_refusals(prepared, report)
    specs_of: list = []
    readers: list[list[str]] = []
    if not report.refused:
        try:
            compiled = compile_model(model_bytes, profile, calibration, eval_inputs=eval_inputs, limits=limits)
        except CompileError as err:
            report.refused.append(Refusal(None, None, str(err)))
        else:
            specs_of, readers = compiled.specs, compiled.layer_readers
            report.uncalibrated_layers = compiled.uncalibrated_layers()
    consts = constants(prepared)
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        if not maps_node(node, consts):
            report.digital.append(DigitalNode(_label(node), node.op_type, node.domain, digital_reason(node, consts)))
            continue
        # The layers it reads (the compiler's record); it holds those it was the first to read.
        label = _label(node)
        read = [i for i, names in enumerate(readers) if label in names]
        held = [specs_of[i] for i in read if readers[i][0] == label]
        first = specs_of[read[0]] if read else None
        rewriter = rewriter_of(node)
        w = first.meta["weight"] if first else next(iter(rewriter.analog_weights(node, consts)))  # type: ignore[union-attr]
        weights = sum(int(s.weight.size) for s in held)
        report.analog.append(
            AnalogNode(
                node=label,
                op=node.op_type,
                weight=w,
                weight_shape=[int(d) for d in np.shape(consts[w])],
                layers=len(held),
                tiles=sum(len(s.tiles) for s in held),
                weights=weights,
                devices=DEVICES_PER_WEIGHT * weights,
                input_range=float(first.input_range) if first else 0.0,
                input_range_source=str(first.meta.get("input_range_source", "default")) if first else "not compiled",
                reads=[specs_of[i].name for i in read],
                shared_from=list(dict.fromkeys(readers[i][0] for i in read if readers[i][0] != label)),
            )
        )
    return report
