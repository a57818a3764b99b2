"""``LSTM``, ``GRU`` and ``RNN`` (ONNX ops, any direction, initial states, sequence lengths,
peepholes, clip, activations): their weights go onto the chip, the recurrence stays digital.

Per direction d the input weights ``W[d]`` and the recurrent weights ``R[d]`` are analog layers
(kinds ``lstm``/``gru``/``rnn``; a GRU with ``linear_before_reset = 0`` reads ``R``'s z,r rows and
its h rows with different inputs, so they are two layers of disjoint devices). ``W[d]`` is read
once on the whole sequence (batch-first ``[N, T, I]``: one MVM per step and sample, each output
with its own noise); ``R[d]`` is read once per time step on the hidden state, each read with its
own per-MVM noise inputs (one layer, several reads: :meth:`RewriteContext.new_plan`). A read of
a state that is 0 (the first step without ``initial_h``) is skipped, as a chip would. Biases,
peepholes, gates, activations, masking by ``sequence_lens`` and the state updates are digital.

A static sequence of at most :data:`UNROLL_MAX_STEPS` steps is unrolled (one set of nodes per
step); a longer or dynamic one runs as one ``Scan`` (the state carried, the W read's output, the
masks and R's per-step noise scanned; R's weights read from the outer graph), a first step whose
state is 0 running before it, without an R read. In a Scan, each of R's tiles has one flat noise
input reshaped in the outer graph to ``Shape([N, T', cols])`` (a tensor of the W read's output of
those steps, sliced to R's columns when it has fewer) and scanned along the steps: the runtime
infers that shape per request (:class:`chipsim.mvm_noise.NoiseShapes`), so every step of every
sample gets its own draws, and a dynamic sequence length runs with per-MVM noise too.

Modules: this one holds the shared lowering (:class:`RecurrentRewriter`: weights, biases, masks,
unrolled steps, outputs); :mod:`~chipsim.compiler.rewriters.recurrent_scan` the Scan,
:mod:`~chipsim.compiler.rewriters.recurrent_cells` the LSTM, GRU and RNN cells (the registered
rewriters), :mod:`~chipsim.compiler.rewriters.recurrent_parts` activations, the node shorthand
and the lowering's state.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from chipsim.compiler.lowering import emit_analog_layer, emit_dac
from chipsim.compiler.plan import CompileError
from chipsim.compiler.rewriters.recurrent_parts import Direction, Job, Ops, parse_activations, static_dim
from chipsim.compiler.rewriters.recurrent_scan import ScanLowering
from chipsim.compiler.rewriters.registry import OpRewriter, RewriteContext, node_attrs
from chipsim.modes import LayerKind

#: Longest static sequence unrolled; longer and dynamic ones run as a Scan. Measured with
#: bench/compiler_ops.py (LSTM 28→128, batch 64, pcm, medians of interleaved runs, README): at 28
#: steps the unrolled graph is 3.0 % [2.8, 3.4] faster per inference; at 112 steps it is not
#: (Scan/unrolled 0.99 [0.94, 1.05]), while its node count and the session build of every new age
#: grow with the length (584 ms against 222 ms at 112 steps).
UNROLL_MAX_STEPS = 32
DIRECTIONS = {"forward": ["forward"], "reverse": ["reverse"], "bidirectional": ["forward", "reverse"]}


class RecurrentRewriter(ScanLowering, OpRewriter):
    """Shared lowering of the three recurrent ops; subclasses give the cell."""

    kind: LayerKind
    gates: int  # G: rows of W per hidden unit
    default_acts: list[str]

    def weight_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input[1:3] if i]

    def analog_weights(self, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> dict[str, str]:
        out = {}
        if node.input[1] in consts:
            out[node.input[1]] = node.input[0]
        # R multiplies the hidden states: all of them are in Y (output 0) when the model names it.
        if len(node.input) > 2 and node.input[2] in consts and node.output and node.output[0]:
            out[node.input[2]] = node.output[0]
        return out

    # ------------------------------------------------------------------ helpers
    def vector(self, ctx: RewriteContext, o: Ops, name: str, d: int, sizes: list[int]) -> list[str] | None:
        """``tensor[d]`` split into ``sizes`` (biases, peepholes), as constants or ops."""
        if not name:
            return None
        const = ctx.consts.get(name)
        if const is not None:
            row = np.asarray(const[d], np.float32)
            edges = np.cumsum([0, *sizes])
            return [o.const(row[a:e]) for a, e in zip(edges[:-1], edges[1:])]
        row = o("Gather", name, o.const(d, np.int64), axis=0)
        return o.b.split(row, 0, sizes, o.p)

    def state(self, o: Ops, name: str, d: int, layout: int) -> str | None:
        """``initial_h``/``initial_c`` of direction d as [N, H], or None (zeros)."""
        if not name:
            return None
        return o("Gather", name, o.const(d, np.int64), axis=1 if layout else 0)

    def r_read(self, job: Job, h: str, matrix: np.ndarray, name: str, layout_key: str) -> str:
        """One read of a recurrent weight on the state ``h`` [N, H] → [N, cols]: a new read of the
        same layer at every unrolled step; in a Scan body, the layer's one read, whose noise input
        holds every step ([N, T, cols], scanned)."""
        ctx = job.ctx
        cols = matrix.shape[1]
        out_shape = [1, job.scan_len if isinstance(job.scan_len, int) else 1, cols] if job.scan else [1, cols]
        plan = ctx.new_plan(job.node, self.kind, job.node.input[2], name, matrix, out_shape, layout=layout_key)
        if job.scan:
            plan = replace(plan, out_shape=[1, cols])  # the body's view: one step
        prefix = f"chip/l{plan.index}"
        hq = emit_dac(ctx.builder, h, ctx.range_for(job.node.input[2]), ctx.profile, prefix)
        return emit_analog_layer(ctx.builder, hq, plan, ctx.profile, None)

    # ------------------------------------------------------------------ lowering
    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w_all, r_all = ctx.consts.get(node.input[1]), ctx.consts.get(node.input[2])
        if w_all is None or r_all is None:
            raise CompileError(
                f"model: {node.op_type} {node.name!r} has weights computed at run time; the chip maps "
                "only constant W and R (export with constant folding)"
            )
        attrs = node_attrs(node)
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        dirs = DIRECTIONS.get(direction)
        if dirs is None:
            raise CompileError(f"model: {node.op_type} {node.name!r} has direction {direction!r}")
        hidden = int(attrs.get("hidden_size", r_all.shape[-1]))
        layout = int(attrs.get("layout", 0))
        x_shape = ctx.shapes.get(node.input[0])
        if not x_shape or len(x_shape) != 3 or x_shape[2] is None:
            raise CompileError(f"model: cannot infer the input shape of {node.op_type} {node.name!r}")
        base = node.name or f"{node.op_type.lower()}_{len(ctx.specs)}"
        steps: int | str = int(x_shape[layout]) if static_dim(ctx, node.input[0], layout) else f"{base}/T"
        scan = not isinstance(steps, int) or (steps > UNROLL_MAX_STEPS and steps > 1)
        inputs = list(node.input) + [""] * (8 - len(node.input))
        o = Ops(ctx.builder, f"chip/{base}")
        job = Job(
            ctx,
            node,
            o,
            r_all,
            hidden,
            steps,
            layout,
            float(attrs["clip"]) if "clip" in attrs else None,
            attrs,
            base,
            scan,
        )
        acts = parse_activations(node, attrs, self.default_acts, len(dirs))
        x = node.input[0] if layout else o("Transpose", node.input[0], perm=[1, 0, 2])  # → [N, T, I]
        masks = self.masks(job, x, inputs[4]) if inputs[4] else None
        outputs = []  # per direction: (Y [T, 1, N, H] or [N, T, 1, H], final h, final c)
        xq = None
        for d, dname in enumerate(dirs):
            suffix = "" if len(dirs) == 1 else f"/{dname}"
            w_matrix = np.ascontiguousarray(np.asarray(w_all[d], np.float32).T)
            w_plan = ctx.new_plan(
                node,
                self.kind,
                node.input[1],
                f"{base}/W{suffix}",
                w_matrix,
                [1, steps if isinstance(steps, int) else 1, w_matrix.shape[1]],
                layout=f"{self.kind}/W/{d}",
            )
            if xq is None:  # one DAC conversion of X for both directions (the same range)
                xq = emit_dac(ctx.builder, x, ctx.range_for(node.input[1]), ctx.profile, f"chip/l{w_plan.index}")
            xw = emit_analog_layer(ctx.builder, xq, w_plan, ctx.profile, None)
            dr = Direction(d, dname == "reverse", acts[d], xw, suffix)
            self.add_biases(ctx, o, dr, inputs[3], hidden)
            if self.kind == LayerKind.LSTM and inputs[7]:
                dr.peep = self.vector(ctx, o, inputs[7], d, [hidden] * 3)
            h0 = self.state(o, inputs[5], d, layout)
            c0 = self.state(o, inputs[6], d, layout) if self.kind == LayerKind.LSTM else None
            run = self.scan_direction if scan else self.unroll_direction
            outputs.append(run(job, dr, x, h0, c0, masks))
        self.write_outputs(o, node, outputs, layout)
        return True

    def masks(self, job: Job, x: str, seq_name: str):
        """Which batch entries step t updates (t < sequence_lens): per step [N, 1] (unrolled) or
        stacked [T, N, 1] (Scan)."""
        o = job.o
        if not job.scan:
            lens = o("Unsqueeze", seq_name, o.const([1], np.int64))  # [N, 1]
            return [o("Less", o.const(np.int32(t), np.int32), lens) for t in range(int(job.steps))]
        t_len = o("Squeeze", o("Shape", x, start=1, end=2), o.const([0], np.int64))
        t_idx = o("Cast", o("Range", o.const(0, np.int64), t_len, o.const(1, np.int64)), to=onnx.TensorProto.INT32)
        return o(
            "Less",
            o("Unsqueeze", t_idx, o.const([1, 2], np.int64)),
            o("Unsqueeze", seq_name, o.const([0, 2], np.int64)),
        )  # [T, N, 1]

    def add_biases(self, ctx: RewriteContext, o: Ops, dr: Direction, b_name: str, hidden: int) -> None:
        """xw += Wb + Rb (the GRU's h-gate Rb stays apart: it sits inside the reset gate)."""
        g = self.gates
        parts = self.vector(ctx, o, b_name, dr.index, [hidden] * (2 * g))
        if parts is None:
            return
        wb, rb = parts[:g], parts[g:]
        if self.kind == LayerKind.GRU:
            dr.r_bias_h = rb[2]
            rb = rb[:2] + [o.const(np.zeros(hidden, np.float32))]
        bias = o("Concat", *[o("Add", a, c) for a, c in zip(wb, rb)], axis=0)
        dr.xw = o("Add", dr.xw, bias)

    def step(self, job: Job, dr: Direction, xt: str, h: str | None, c: str | None, m: str | None):
        """One time step: (y_t, h, c) after the cell and the ``sequence_lens`` mask ``m``."""
        o = job.o
        h_new, c_new = self.cell(job, dr, xt, h, c)
        if m is None:
            return h_new, h_new, c_new
        zero = o.const(0.0)
        c_out = o("Where", m, c_new, c if c is not None else zero) if c_new is not None else None
        return o("Where", m, h_new, zero), o("Where", m, h_new, h if h is not None else zero), c_out

    def unroll_direction(self, job: Job, dr: Direction, x: str, h: str | None, c: str | None, masks):
        o = job.o
        ys: dict[int, str] = {}
        steps = int(job.steps)
        for t in range(steps - 1, -1, -1) if dr.reverse else range(steps):
            xt = o("Gather", dr.xw, o.const(t, np.int64), axis=1)  # [N, G·H]
            ys[t], h, c = self.step(job, dr, xt, h, c, None if masks is None else masks[t])
        axes = [1, 2] if job.layout else [0, 1]
        y = o("Concat", *[o("Unsqueeze", ys[t], o.const(axes, np.int64)) for t in range(steps)], axis=axes[0])
        return y, h, c

    def cell(self, job: Job, dr: Direction, xt: str, h: str | None, c: str | None) -> tuple[str, str | None]:
        raise NotImplementedError

    def write_outputs(self, o: Ops, node: onnx.NodeProto, outputs: list[tuple], layout: int) -> None:
        """Y [T, D, N, H] (layout 1: [N, T, D, H]), Y_h and Y_c [D, N, H] (layout 1: [N, D, H])."""
        outs = list(node.output) + [""] * 3
        if outs[0]:
            self.concat(o, [y for y, _, _ in outputs], 2 if layout else 1, outs[0])
        axis = 1 if layout else 0
        for k, name in ((1, outs[1]), (2, outs[2])):
            if name and outputs[0][k] is not None:
                self.concat(o, [o("Unsqueeze", out[k], o.const([axis], np.int64)) for out in outputs], axis, name)

    @staticmethod
    def concat(o: Ops, xs: list[str], axis: int, output: str) -> None:
        if len(xs) == 1:
            o("Identity", xs[0], output=output)
        else:
            o("Concat", *xs, output=output, axis=axis)
