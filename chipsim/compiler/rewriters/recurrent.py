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

The recurrence is unrolled over the static sequence length: measured against a ``Scan`` over
the steps on a 28-step LSTM at batch 64 (bench/compiler_ops.py), the unrolled graph is faster
(numbers in the README). A sequence length that is not static is refused with a message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.lowering import emit_analog_layer, emit_dac
from chipsim.compiler.plan import CompileError, LayerPlan
from chipsim.compiler.rewriters.registry import OpRewriter, RewriteContext, node_attrs, register
from chipsim.modes import LayerKind

#: Activation functions of the recurrent ops and whether each takes (alpha, beta), as ONNX
#: defines them; alpha/beta are consumed in order by the functions that take them, with these
#: defaults when the lists run out (onnxruntime's rnn_helpers: 0 unless listed here).
ACTIVATION_ARGS: dict[str, tuple[bool, bool]] = {
    "affine": (True, True), "relu": (False, False), "leakyrelu": (True, False), "thresholdedrelu": (True, False),
    "tanh": (False, False), "scaledtanh": (True, True), "sigmoid": (False, False), "hardsigmoid": (True, True),
    "elu": (True, False), "softsign": (False, False), "softplus": (False, False),
}
ACTIVATION_DEFAULTS: dict[str, tuple[float, float]] = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5),
                                                       "elu": (1.0, 0.0)}
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
        raise CompileError(f"model: {node.op_type} {node.name!r} lists {len(names)} activations; expected "
                           f"{len(defaults) * n_dirs} ({len(defaults)} per direction)")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    acts = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATION_ARGS:
            raise CompileError(f"model: {node.op_type} {node.name!r} uses activation {name!r}; known: "
                               f"{sorted(ACTIVATION_ARGS)}")
        needs_a, needs_b = ACTIVATION_ARGS[key]
        da, db = ACTIVATION_DEFAULTS.get(key, (0.0, 0.0))
        alpha = (alphas.pop(0) if alphas else da) if needs_a else 0.0
        beta = (betas.pop(0) if betas else db) if needs_b else 0.0
        acts.append(Activation(key, float(alpha), float(beta)))
    per = len(defaults)
    return [acts[d * per:(d + 1) * per] for d in range(n_dirs)]


