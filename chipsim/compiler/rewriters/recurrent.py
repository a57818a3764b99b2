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
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper

from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.layers import emit_analog_layer
from chipsim.compiler.layers import emit_layer_dac as emit_dac
from chipsim.compiler.plan import CompileError
from chipsim.compiler.rewriters.registry import OpRewriter, RewriteContext, node_attrs, register
from chipsim.modes import LayerKind

#: Activation functions of the recurrent ops and whether each takes (alpha, beta), as ONNX
#: defines them; alpha/beta are consumed in order by the functions that take them, with these
#: defaults when the lists run out (onnxruntime's rnn_helpers: 0 unless listed here).
ACTIVATION_ARGS: dict[str, tuple[bool, bool]] = {
    "affine": (True, True),
    "relu": (False, False),
    "leakyrelu": (True, False),
    "thresholdedrelu": (True, False),
    "tanh": (False, False),
    "scaledtanh": (True, True),
    "sigmoid": (False, False),
    "hardsigmoid": (True, True),
    "elu": (True, False),
    "softsign": (False, False),
    "softplus": (False, False),
}
ACTIVATION_DEFAULTS: dict[str, tuple[float, float]] = {
    "leakyrelu": (0.01, 0.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, 0.0),
}
#: Longest static sequence unrolled; longer and dynamic ones run as a Scan. Measured with
#: bench/compiler_ops.py (LSTM 28→128, batch 64, pcm, medians of interleaved runs, README): at 28
#: steps the unrolled graph is 3.0 % [2.8, 3.4] faster per inference; at 112 steps it is not
#: (Scan/unrolled 0.99 [0.94, 1.05]), while its node count and the session build of every new age
#: grow with the length (584 ms against 222 ms at 112 steps).
UNROLL_MAX_STEPS = 32
DIRECTIONS = {"forward": ["forward"], "reverse": ["reverse"], "bidirectional": ["forward", "reverse"]}


@dataclass(frozen=True)
class Activation:
    name: str
    alpha: float = 0.0
    beta: float = 0.0


def parse_activations(node: onnx.NodeProto, attrs: dict, defaults: list[str], n_dirs: int) -> list[list[Activation]]:
    """The activation functions of each direction (``len(defaults)`` per direction)."""
    names = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])] or defaults * n_dirs
    if len(names) != len(defaults) * n_dirs:
        raise CompileError(
            f"model: {node.op_type} {node.name!r} lists {len(names)} activations; expected "
            f"{len(defaults) * n_dirs} ({len(defaults)} per direction)"
        )
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    acts = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATION_ARGS:
            raise CompileError(
                f"model: {node.op_type} {node.name!r} uses activation {name!r}; known: {sorted(ACTIVATION_ARGS)}"
            )
        needs_a, needs_b = ACTIVATION_ARGS[key]
        da, db = ACTIVATION_DEFAULTS.get(key, (0.0, 0.0))
        alpha = (alphas.pop(0) if alphas else da) if needs_a else 0.0
        beta = (betas.pop(0) if betas else db) if needs_b else 0.0
        acts.append(Activation(key, float(alpha), float(beta)))
    per = len(defaults)
    return [acts[d * per : (d + 1) * per] for d in range(n_dirs)]


def static_dim(ctx: RewriteContext, tensor: str, axis: int) -> bool:
    """Whether ``tensor``'s ``axis`` has a fixed size in the model as exported (the context's
    shapes take every symbolic input dimension as 1, which would hide a dynamic length)."""
    dims = ctx.fixed_dims().get(tensor)
    return bool(dims) and axis < len(dims) and dims[axis]


