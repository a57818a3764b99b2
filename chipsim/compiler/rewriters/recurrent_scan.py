"""The lowering of a recurrent op's steps as one ``Scan`` (a static sequence longer than
``UNROLL_MAX_STEPS``, or a dynamic one; :mod:`chipsim.compiler.rewriters.recurrent` describes the
whole lowering): the state carried, the W read's output, the masks and R's per-step noise
scanned, R's weights read from the outer graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import onnx
from onnx import helper

from chipsim.compiler.rewriters.recurrent_parts import Direction, Job, zero_state
from chipsim.modes import LayerKind


def drop_noise_reshape(nodes: list[onnx.NodeProto], noise: str, step: str) -> list[onnx.NodeProto]:
    """``nodes`` with ``Reshape(noise, Shape(y))`` removed (its readers read ``step``) and the
    ``Shape`` it used too when nothing else reads it."""
    reshape = next(n for n in nodes if n.op_type == "Reshape" and n.input[0] == noise)
    shape_of = reshape.input[1]
    rest = [n for n in nodes if n is not reshape]
    for nd in rest:
        nd.input[:] = [step if name == reshape.output[0] else name for name in nd.input]
    if not any(shape_of in nd.input for nd in rest):
        rest = [n for n in rest if shape_of not in n.output]
    return rest


def layer_index(input_name: str) -> int:
    """The layer of a tile input ``chip/l{i}/…``."""
    return int(input_name.split("/")[1][1:])


class ScanLowering(ABC):
    """The Scan lowering of :class:`~chipsim.compiler.rewriters.recurrent.RecurrentRewriter`,
    which gives the op's kind, gates per hidden unit, one time step and the cell."""

    kind: LayerKind
    gates: int

    @abstractmethod
    def step(self, job: Job, dr: Direction, xt: str, h: str | None, c: str | None, m: str | None): ...

    @abstractmethod
    def cell(self, job: Job, dr: Direction, xt: str, h: str | None, c: str | None) -> tuple[str, str | None]: ...

    def scan_direction(self, job: Job, dr: Direction, x: str, h0: str | None, c0: str | None, masks):
        """The steps as one Scan: state (h[, c]) carried, xw, the masks and R's noise scanned
        (in reverse for the reverse direction); R's weights are read from the outer graph. A first
        step with a zero state (no R read) runs before the Scan, as unrolled."""
        o, b = job.o, job.ctx.builder
        lstm = self.kind == LayerKind.LSTM
        cols = self.gates * job.hidden
        xw, first_y = dr.xw, None
        job.scan_len = job.steps
        if h0 is None:
            first = o.const(-1 if dr.reverse else 0, np.int64)
            m0 = None if masks is None else o("Gather", masks, first, axis=0)
            first_y, h0, c0 = self.step(job, dr, o("Gather", xw, first, axis=1), None, c0, m0)
            rest = ([0], [-1]) if dr.reverse else ([1], [np.iinfo(np.int64).max])
            xw = b.slice(xw, *rest, [1], o.p)
            masks = None if masks is None else b.slice(masks, *rest, [0], o.p)
            job.scan_len = job.steps - 1 if isinstance(job.steps, int) else f"{job.steps}-1"
        if lstm and c0 is None:
            c0 = zero_state(o, x, job.hidden)
        saved, n_inputs, n_inits = b.take_nodes(), len(b.inputs), len(b.inits)
        f = onnx.TensorProto.FLOAT
        h_in, x_t = b.name(o.p + "/h_in"), b.name(o.p + "/x_t")
        c_in = b.name(o.p + "/c_in") if lstm else None
        m_t = b.name(o.p + "/m_t") if masks is not None else None
        h_new, c_new = self.cell(job, dr, x_t, h_in, c_in)
        if m_t is not None:
            zero = o.const(0.0)
            y_t = o("Where", m_t, h_new, zero)
            h_out = o("Where", m_t, h_new, h_in)
            c_out = o("Where", m_t, c_new, c_in) if lstm else None
        else:
            y_t, h_out = o("Identity", h_new), o("Identity", h_new)
            c_out = o("Identity", c_new) if lstm else None
        # The body's own constants (split sizes, slice bounds, periphery factors) as Constant
        # nodes inside it: ONNX shape inference reads no outer-scope initializer's values, and
        # without the split sizes every gate's shape would be unknown.
        body_nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in b.inits[n_inits:]]
        body_nodes += b.take_nodes()
        del b.inits[n_inits:]
        b.nodes = saved
        body_nodes, noise_outer, noise_body = self.scan_noise(job, body_nodes, b.inputs[n_inputs:], xw)
        state_in = [helper.make_tensor_value_info(h_in, f, [None, job.hidden])]
        state_out = [helper.make_tensor_value_info(h_out, f, [None, job.hidden])]
        if lstm:
            state_in.append(helper.make_tensor_value_info(c_in, f, [None, job.hidden]))
            state_out.append(helper.make_tensor_value_info(c_out, f, [None, job.hidden]))
        scan_in = [helper.make_tensor_value_info(x_t, f, [None, cols])]
        if m_t is not None:
            scan_in.append(helper.make_tensor_value_info(m_t, onnx.TensorProto.BOOL, [None, 1]))
        body = helper.make_graph(
            body_nodes,
            b.name(o.p + "/body"),
            state_in + scan_in + noise_body,
            state_out + [helper.make_tensor_value_info(y_t, f, [None, job.hidden])],
        )
        outer_scan = [xw] + ([masks] if masks is not None else []) + noise_outer
        axes = [1] + ([0] if masks is not None else []) + [1] * len(noise_outer)
        outs = [b.name(o.p + "/h_T")] + ([b.name(o.p + "/c_T")] if lstm else []) + [b.name(o.p + "/Y")]
        rev = int(dr.reverse)
        b.nodes.append(
            helper.make_node(
                "Scan",
                [h0] + ([c0] if lstm else []) + outer_scan,
                outs,
                name=b.name(o.p + "/n"),
                body=body,
                num_scan_inputs=len(outer_scan),
                scan_input_axes=axes,
                scan_input_directions=[rev] * len(outer_scan),
                scan_output_axes=[1 if job.layout else 0],
                scan_output_directions=[rev],
            )
        )
        y = o("Unsqueeze", outs[-1], o.const([2 if job.layout else 1], np.int64))
        if first_y is not None:
            axes = [1, 2] if job.layout else [0, 1]
            y0 = o("Unsqueeze", first_y, o.const(axes, np.int64))
            y = o("Concat", *([y, y0] if dr.reverse else [y0, y]), axis=axes[0])
        return y, outs[0], outs[1] if lstm else None

    def scan_noise(
        self, job: Job, body_nodes: list[onnx.NodeProto], new_inputs: list[onnx.ValueInfoProto], xw: str
    ) -> tuple[list[onnx.NodeProto], list[str], list[onnx.ValueInfoProto]]:
        """R's noise inputs (among the graph inputs the body added) as scanned inputs: returns the body
        nodes without their noise reshapes, the outer [N, T', cols] tensors and the body's inputs."""
        o, b = job.o, job.ctx.builder
        noise_outer, noise_body = [], []
        likes: dict[int, str] = {}  # R's columns → an outer tensor shaped [N, T', cols]
        for vi in new_inputs:
            if not vi.name.endswith("/noise"):
                continue  # weights and scales: outer-scope inputs of the body
            # The graph input stays flat (one draw per element, see lowering.emit_noise_like); the
            # outer graph reshapes it to [N, T', cols] like the steps' W outputs, where NoiseShapes
            # finds it, and the Scan hands each step its [N, cols] slice, which the body uses as
            # is: its own Reshape(noise, Shape(y)) goes (ONNX shape inference does not propagate
            # Shape values inside a subgraph, so it would leave every later dimension unknown).
            step = vi.name + "/step"
            body_nodes = drop_noise_reshape(body_nodes, vi.name, step)
            cols = job.ctx.plans[layer_index(vi.name)].cols
            if cols not in likes:
                likes[cols] = xw if cols == self.gates * job.hidden else b.slice(xw, [0], [cols], [2], o.p)
            noise_body.append(helper.make_tensor_value_info(step, onnx.TensorProto.FLOAT, [None, cols]))
            noise_outer.append(b.op("Reshape", [vi.name, b.op("Shape", [likes[cols]], o.p)], o.p))
        return body_nodes, noise_outer, noise_body
