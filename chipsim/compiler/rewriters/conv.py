"""``Conv`` and ``ConvTranspose`` with constant weights (any kernel, stride, padding, dilation,
groups): one analog layer per node.

The layer's matrix is one group's kernel flattened to (channels·kernel rows, output channels of
*all* groups): column ``o`` holds group ``o // (C_out/groups)``'s kernel, and a column has devices
only for its own group's rows — the block-diagonal matrix of a grouped Conv with its cross-group
devices absent (not programmed, not counted, no noise). Tiles hold whole input channels of a
group (at most ``tile_rows // kernel`` each, split evenly), so a tile is again a grouped Conv
over a channel slice of every group, and the whole layer runs as one Conv with ``group``.

``ConvTranspose`` is the Conv of its zero-upsampled input with the flipped kernel (the
transposed convolution's definition, Dumoulin & Visin 2016, "A guide to convolution
arithmetic", §4): every output is one MVM of one ADC read, exactly like a Conv's, so the tiles,
IR drop, noise and GDC of :mod:`~chipsim.compiler.lowering` apply unchanged. The alternative
(each input pixel times the kernel, then a digital overlap-add of the partial outputs) would make
each output a sum of up to ``(k/s)²`` ADC reads, with a noise that varies over the output's
phase and its borders.
"""

from __future__ import annotations

import numpy as np
import onnx

from chipsim.compiler import lowering
from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.layers import FULL_TILE, emit_analog_layer, emit_layer_dac, emit_tile
from chipsim.compiler.lean import TileOptions
from chipsim.compiler.plan import CompileError, LayerPlan
from chipsim.compiler.rewriters.registry import OpRewriter, RewriteContext, node_attrs, register
from chipsim.modes import LayerKind
from chipsim.profiles import ChipProfile


