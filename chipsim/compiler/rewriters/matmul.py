"""``MatMul`` and ``Gemm`` with a constant 2-D weight: one analog layer each.

A ``MatMul`` between two activations (attention's QKᵀ and AV) or with a batched constant
stays digital. ``Gemm``'s ``alpha`` is folded into the weights, ``transB`` into their layout;
``transA`` becomes a Transpose before the DAC and ``beta·C`` a digital Add after the tiles.
"""

from __future__ import annotations

import numpy as np
import onnx

from chipsim.compiler.lowering import emit_analog_layer, emit_dac
from chipsim.compiler.rewriters.registry import OpRewriter, RewriteContext, node_attrs, register
from chipsim.modes import LayerKind


@register
class MatMulRewriter(OpRewriter):
    op_type = "MatMul"

    def maps_weight(self, weight: np.ndarray) -> bool:
        return weight.ndim == 2

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w = ctx.consts.get(node.input[1])
        if w is None or not self.maps_weight(w):
            return False  # activation × activation (attention) or batched constant: digital
        b = ctx.builder
        name = node.name or f"matmul_{len(ctx.specs)}"
        plan = ctx.new_plan(node, LayerKind.MATMUL, node.input[1], name, w.astype(np.float32), ctx.out_shape(node))
        r = ctx.specs[-1].input_range
        xq = emit_dac(b, node.input[0], r, ctx.profile, f"chip/l{plan.index}")
        y = emit_analog_layer(b, xq, plan, ctx.profile, None)
        b.op("Identity", [y], f"chip/l{plan.index}", output=node.output[0])
        return True


@register
class GemmRewriter(OpRewriter):
    op_type = "Gemm"

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w = ctx.consts.get(node.input[1])
        if w is None:
            return False
        attrs = node_attrs(node)
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        weight = (w.T if attrs.get("transB", 0) else w).astype(np.float32) * np.float32(alpha)
        b = ctx.builder
        name = node.name or f"gemm_{len(ctx.specs)}"
        plan = ctx.new_plan(node, LayerKind.GEMM, node.input[1], name, weight, ctx.out_shape(node))
        prefix = f"chip/l{plan.index}"
        x = node.input[0]
        if attrs.get("transA", 0):
            x = b.op("Transpose", [x], prefix, perm=[1, 0])
        y = emit_analog_layer(b, emit_dac(b, x, ctx.specs[-1].input_range, ctx.profile, prefix), plan, ctx.profile, None)
        if len(node.input) > 2 and node.input[2]:
            c = node.input[2]
            if beta != 1.0:
                c = b.op("Mul", [c, b.const(prefix, beta)], prefix)
            y = b.op("Add", [y, c], prefix)
        b.op("Identity", [y], prefix, output=node.output[0])
        return True