class Ops:
    """Shorthands over a GraphBuilder under one name prefix."""

    def __init__(self, b: GraphBuilder, prefix: str):
        self.b, self.p = b, prefix

    def __call__(self, op: str, *inputs: str, output: str | None = None, **attrs) -> str:
        return self.b.op(op, list(inputs), self.p, output=output, **attrs)

    def const(self, value, dtype=np.float32) -> str:
        return self.b.const(self.p, value, dtype)

    def add(self, *xs: str | None) -> str:
        xs = [x for x in xs if x is not None]  # type: ignore[assignment]
        return xs[0] if len(xs) == 1 else self("Sum", *xs)  # type: ignore[arg-type]

    def mul(self, a: str, b: str) -> str:
        return self("Mul", a, b)

    def split(self, x: str, n: int, size: int) -> list[str]:
        return self.b.split(x, 1, [size] * n, self.p)

    def act(self, a: Activation, x: str) -> str:
        simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign", "softplus": "Softplus"}
        if a.name in simple:
            return self(simple[a.name], x)
        if a.name == "leakyrelu":
            return self("LeakyRelu", x, alpha=a.alpha)
        if a.name == "thresholdedrelu":
            return self("ThresholdedRelu", x, alpha=a.alpha)
        if a.name == "elu":
            return self("Elu", x, alpha=a.alpha)
        if a.name == "hardsigmoid":
            return self("HardSigmoid", x, alpha=a.alpha, beta=a.beta)
        if a.name == "affine":
            return self("Add", self.mul(x, self.const(a.alpha)), self.const(a.beta))
        # scaledtanh: alpha·tanh(beta·x)
        return self.mul(self("Tanh", self.mul(x, self.const(a.beta))), self.const(a.alpha))

    def clip(self, x: str, clip: float | None) -> str:
        return x if clip is None else self("Clip", x, self.const(-clip), self.const(clip))


@dataclass
class Direction:
    """One direction's compiled pieces."""

    index: int
    reverse: bool
    acts: list[Activation]
    xw: str  # [N, T, G·H]: the W read plus the biases that add to it
    suffix: str  # "" or "/forward", "/reverse" (layer names)
    r_bias_h: str | None = None  # GRU: R's h-gate bias (inside the reset gate with linear_before_reset)
    peep: list[str] | None = None  # LSTM: P_i, P_o, P_f as [H]


@dataclass
class Job:
    """One recurrent node being lowered."""

    ctx: RewriteContext
    node: onnx.NodeProto
    o: Ops
    r_all: np.ndarray
    hidden: int
    steps: int | str  # static length, or the symbolic name of a dynamic one
    layout: int
    clip: float | None
    attrs: dict
    base: str
    scan: bool  # lowered as a Scan over the steps (else unrolled)
    scan_len: int | str = 0  # steps inside the Scan (one fewer when the first runs before it)


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


class RecurrentRewriter(OpRewriter):
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
            c0 = _zero_state(o, x, job.hidden)
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


@register
class LSTMRewriter(RecurrentRewriter):
    """i, o, f, c gates (ONNX order), optional peepholes P = [P_i, P_o, P_f] and ``input_forget``."""

    op_type = "LSTM"
    kind = LayerKind.LSTM
    gates = 4
    default_acts = ["Sigmoid", "Tanh", "Tanh"]

    def cell(self, job, dr, xt, h, c):
        o, hidden, clip, suffix = job.o, job.hidden, job.clip, dr.suffix
        f_act, g_act, h_act = dr.acts
        pre = xt
        if h is not None:
            r_matrix = np.ascontiguousarray(np.asarray(job.r_all[dr.index], np.float32).T)
            pre = o("Add", xt, self.r_read(job, h, r_matrix, f"{job.base}/R{suffix}", f"lstm/R/{dr.index}"))
        gi, go, gf, gc = o.split(pre, 4, hidden)
        pi, po, pf = dr.peep or (None, None, None)
        if pi is not None and c is not None:
            gi = o("Add", gi, o.mul(pi, c))
            gf = o("Add", gf, o.mul(pf, c))
        i = o.act(f_act, o.clip(gi, clip))
        if job.attrs.get("input_forget", 0):
            f = o("Sub", o.const(1.0), i)
        else:
            f = o.act(f_act, o.clip(gf, clip))
        g = o.act(g_act, o.clip(gc, clip))
        c_new = o.mul(i, g) if c is None else o("Add", o.mul(f, c), o.mul(i, g))
        if po is not None:
            go = o("Add", go, o.mul(po, c_new))
        out = o.act(f_act, o.clip(go, clip))
        return o.mul(out, o.act(h_act, c_new)), c_new


