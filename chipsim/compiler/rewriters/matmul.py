"""``MatMul`` and ``Gemm`` with a constant 2-D weight: one analog layer per weight.

A ``MatMul`` between two activations (attention's QKᵀ and AV) or with a batched constant
stays digital. ``MatMul(W, x)`` with the constant first is mapped transposed: the layer holds
``Wᵀ`` and reads ``xᵀ`` (``y = W·x = (xᵀ·Wᵀ)ᵀ``). ``Gemm``'s ``alpha`` is folded into the
weights, ``transB`` into their layout; ``transA`` becomes a Transpose before the DAC and
``beta·C`` a digital Add after the tiles. A weight read by several nodes in the same layout is
one layer read by each (:meth:`RewriteContext.new_plan`).
"""

from __future__ import annotations

import numpy as np
import onnx

from chipsim.compiler.layers import emit_analog_layer, emit_layer_dac
from chipsim.compiler.plan import CompileError
from chipsim.compiler.rewriters.registry import OpRewriter, RewriteContext, node_attrs, register
from chipsim.modes import LayerKind


def swap_last(shape: list[int]) -> list[int]:
    return [*shape[:-2], shape[-1], shape[-2]]


@register
class MatMulRewriter(OpRewriter):
    op_type = "MatMul"

    def maps_weight(self, weight: np.ndarray) -> bool:
        return weight.ndim == 2

    def left_weight(self, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray | None:
        """W of ``MatMul(W, x)``: a 2-D constant first operand and an activation second."""
        w = consts.get(node.input[0])
        if w is None or node.input[1] in consts or not self.maps_weight(w):
            return None
        return w

    def analog_weights(self, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> dict[str, str]:
        if self.left_weight(node, consts) is not None:
            return {node.input[0]: node.input[1]}
        return super().analog_weights(node, consts)

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w = ctx.consts.get(node.input[1])
        if w is None or not self.maps_weight(w):
            return self.rewrite_left(ctx, node)
        b = ctx.builder
        name = node.name or f"matmul_{len(ctx.specs)}"
        plan = ctx.new_plan(
            node,
            LayerKind.MATMUL,
            node.input[1],
            name,
            w.astype(np.float32),
            ctx.out_shape(node),
            layout="w",
            out_factor=ctx.out_factor(node),
        )
        xq = ctx.dac(node, node.input[0], node.input[1], f"chip/l{plan.index}")
        y = emit_analog_layer(b, xq, plan, ctx.profile, None, ctx.tile_options(node, node.input[0]))
        b.op("Identity", [y], f"chip/l{plan.index}", output=node.output[0])
        return True

    def rewrite_left(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w = self.left_weight(node, ctx.consts)
        if w is None:
            return False  # activation × activation (attention) or batched constant: digital
        x_shape = ctx.shapes.get(node.input[1])
        if not x_shape or len(x_shape) < 2:
            raise CompileError(
                f"model: MatMul {node.name!r} multiplies its constant first operand by a tensor of "
                f"unknown or 1-D shape {x_shape}; the chip maps W·x for x of rank ≥ 2"
            )
        rank = len(x_shape)
        perm = [*range(rank - 2), rank - 1, rank - 2]
        b = ctx.builder
        name = node.name or f"matmul_{len(ctx.specs)}"
        plan = ctx.new_plan(
            node,
            LayerKind.MATMUL_LEFT,
            node.input[0],
            name,
            np.ascontiguousarray(w.T, np.float32),
            swap_last(ctx.out_shape(node)),
            layout="w.T",
        )
        prefix = f"chip/l{plan.index}"
        xt = b.op("Transpose", [node.input[1]], prefix, perm=perm)
        y = emit_analog_layer(
            b, emit_layer_dac(b, xt, ctx.range_for(node.input[0]), ctx.profile, prefix), plan, ctx.profile, None
        )
        b.op("Transpose", [y], prefix, output=node.output[0], perm=perm)
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
        layout = ("w.T" if attrs.get("transB", 0) else "w") + ("" if alpha == 1.0 else f"*{alpha!r}")
        b = ctx.builder
        name = node.name or f"gemm_{len(ctx.specs)}"
        factor = ctx.out_factor(node)
        plan = ctx.new_plan(
            node, LayerKind.GEMM, node.input[1], name, weight, ctx.out_shape(node), layout=layout, out_factor=factor
        )
        prefix = f"chip/l{plan.index}"
        x = node.input[0]
        if attrs.get("transA", 0):
            x = b.op("Transpose", [x], prefix, perm=[1, 0])
        y = emit_analog_layer(
            b, ctx.dac(node, x, node.input[1], prefix), plan, ctx.profile, None, ctx.tile_options(node, x)
        )
        if len(node.input) > 2 and node.input[2]:
            c = node.input[2]
            if beta * factor != 1.0:  # a constant product: onnxruntime folds it when the session is built
                c = b.op("Mul", [c, b.const(prefix, beta * factor)], prefix)
            y = b.op("Add", [y, c], prefix)
        b.op("Identity", [y], prefix, output=node.output[0])
        return True
