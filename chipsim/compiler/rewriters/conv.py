"""``Conv`` with constant weights (any kernel, stride, padding, dilation, groups).

Each group is one analog layer whose matrix is the group's kernel flattened to
(channels·kernel rows, output channels). Its tiles hold whole input channels (at most
``tile_rows // kernel`` each, split evenly), so a tile is again a Conv over a channel slice.
"""

from __future__ import annotations

import numpy as np
import onnx

from chipsim.compiler.lowering import emit_analog_layer, emit_dac
from chipsim.compiler.plan import CompileError
from chipsim.compiler.rewriters.registry import OpRewriter, RewriteContext, node_attrs, register
from chipsim.modes import LayerKind


def channel_tiles(channels: int, kernel: int, tile_rows: int) -> list[tuple[int, int]]:
    """Input-channel range of each tile: the fewest tiles of ≤ ``tile_rows // kernel`` channels,
    sizes differing by at most one."""
    ch_max = tile_rows // kernel
    n_tiles = -(-channels // ch_max)
    base, extra = divmod(channels, n_tiles)
    ch_edges = np.concatenate([[0], np.cumsum([base + (1 if i < extra else 0) for i in range(n_tiles)])])
    return [(int(a), int(e)) for a, e in zip(ch_edges[:-1], ch_edges[1:])]


@register
class ConvRewriter(OpRewriter):
    op_type = "Conv"

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w = ctx.consts.get(node.input[1])
        if w is None:
            raise CompileError(
                f"model: Conv {node.name!r} has dynamic weights (computed at run time); the chip maps only constant "
                "weights. Export with constant folding (torch.onnx.export(..., do_constant_folding=True))."
            )
        attrs = node_attrs(node)
        groups = int(attrs.pop("group", 1))
        cols_total, cin_g = w.shape[0], w.shape[1]
        kernel = int(np.prod(w.shape[2:]))
        if kernel > ctx.profile.tile_rows:
            raise CompileError(
                f"model: Conv {node.name!r} has a {list(w.shape[2:])} kernel ({kernel} rows per input channel), more "
                f"than tile_rows={ctx.profile.tile_rows}; raise profile.tile_rows or use a smaller kernel"
            )
        tile_channels = channel_tiles(cin_g, kernel, ctx.profile.tile_rows)
        tiles = [(a * kernel, e * kernel) for a, e in tile_channels]
        cols = cols_total // groups
        b = ctx.builder
        base_name = node.name or f"conv_{len(ctx.specs)}"
        r = ctx.range_for(node.input[1])
        xq = emit_dac(b, node.input[0], r, ctx.profile, f"chip/conv_{len(ctx.specs)}")
        outs = []
        for g in range(groups):
            wg = w[g * cols:(g + 1) * cols].astype(np.float32)
            name = base_name if groups == 1 else f"{base_name}/g{g}"
            plan = ctx.new_plan(node, LayerKind.CONV, node.input[1], name, wg.reshape(cols, -1).T.copy(),
                                ctx.out_shape(node, channels=cols), tiles=tiles,
                                conv_shape=list(wg.shape), tile_channels=tile_channels)
            xg = xq
            if groups > 1:
                xg = b.slice(xq, [g * cin_g], [(g + 1) * cin_g], [1], f"chip/l{plan.index}")
            outs.append(emit_analog_layer(b, xg, plan, ctx.profile, attrs))
        prefix = f"chip/l{ctx.plans[-1].index}"
        y = outs[0] if groups == 1 else b.op("Concat", outs, prefix, axis=1)
        if len(node.input) > 2 and node.input[2]:
            bias_shape = [1, cols_total] + [1] * (w.ndim - 2)
            y = b.op("Add", [y, b.op("Reshape", [node.input[2], b.const(prefix, bias_shape, np.int64)], prefix)], prefix)
        b.op("Identity", [y], prefix, output=node.output[0])
        return True
