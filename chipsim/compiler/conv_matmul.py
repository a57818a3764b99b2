"""Conv tiles whose weights are fed per run, on few output pixels, as one batched MatMul.

onnxruntime 1.32's CPU Conv with *non-constant* weights (the ``inputs`` binding, for chips over
``AGEDCHIP_INITIALIZERS_MAX_BYTES``) runs image by image: an im2col and a GEMM of ``Ho·Wo``
columns per image and group. On a 1x1 or 2x2 pixel output that is a matrix-vector product per
image, which reads the whole weight tensor once per image of the batch. resnet18 at 32x32 has
its largest layers (layer3, layer4: 10.9M of its 11.7M weights) at 2x2 and 1x1 pixels.

This rewrite, applied to the session graph of the ``inputs`` binding only (constant weights take
onnxruntime's NCHWc path, which is fast there), turns such a Conv into an im2col written in the
graph (Pad, one strided Slice per kernel tap) and one MatMul per group over the whole batch,
``W[g] (M/G × Cg·T) @ cols[g] (Cg·T × N·Ho·Wo)``. Taps that only ever read padding are left out
(with their weights): on a 1x1 input a 3x3 kernel keeps its centre. Exact in real arithmetic:
the same products summed in another order (float rounding differs in the last bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from chipsim.compiler.graph_builder import GraphBuilder

#: Output pixels (Ho·Wo) up to which a Conv with graph-input weights becomes a MatMul; see
#: :func:`conv_inputs_as_matmul` and the measurement in docs/benchmarks.md.
MAX_PIXELS = 4


@dataclass(frozen=True)
class WeightFeed:
    """How the runtime feeds a rewritten Conv's weight input ``w [M, Cg, kh, kw]``, once per
    read-out: its live taps ``w[:, :, rows, cols]`` (the whole kernel for most), or, for a
    depthwise Conv (``pixels`` given), those taps as ``[T, M, Ho, Wo]``: tap-major, each tap's
    weights expanded to the output pixels, so that the graph splits them with one op and each
    product broadcasts along the batch only."""

    rows: slice  # concrete start and stop: the live taps' bounding box
    cols: slice
    kernel: tuple[int, int]
    pixels: tuple[int, int] | None = None

    @property
    def taps(self) -> int:
        return (self.rows.stop - self.rows.start) * (self.cols.stop - self.cols.start)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        if self.pixels is not None:
            taps = w[:, 0, self.rows, self.cols].reshape(w.shape[0], -1).T  # [T, M], (kh, kw) order
            return np.ascontiguousarray(np.broadcast_to(taps[:, :, None, None], (*taps.shape, *self.pixels)))
        if self.taps == self.kernel[0] * self.kernel[1]:
            return w
        return np.ascontiguousarray(w[:, :, self.rows, self.cols])

    def dims(self, m: int, cg: int) -> list[int]:
        """The shape the graph declares for the fed input."""
        if self.pixels is not None:
            return [self.taps, m, *self.pixels]
        return [m, cg, self.rows.stop - self.rows.start, self.cols.stop - self.cols.start]


def tensor_dims(model: onnx.ModelProto) -> dict[str, list[int | None]] | None:
    """Every tensor's dimensions (None where symbolic) by ONNX shape inference with data
    propagation (the per-MVM noise is reshaped to the shape of the tile's output, so without it
    the pixels after a tile are unknown); None when inference fails (e.g. a graph over
    protobuf's 2 GiB: then no rewrite, the same outputs)."""
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001
        return None
    return {
        vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
        if vi.type.tensor_type.HasField("shape")
    }


def _live_range(size: int, out: int, k: int, stride: int, dilation: int, pad: int) -> tuple[int, int] | None:
    """First and last kernel tap (along one axis) that reads an input pixel for some output pixel;
    None when every tap reads padding only."""
    live = [i for i in range(k) if any(0 <= o * stride - pad + i * dilation < size for o in range(out))]
    return (live[0], live[-1]) if live else None


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def conv_inputs_as_matmul(model: onnx.ModelProto, max_pixels: int = MAX_PIXELS) -> dict[str, WeightFeed]:
    """Rewrite, in place, every 2-D Conv of ``model`` whose weight is a graph input (not an
    initializer), whose input has static channels and pixels, and whose output has at most
    ``max_pixels`` pixels. The outputs keep their names and shapes ``[N, M, Ho, Wo]`` (N symbolic).

    Returns the rewritten Convs' weight inputs, each with its :class:`WeightFeed`: the graph
    input is declared in the shape it gives, and a caller feeds ``feed(w)``: the live taps
    ``w[:, :, rows, cols]`` (the whole kernel for most), tap-major and expanded for a depthwise
    Conv. Slicing once per read-out
    instead of in the graph: onnxruntime's strided Slice of a 3x3 kernel to its centre copies
    element by element (7 ms a layer of resnet18 at batch 64, against 1.5 ms for its MatMuls)."""
    shapes = tensor_dims(model)
    if shapes is None:
        return {}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    # a weight input read by one Conv only: its feed is sliced to that Conv's live taps
    graph_inputs = {i.name for i in model.graph.input if uses.get(i.name) == 1}
    consts = {t.name: t for t in model.graph.initializer}
    b = GraphBuilder()
    nodes: list[onnx.NodeProto] = []
    rewritten: dict[str, WeightFeed] = {}
    for node in model.graph.node:
        new = _rewrite(node, b, shapes, graph_inputs, consts, max_pixels, rewritten) if node.op_type == "Conv" else None
        nodes.extend([node] if new is None else new)
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(b.inits)
        for vi in model.graph.input:
            if vi.name in rewritten:
                m, cg = (d.dim_value for d in vi.type.tensor_type.shape.dim[:2])
                vi.type.tensor_type.shape.CopyFrom(
                    helper.make_tensor_type_proto(TensorProto.FLOAT, rewritten[vi.name].dims(m, cg)).tensor_type.shape
                )
    return rewritten


def _rewrite(
    node: onnx.NodeProto,
    b: GraphBuilder,
    shapes: dict[str, list[int | None]],
    graph_inputs: set[str],
    consts: dict[str, onnx.TensorProto],
    max_pixels: int,
    feeds: dict[str, WeightFeed],
) -> list[onnx.NodeProto] | None:
    """The nodes replacing one Conv (its weight's :class:`WeightFeed` put in ``feeds``), or None
    when it is not rewritten."""
    x, w = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    xs, ws = shapes.get(x), shapes.get(w)
    if w not in graph_inputs or xs is None or ws is None or len(xs) != 4 or None in xs[1:] or None in ws:
        return None
    if bias is not None and bias not in consts:
        return None
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    _, c_in, h, wd = xs
    m, cg, kh, kw = ws
    groups = int(a.get("group", 1))
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1 or ho * wo > max_pixels or c_in != cg * groups or m % groups:
        return None
    rows = _live_range(h, ho, kh, sh, dh, pt)
    cols = _live_range(wd, wo, kw, sw, dw, pl)
    if rows is None or cols is None:
        return None  # an output of bias only: rare enough to leave to onnxruntime
    start = len(b.nodes)
    prefix = node.name or node.output[0]
    geometry = ((h, wd), (ho, wo), (sh, sw), (dh, dw), (pt, pl), (rows, cols))
    depthwise = cg == 1 and m == groups
    # the runtime feeds only the live taps' weights (see conv_inputs_as_matmul)
    feed = WeightFeed(
        slice(rows[0], rows[1] + 1), slice(cols[0], cols[1] + 1), (kh, kw), (ho, wo) if depthwise else None
    )
    feeds[w] = feed
    t, p, out = feed.taps, ho * wo, node.output[0]
    if depthwise:
        _depthwise(b, x, w, numpy_helper.to_array(consts[bias]) if bias else None, out, prefix, geometry)
        return b.nodes[start:]
    stacked = _stack(b, _patches(b, x, prefix, *geometry), prefix)
    if groups == 1 and p == 1:  # one pixel, one group: [N, C·T] @ W[M, C·T]ᵀ, no transposes
        col = b.op("Reshape", [stacked, b.const(prefix, [-1, cg * t], np.int64)], prefix)
        wt = b.op("Reshape", [w, b.const(prefix, [m, cg * t], np.int64)], prefix)
        inputs = [col, wt] + ([b.const(prefix, numpy_helper.to_array(consts[bias]))] if bias else [])
        y = b.op("Gemm", inputs, prefix, transB=1)
        b.op("Reshape", [y, b.const(prefix, [-1, m, 1, 1], np.int64)], prefix, output=out)
        return b.nodes[start:]
    # [N, G, Cg·T, P] → [G, Cg·T, N, P] → [G, Cg·T, N·P]: a tap's rows follow the weights' (c, kh, kw) order
    col = b.op("Reshape", [stacked, b.const(prefix, [0, groups, cg * t, p], np.int64)], prefix)
    col = b.op("Transpose", [col], prefix, perm=[1, 2, 0, 3])
    col = b.op("Reshape", [col, b.const(prefix, [groups, cg * t, -1], np.int64)], prefix)
    wt = b.op("Reshape", [w, b.const(prefix, [groups, m // groups, cg * t], np.int64)], prefix)
    y = b.op("MatMul", [wt, col], prefix)  # [G, M/G, N·P] = [M, N, P] in memory
    y = b.op("Reshape", [y, b.const(prefix, [m, -1, ho, wo], np.int64)], prefix)
    if bias is None:
        b.op("Transpose", [y], prefix, output=out, perm=[1, 0, 2, 3])
    else:
        y = b.op("Transpose", [y], prefix, perm=[1, 0, 2, 3])
        bias4 = numpy_helper.to_array(consts[bias]).reshape(m, 1, 1).astype(np.float32)
        b.op("Add", [y, b.const(prefix, bias4)], prefix, output=out)
    return b.nodes[start:]


def _patches(
    b: GraphBuilder,
    x: str,
    prefix: str,
    size: tuple[int, int],
    out: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int],
    live: tuple[tuple[int, int], tuple[int, int]],
    channels_last: bool = False,
) -> list[str]:
    """The im2col of ``x`` for the live taps: one ``[N, C, Ho, Wo]`` per tap, in (kh, kw) order
    (``[N, Ho, Wo, C]`` from an ``x`` in ``[N, H, W, C]`` with ``channels_last``).
    The live taps are a bounding box: a dead tap inside it reads padding, zeros."""
    (h, wd), (ho, wo), (sh, sw), (dh, dw), (pt, pl) = size, out, stride, dilation, pad
    (i0, i1), (j0, j1) = live
    # the padding the live taps need, and one strided Slice per tap: [N, C, Ho, Wo] each
    pad_top = max(0, pt - i0 * dh)
    pad_left = max(0, pl - j0 * dw)
    last_row = (ho - 1) * sh - pt + i1 * dh  # the last input row a live tap reads (may be padding)
    last_col = (wo - 1) * sw - pl + j1 * dw
    pad_bottom, pad_right = max(0, last_row - (h - 1)), max(0, last_col - (wd - 1))
    xp = x
    if pad_top or pad_left or pad_bottom or pad_right:
        before, after = [0, pad_top, pad_left, 0], [0, pad_bottom, pad_right, 0]
        if not channels_last:
            before, after = [0, 0, pad_top, pad_left], [0, 0, pad_bottom, pad_right]
        xp = b.op("Pad", [x, b.const(prefix, before + after, np.int64)], prefix)
    hp, wp = h + pad_top + pad_bottom, wd + pad_left + pad_right
    taps = []
    for i in range(i0, i1 + 1):
        for j in range(j0, j1 + 1):
            r0 = i * dh - pt + pad_top  # first input row of tap i, in the padded input
            c0 = j * dw - pl + pad_left
            if (r0, c0) == (0, 0) and (ho, wo) == (hp, wp) and (ho == 1 or sh == 1) and (wo == 1 or sw == 1):
                taps.append(xp)  # the whole input
                continue
            axes = [1, 2] if channels_last else [2, 3]
            bounds = [[r0, c0], [r0 + (ho - 1) * sh + 1, c0 + (wo - 1) * sw + 1], axes, [sh, sw]]
            taps.append(b.op("Slice", [xp, *(b.const(prefix, v, np.int64) for v in bounds)], prefix))
    return taps


def _stack(b: GraphBuilder, taps: list[str], prefix: str) -> str:
    """The taps as one ``[N, C, T, Ho, Wo]`` (``[N, C, Ho, Wo]`` = ``[N, C, 1, Ho·Wo]`` when T = 1)."""
    if len(taps) == 1:
        return taps[0]
    axis2 = b.const(prefix, [2], np.int64)
    return b.op("Concat", [b.op("Unsqueeze", [s, axis2], prefix) for s in taps], prefix, axis=2)


def _depthwise(b: GraphBuilder, x: str, w: str, bias: np.ndarray | None, out: str, prefix: str, geometry) -> None:
    """A depthwise Conv (one channel a group) as ``Σ_t tap_t ⊙ w_t``: the weight input is fed
    ``[T, M, Ho, Wo]`` (:class:`WeightFeed`), split into its taps by one op, so that each product
    broadcasts along the batch only (onnxruntime 1.32 broadcasts ``[1, M, 1, 1]`` against
    ``[N, M, 2, 2]`` in spans of 4 elements, 24 ns an element; taking the taps channels-last
    does not help: its transpose optimiser moves the Transposes back out), and one variadic Sum
    adds them. A batched MatMul of ``[1 × T] @ [T × N·P]`` per channel runs hundreds of tiny
    products, and stacking the taps costs T copies of the input. Per-tap Gathers and a chain of
    Adds (the first version) cost 4 ops a tap: at batch 1 that made mobilenet_v2 slower than
    onnxruntime's Conv."""
    taps = _patches(b, x, prefix, *geometry)
    t = len(taps)
    per_tap = [w] if t == 1 else b.split(w, 0, [1] * t, prefix)  # [1, M, Ho, Wo] each
    terms = [b.op("Mul", [tap, wk], prefix) for tap, wk in zip(taps, per_tap, strict=True)]
    if bias is not None:  # expanded to the pixels for the same reason as the weights
        (_, (ho, wo), *_rest) = geometry
        terms.append(b.const(prefix, np.broadcast_to(bias.reshape(1, -1, 1, 1), (1, len(bias), ho, wo)), np.float32))
    if len(terms) == 1:
        b.op("Identity", terms, prefix, output=out)
    else:
        b.op("Sum", terms, prefix, output=out)