def static_dim(ctx: RewriteContext, tensor: str, axis: int) -> bool:
    """Whether ``tensor``'s ``axis`` has a fixed size in the model as exported (the context's
    shapes take every symbolic input dimension as 1, which would hide a dynamic length)."""
    cache = ctx.__dict__.setdefault("_symbolic_shapes", {})
    if not cache:
        try:
            inferred = onnx.shape_inference.infer_shapes(ctx.model, data_prop=True)
        except Exception:  # the context's own inference succeeded; treat the dim as unknown
            return False
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            cache[vi.name] = [d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim]
    dims = cache.get(tensor)
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
    w_plan: LayerPlan
    r_bias_h: str | None = None  # GRU: R's h-gate bias (inside the reset gate with linear_before_reset)
    peep: list[str] | None = None  # LSTM: P_i, P_o, P_f as [H]


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

    def r_read(self, ctx: RewriteContext, node: onnx.NodeProto, h: str, matrix: np.ndarray, name: str,
               layout_key: str) -> str:
        """One read of a recurrent weight on the state ``h`` [N, H] → [N, cols] (a new read of the
        same layer after the first step)."""
        plan = ctx.new_plan(node, self.kind, node.input[2], name, matrix, [1, matrix.shape[1]], layout=layout_key)
        prefix = f"chip/l{plan.index}"
        hq = emit_dac(ctx.builder, h, ctx.range_for(node.input[2]), ctx.profile, prefix)
        return emit_analog_layer(ctx.builder, hq, plan, ctx.profile, None)

    # ------------------------------------------------------------------ lowering
    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w_all, r_all = ctx.consts.get(node.input[1]), ctx.consts.get(node.input[2])
        if w_all is None or r_all is None:
            raise CompileError(f"model: {node.op_type} {node.name!r} has weights computed at run time; the chip maps "
                               "only constant W and R (export with constant folding)")
        attrs = node_attrs(node)
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        dirs = DIRECTIONS.get(direction)
        if dirs is None:
            raise CompileError(f"model: {node.op_type} {node.name!r} has direction {direction!r}")
        hidden = int(attrs.get("hidden_size", r_all.shape[-1]))
        layout = int(attrs.get("layout", 0))
        clip = float(attrs["clip"]) if "clip" in attrs else None
        acts = parse_activations(node, attrs, self.default_acts, len(dirs))
        x_shape = ctx.shapes.get(node.input[0])
        steps = x_shape[layout] if x_shape and len(x_shape) == 3 else None
        if steps is None or not static_dim(ctx, node.input[0], layout):
            raise CompileError(
                f"model: {node.op_type} {node.name!r} has a sequence length that is not static; the chip unrolls "
                "the recurrence over a static length: export with a fixed sequence length")
        steps = int(steps)
        inputs = list(node.input) + [""] * (8 - len(node.input))
        b_name, seq_name, h0_name = inputs[3], inputs[4], inputs[5]
        base = node.name or f"{node.op_type.lower()}_{len(ctx.specs)}"
        o = Ops(ctx.builder, f"chip/{base}")
        x = node.input[0] if layout else o("Transpose", node.input[0], perm=[1, 0, 2])  # → [N, T, I]
        masks = None
        if seq_name:
            lens = o("Unsqueeze", seq_name, o.const([1], np.int64))  # [N, 1]
            masks = [o("Less", o.const(np.int32(t), np.int32), lens) for t in range(steps)]
        outputs: list[list[str]] = []  # per direction: Y_t (in time order), final h[, final c]
        xq = None
        for d, dname in enumerate(dirs):
            suffix = "" if len(dirs) == 1 else f"/{dname}"
            w_matrix = np.ascontiguousarray(np.asarray(w_all[d], np.float32).T)
            w_plan = ctx.new_plan(node, self.kind, node.input[1], f"{base}/W{suffix}", w_matrix,
                                  [1, steps, w_matrix.shape[1]], layout=f"{self.kind}/W/{d}")
            if xq is None:  # one DAC conversion of X for both directions (the same range)
                xq = emit_dac(ctx.builder, x, ctx.range_for(node.input[1]), ctx.profile, f"chip/l{w_plan.index}")
            xw = emit_analog_layer(ctx.builder, xq, w_plan, ctx.profile, None)
            direction_ = Direction(d, dname == "reverse", acts[d], xw, w_plan)
            self.add_biases(ctx, o, direction_, b_name, hidden)
            if self.kind == LayerKind.LSTM and len(inputs) > 7 and inputs[7]:
                direction_.peep = self.vector(ctx, o, inputs[7], d, [hidden] * 3)
            outputs.append(self.run_direction(ctx, node, o, direction_, r_all, hidden, steps, masks, clip, attrs,
                                              h0_name, inputs, layout, suffix, base))
        self.write_outputs(o, node, outputs, layout)
        return True

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

    def run_direction(self, ctx, node, o: Ops, dr: Direction, r_all, hidden, steps, masks, clip, attrs, h0_name,
                      inputs, layout, suffix, base) -> list[str]:
        h = self.state(o, h0_name, dr.index, layout)
        c = self.state(o, inputs[6], dr.index, layout) if self.kind == LayerKind.LSTM else None
        ys: dict[int, str] = {}
        order = range(steps - 1, -1, -1) if dr.reverse else range(steps)
        for t in order:
            xt = o("Gather", dr.xw, o.const(t, np.int64), axis=1)  # [N, G·H]
            h_new, c_new = self.cell(ctx, node, o, dr, xt, h, c, r_all, hidden, clip, attrs, suffix, base)
            if masks is None:
                h, c, ys[t] = h_new, c_new, h_new
                continue
            m = masks[t]
            zero = o.const(0.0)
            ys[t] = o("Where", m, h_new, zero)
            h = o("Where", m, h_new, h if h is not None else zero)
            if c_new is not None:
                c = o("Where", m, c_new, c if c is not None else zero)
        return [*[ys[t] for t in range(steps)], h, *( [c] if self.kind == LayerKind.LSTM else [])]

    def cell(self, ctx, node, o, dr, xt, h, c, r_all, hidden, clip, attrs, suffix, base) -> tuple[str, str | None]:
        raise NotImplementedError

    def write_outputs(self, o: Ops, node: onnx.NodeProto, outputs: list[list[str]], layout: int) -> None:
        """Y [T, D, N, H] (layout 1: [N, T, D, H]), Y_h and Y_c [D, N, H] (layout 1: [N, D, H])."""
        outs = list(node.output) + [""] * 3
        steps = len(outputs[0]) - (2 if self.kind == LayerKind.LSTM else 1)
        if outs[0]:
            axes = [1, 2] if layout else [0, 1]
            per_dir = [o("Concat", *[o("Unsqueeze", y, o.const(axes, np.int64)) for y in ys[:steps]], axis=axes[0])
                       for ys in outputs]
            self.concat(o, per_dir, axes[1], outs[0])
        for k, name in ((steps, outs[1]), (steps + 1, outs[2])):
            if name and k < len(outputs[0]):
                axis = 1 if layout else 0
                self.concat(o, [o("Unsqueeze", ys[k], o.const([axis], np.int64)) for ys in outputs], axis, name)

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

    def cell(self, ctx, node, o, dr, xt, h, c, r_all, hidden, clip, attrs, suffix, base):
        f_act, g_act, h_act = dr.acts
        pre = xt
        if h is not None:
            r_matrix = np.ascontiguousarray(np.asarray(r_all[dr.index], np.float32).T)
            pre = o("Add", xt, self.r_read(ctx, node, h, r_matrix, f"{base}/R{suffix}", f"lstm/R/{dr.index}"))
        gi, go, gf, gc = o.split(pre, 4, hidden)
        pi, po, pf = dr.peep or (None, None, None)
        if pi is not None and c is not None:
            gi = o("Add", gi, o.mul(pi, c))
            gf = o("Add", gf, o.mul(pf, c))
        i = o.act(f_act, o.clip(gi, clip))
        if attrs.get("input_forget", 0):
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

    def cell(self, ctx, node, o, dr, xt, h, c, r_all, hidden, clip, attrs, suffix, base):
        f_act, g_act = dr.acts
        xz, xr, xh = o.split(xt, 3, hidden)
        r_d = np.asarray(r_all[dr.index], np.float32)
        lbr = int(attrs.get("linear_before_reset", 0))
        if h is None:
            z = o.act(f_act, o.clip(xz, clip))
            r = o.act(f_act, o.clip(xr, clip))
            rh = dr.r_bias_h if not lbr or dr.r_bias_h is None else o.mul(r, dr.r_bias_h)
            hh = o.act(g_act, o.clip(o.add(xh, rh), clip))
            return o.mul(o("Sub", o.const(1.0), z), hh), None
        if lbr:
            hr = self.r_read(ctx, node, h, np.ascontiguousarray(r_d.T), f"{base}/R{suffix}", f"gru/R/{dr.index}")
            hz, hrr, hh_lin = o.split(hr, 3, hidden)
            if dr.r_bias_h is not None:
                hh_lin = o("Add", hh_lin, dr.r_bias_h)
            z = o.act(f_act, o.clip(o("Add", xz, hz), clip))
            r = o.act(f_act, o.clip(o("Add", xr, hrr), clip))
            hh = o.act(g_act, o.clip(o("Add", xh, o.mul(r, hh_lin)), clip))
        else:
            hzr = self.r_read(ctx, node, h, np.ascontiguousarray(r_d[:2 * hidden].T), f"{base}/R_zr{suffix}",
                              f"gru/R_zr/{dr.index}")
            hz, hrr = o.split(hzr, 2, hidden)
            z = o.act(f_act, o.clip(o("Add", xz, hz), clip))
            r = o.act(f_act, o.clip(o("Add", xr, hrr), clip))
            hh_r = self.r_read(ctx, node, o.mul(r, h), np.ascontiguousarray(r_d[2 * hidden:].T), f"{base}/R_h{suffix}",
                               f"gru/R_h/{dr.index}")
            hh = o.act(g_act, o.clip(o.add(xh, hh_r, dr.r_bias_h), clip))
        # H = (1 − z)·h̃ + z·H_prev
        return o("Add", o.mul(o("Sub", o.const(1.0), z), hh), o.mul(z, h)), None


@register
class RNNRewriter(RecurrentRewriter):
    op_type = "RNN"
    kind = LayerKind.RNN
    gates = 1
    default_acts = ["Tanh"]

    def cell(self, ctx, node, o, dr, xt, h, c, r_all, hidden, clip, attrs, suffix, base):
        pre = xt
        if h is not None:
            r_matrix = np.ascontiguousarray(np.asarray(r_all[dr.index], np.float32).T)
            pre = o("Add", xt, self.r_read(ctx, node, h, r_matrix, f"{base}/R{suffix}", f"rnn/R/{dr.index}"))
        return o.act(dr.acts[0], o.clip(pre, clip)), None