def channel_tiles(channels: int, kernel: int, tile_rows: int) -> list[tuple[int, int]]:
    """Input-channel range of each tile: the fewest tiles of ≤ ``tile_rows // kernel`` channels,
    sizes differing by at most one."""
    ch_max = tile_rows // kernel
    n_tiles = -(-channels // ch_max)
    base, extra = divmod(channels, n_tiles)
    ch_edges = np.concatenate([[0], np.cumsum([base + (1 if i < extra else 0) for i in range(n_tiles)])])
    return [(int(a), int(e)) for a, e in zip(ch_edges[:-1], ch_edges[1:])]


def emit_conv_layer(
    b: GraphBuilder, xq: str, plan: LayerPlan, profile: ChipProfile, conv_attrs: dict, opts: TileOptions = FULL_TILE
) -> str:
    """The tiles of a Conv layer (``conv_attrs`` without ``group``) on the DAC output ``xq``;
    returns Σ_k tile outputs. A grouped layer's tile k reads its channel slice of every group."""
    attrs = {**conv_attrs, "group": plan.groups} if plan.groups > 1 else conv_attrs
    if plan.groups == 1 or len(plan.tiles) == 1:
        return emit_analog_layer(b, xq, plan, profile, attrs, opts)
    prefix = f"chip/l{plan.index}"
    cin_g = plan.conv_shape[1]  # type: ignore[index]
    outs = []
    for k, (ca, cb) in enumerate(plan.tile_channels):  # type: ignore[arg-type]
        idx = np.concatenate([np.arange(g * cin_g + ca, g * cin_g + cb) for g in range(plan.groups)])
        xk = b.op("Gather", [xq, b.const(prefix, idx, np.int64)], prefix, axis=1)
        outs.append(emit_tile(b, xk, plan, k, profile, prefix, attrs, opts))
    return b.op("Sum", outs, prefix)


def check_kernel(ctx: RewriteContext, node: onnx.NodeProto, kernel_shape: list[int]) -> int:
    kernel = int(np.prod(kernel_shape))
    if kernel > ctx.profile.tile_rows:
        raise CompileError(
            f"model: {node.op_type} {node.name!r} has a {kernel_shape} kernel ({kernel} rows per input channel), "
            f"more than tile_rows={ctx.profile.tile_rows}; raise profile.tile_rows or use a smaller kernel"
        )
    return kernel


def conv_layer(
    ctx: RewriteContext,
    node: onnx.NodeProto,
    kind: LayerKind,
    w: np.ndarray,
    groups: int,
    out_shape: list[int],
    layout: str,
    out_factor: float = 1.0,
) -> LayerPlan:
    """The analog layer (or a new read of it) of Conv weights ``w`` (C_out, C_in/groups, *kernel)."""
    kernel = check_kernel(ctx, node, list(w.shape[2:]))
    tile_channels = channel_tiles(w.shape[1], kernel, ctx.profile.tile_rows)
    matrix = np.ascontiguousarray(w.reshape(w.shape[0], -1).T, dtype=np.float32)
    return ctx.new_plan(
        node,
        kind,
        node.input[1],
        node.name or f"{kind}_{len(ctx.specs)}",
        matrix,
        out_shape,
        tiles=[(a * kernel, e * kernel) for a, e in tile_channels],
        layout=layout,
        conv_shape=list(w.shape),
        tile_channels=tile_channels,
        groups=groups,
        out_factor=out_factor,
        channel_align=lowering.CONV_CHANNEL_ALIGN,  # read at compile time (tests and benches vary it)
    )


def add_bias(
    ctx: RewriteContext, node: onnx.NodeProto, y: str, channels: int, spatial: int, prefix: str, factor: float = 1.0
) -> str:
    """``y`` plus the node's bias (times ``factor``: a folded DAC scale, see :mod:`..folding`)."""
    if len(node.input) > 2 and node.input[2]:
        b = ctx.builder
        shape = b.const(prefix, [1, channels] + [1] * spatial, np.int64)
        bias = node.input[2]
        if factor != 1.0:  # a constant product: onnxruntime folds it when the session is built
            bias = b.op("Mul", [bias, b.const(prefix, factor)], prefix)
        y = b.op("Add", [y, b.op("Reshape", [bias, shape], prefix)], prefix)
    return y


def constant_weight(ctx: RewriteContext, node: onnx.NodeProto) -> np.ndarray:
    """The node's weight (input 1), which the chip maps only when it is a constant of the model."""
    w = ctx.consts.get(node.input[1])
    if w is None:
        raise CompileError(
            f"model: {node.op_type} {node.name!r} has dynamic weights (computed at run time); the chip maps only "
            "constant weights. Export with constant folding (torch.onnx.export(..., do_constant_folding=True))."
        )
    return w


@register
class ConvRewriter(OpRewriter):
    op_type = "Conv"

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w = constant_weight(ctx, node)
        attrs = node_attrs(node)
        groups = int(attrs.pop("group", 1))
        factor = ctx.out_factor(node)
        plan = conv_layer(
            ctx, node, LayerKind.CONV, w, groups, ctx.out_shape(node), layout=f"conv/g{groups}", out_factor=factor
        )
        prefix = f"chip/l{plan.index}"
        xq = ctx.dac(node, node.input[0], node.input[1], prefix)
        y = emit_conv_layer(ctx.builder, xq, plan, ctx.profile, attrs, ctx.tile_options(node, node.input[0]))
        y = add_bias(ctx, node, y, w.shape[0], w.ndim - 2, prefix, factor)
        ctx.builder.op("Identity", [y], prefix, output=node.output[0])
        return True


def transpose_conv_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """ConvTranspose weights (C_in, C_out/groups, *kernel) → the equivalent Conv's
    (C_out, C_in/groups, *kernel): per group, channels swapped and the kernel flipped."""
    cin, cout_g = w.shape[:2]
    cin_g = cin // groups
    wg = w.reshape(groups, cin_g, cout_g, *w.shape[2:])
    wg = np.swapaxes(wg, 1, 2)  # (groups, cout_g, cin_g, *kernel)
    wg = np.flip(wg, axis=tuple(range(3, wg.ndim)))
    return np.ascontiguousarray(wg.reshape(groups * cout_g, cin_g, *w.shape[2:]), dtype=np.float32)


def transpose_pads(
    node: onnx.NodeProto, attrs: dict, in_sizes: list[int], kernel: list[int]
) -> tuple[list[int], list[int]]:
    """ConvTranspose's (begin, end) padding per spatial axis, from ``pads`` or ``output_shape``
    and ``auto_pad`` (ONNX ConvTranspose, opset 11+)."""
    n = len(kernel)
    strides = attrs.get("strides", [1] * n)
    dil = attrs.get("dilations", [1] * n)
    out_pad = attrs.get("output_padding", [0] * n)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    full = [strides[i] * (in_sizes[i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1 for i in range(n)]
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in attrs:
            target = list(attrs["output_shape"])[-n:]
        else:
            target = [in_sizes[i] * strides[i] for i in range(n)]
        total = [full[i] - target[i] for i in range(n)]
        if any(t < 0 for t in total):
            raise CompileError(
                f"model: ConvTranspose {node.name!r}: output_shape {target} is larger than the "
                "kernel, strides and output_padding can reach; use output_padding"
            )
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:  # SAME_LOWER, and output_shape without auto_pad (onnxruntime's convention)
            begin = [t - t // 2 for t in total]
        return begin, [t - a for t, a in zip(total, begin)]
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    pads = list(attrs.get("pads", [0] * (2 * n)))
    return pads[:n], pads[n:]


@register
class ConvTransposeRewriter(OpRewriter):
    op_type = "ConvTranspose"

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> bool:
        w = constant_weight(ctx, node)
        attrs = node_attrs(node)
        groups = int(attrs.get("group", 1))
        kernel = list(w.shape[2:])
        n = len(kernel)
        x_shape = ctx.shapes.get(node.input[0])
        if not x_shape or any(d is None for d in x_shape[1:]):
            raise CompileError(
                f"model: cannot infer the input shape of ConvTranspose {node.name!r}; export with "
                "static non-batch dimensions"
            )
        in_sizes = [int(d) for d in x_shape[2:]]
        strides = list(attrs.get("strides", [1] * n))
        dil = list(attrs.get("dilations", [1] * n))
        # Spatial sizes symbolic in the export (recorded as 1 in ctx.shapes): the lowering then
        # reads them at run time; only pads given per side do not depend on them.
        fixed = ctx.fixed_dims().get(node.input[0]) or []
        dynamic = not all(fixed[2 : 2 + n]) or len(fixed) < 2 + n
        if dynamic:
            _check_pads_size_free(node, attrs)
        begin, end = transpose_pads(node, attrs, in_sizes, kernel)
        # Conv of the zero-upsampled input (length s·(in−1)+1) with pads (k−1)·d − p (+ output_padding
        # at the end, via `end`): a negative pad crops the upsampled input instead.
        out_pad = list(attrs.get("output_padding", [0] * n))
        conv_begin = [(kernel[i] - 1) * dil[i] - begin[i] for i in range(n)]
        conv_end = [(kernel[i] - 1) * dil[i] - end[i] + out_pad[i] for i in range(n)]
        up = [strides[i] * (in_sizes[i] - 1) + 1 for i in range(n)]
        crop = ([max(0, -p) for p in conv_begin], [up[i] - max(0, -conv_end[i]) for i in range(n)])
        out_shape = [1, w.shape[1] * groups] + [
            up[i] + conv_begin[i] + conv_end[i] - (kernel[i] - 1) * dil[i] for i in range(n)
        ]
        if dynamic:  # per-sample sizes unknown until run time: recorded as 1, like a symbolic batch
            out_shape[2:] = [1] * n
        else:
            _check_static_output(ctx, node, out_shape)
        plan = conv_layer(
            ctx,
            node,
            LayerKind.CONV_TRANSPOSE,
            transpose_conv_weights(w, groups),
            groups,
            out_shape,
            layout=f"conv_transpose/g{groups}",
        )
        b = ctx.builder
        prefix = f"chip/l{plan.index}"
        xq = emit_layer_dac(b, node.input[0], ctx.range_for(node.input[1]), ctx.profile, prefix)
        if dynamic:
            # Crop ends counted from the end of the upsampled length s·n − (s − 1): size-free.
            tail = [(s - 1) + max(0, -conv_end[i]) for i, s in enumerate(strides)]
            xu = upsample_zeros_dynamic(b, xq, strides, crop[0], tail, prefix)
        else:
            xu = upsample_zeros(b, xq, int(x_shape[1]), in_sizes, strides, crop, prefix)
        conv_attrs = {
            "kernel_shape": kernel,
            "dilations": dil,
            "strides": [1] * n,
            "pads": [max(0, p) for p in conv_begin] + [max(0, p) for p in conv_end],
        }
        y = emit_conv_layer(b, xu, plan, ctx.profile, conv_attrs)
        y = add_bias(ctx, node, y, out_shape[1], n, prefix)
        b.op("Identity", [y], prefix, output=node.output[0])
        return True


def upsample_zeros(
    b: GraphBuilder,
    x: str,
    channels: int,
    sizes: list[int],
    strides: list[int],
    crop: tuple[list[int], list[int]],
    prefix: str,
) -> str:
    """``x`` with ``s − 1`` zeros between neighbours along each spatial axis (length s·(n−1)+1),
    then cropped to ``[crop_begin, crop_end)``: reshape to (…, n, 1, …), pad to (…, n, s, …),
    merge, slice."""
    n = len(sizes)
    if any(s > 1 for s in strides):
        split = [0, channels] + [d for size in sizes for d in (size, 1)]
        x = b.op("Reshape", [x, b.const(prefix, split, np.int64)], prefix)
        pads = [0] * (2 + 2 * n) + [0, 0] + [p for s in strides for p in (0, s - 1)]
        x = b.op("Pad", [x, b.const(prefix, pads, np.int64)], prefix)
        x = b.op(
            "Reshape",
            [x, b.const(prefix, [0, channels] + [size * s for size, s in zip(sizes, strides)], np.int64)],
            prefix,
        )
    up = [s * (size - 1) + 1 for size, s in zip(sizes, strides)]
    starts, ends = crop
    if any(s > 1 for s in strides) or starts != [0] * n or ends != up:
        x = b.slice(x, starts, ends, list(range(2, 2 + n)), prefix)
    return x


def upsample_zeros_dynamic(
    b: GraphBuilder, x: str, strides: list[int], crop_begin: list[int], crop_tail: list[int], prefix: str
) -> str:
    """:func:`upsample_zeros` for spatial sizes known only at run time: unsqueeze a unit axis after
    each spatial axis, pad it to ``s``, merge (sizes read with ``Shape``), then drop ``crop_begin``
    elements at the start and ``crop_tail`` at the end of each axis (the trailing ``s − 1`` zeros
    included)."""
    n = len(strides)
    if any(s > 1 for s in strides):
        merged = b.op(
            "Concat",
            [
                b.const(prefix, [0, 0], np.int64),
                b.op("Mul", [b.op("Shape", [x], prefix, start=2), b.const(prefix, strides, np.int64)], prefix),
            ],
            prefix,
            axis=0,
        )
        x = b.op("Unsqueeze", [x, b.const(prefix, [3 + 2 * i for i in range(n)], np.int64)], prefix)
        pads = [0] * (2 + 2 * n) + [0, 0] + [p for s in strides for p in (0, s - 1)]
        x = b.op("Pad", [x, b.const(prefix, pads, np.int64)], prefix)
        x = b.op("Reshape", [x, merged], prefix)
    if any(crop_begin) or any(crop_tail):
        end = np.iinfo(np.int64).max
        x = b.slice(x, crop_begin, [-t if t else end for t in crop_tail], list(range(2, 2 + n)), prefix)
    return x


def _check_pads_size_free(node: onnx.NodeProto, attrs: dict) -> None:
    """Symbolic spatial input sizes: refuse pads that depend on them (output_shape, auto_pad SAME)."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        raise CompileError(
            f"model: ConvTranspose {node.name!r} has symbolic spatial input sizes and pads that "
            "depend on them (output_shape or auto_pad SAME); export with static spatial sizes or "
            "explicit pads"
        )


def _check_static_output(ctx: RewriteContext, node: onnx.NodeProto, out_shape: list[int]) -> None:
    """A static output shape must be non-empty and agree with ONNX shape inference where it has one."""
    if any(d <= 0 for d in out_shape[2:]):
        raise CompileError(f"model: ConvTranspose {node.name!r} has an empty output {out_shape[2:]}")
    inferred = ctx.shapes.get(node.output[0])
    if inferred and all(d is not None for d in inferred[1:]) and list(inferred[1:]) != out_shape[1:]:
        raise RuntimeError(f"ConvTranspose {node.name!r}: computed output {out_shape} ≠ inferred {inferred}")