@register
class GRURewriter(RecurrentRewriter):
    """z, r, h gates (ONNX order); ``linear_before_reset`` chooses where R's h rows are read."""

    op_type = "GRU"
    kind = LayerKind.GRU
    gates = 3
    default_acts = ["Sigmoid", "Tanh"]

    def cell(self, job, dr, xt, h, c):
        o, hidden, clip, suffix, base = job.o, job.hidden, job.clip, dr.suffix, job.base
        f_act, g_act = dr.acts
        xz, xr, xh = o.split(xt, 3, hidden)
        r_d = np.asarray(job.r_all[dr.index], np.float32)
        lbr = int(job.attrs.get("linear_before_reset", 0))
        if h is None:  # the state is 0: no R read; the reset gate only scales R's h bias (linear_before_reset)
            z = o.act(f_act, o.clip(xz, clip))
            rh = dr.r_bias_h
            if lbr and rh is not None:
                rh = o.mul(o.act(f_act, o.clip(xr, clip)), rh)
            hh = o.act(g_act, o.clip(o.add(xh, rh), clip))
            return o.mul(o("Sub", o.const(1.0), z), hh), None
        if lbr:
            hr = self.r_read(job, h, np.ascontiguousarray(r_d.T), f"{base}/R{suffix}", f"gru/R/{dr.index}")
            hz, hrr, hh_lin = o.split(hr, 3, hidden)
            if dr.r_bias_h is not None:
                hh_lin = o("Add", hh_lin, dr.r_bias_h)
            z = o.act(f_act, o.clip(o("Add", xz, hz), clip))
            r = o.act(f_act, o.clip(o("Add", xr, hrr), clip))
            hh = o.act(g_act, o.clip(o("Add", xh, o.mul(r, hh_lin)), clip))
        else:
            hzr = self.r_read(
                job, h, np.ascontiguousarray(r_d[: 2 * hidden].T), f"{base}/R_zr{suffix}", f"gru/R_zr/{dr.index}"
            )
            hz, hrr = o.split(hzr, 2, hidden)
            z = o.act(f_act, o.clip(o("Add", xz, hz), clip))
            r = o.act(f_act, o.clip(o("Add", xr, hrr), clip))
            hh_r = self.r_read(
                job,
                o.mul(r, h),
                np.ascontiguousarray(r_d[2 * hidden :].T),
                f"{base}/R_h{suffix}",
                f"gru/R_h/{dr.index}",
            )
            hh = o.act(g_act, o.clip(o.add(xh, hh_r, dr.r_bias_h), clip))
        # H = (1 − z)·h̃ + z·H_prev
        return o("Add", o.mul(o("Sub", o.const(1.0), z), hh), o.mul(z, h)), None


@register
class RNNRewriter(RecurrentRewriter):
    op_type = "RNN"
    kind = LayerKind.RNN
    gates = 1
    default_acts = ["Tanh"]

    def cell(self, job, dr, xt, h, c):
        o, pre = job.o, xt
        if h is not None:
            r_matrix = np.ascontiguousarray(np.asarray(job.r_all[dr.index], np.float32).T)
            pre = o("Add", xt, self.r_read(job, h, r_matrix, f"{job.base}/R{dr.suffix}", f"rnn/R/{dr.index}"))
        return o.act(dr.acts[0], o.clip(pre, job.clip)), None


def _zero_state(o: Ops, x: str, hidden: int) -> str:
    """A [N, hidden] float zero tensor, N read from ``x``'s first dimension at run time."""
    n = o("Shape", x, start=0, end=1)
    return o(
        "ConstantOfShape",
        o("Concat", n, o.const([hidden], np.int64), axis=0),
        value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]),
    )
