"""The pieces the recurrent rewriters (:mod:`chipsim.compiler.rewriters.recurrent`) build with: the
ops' activation functions as ONNX defines them, a shorthand for emitting nodes under one name
prefix, and the state of one node's lowering (its job, each direction's compiled pieces)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.plan import CompileError
from chipsim.compiler.rewriters.registry import RewriteContext

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


def zero_state(o: Ops, x: str, hidden: int) -> str:
    """A [N, hidden] float zero tensor, N read from ``x``'s first dimension at run time."""
    n = o("Shape", x, start=0, end=1)
    return o(
        "ConstantOfShape",
        o("Concat", n, o.const([hidden], np.int64), axis=0),
        value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]),
    )
