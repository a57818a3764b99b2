"""The "k-product ceiling": the original model with every weight-bearing layer doing ``k`` matrix
products and nothing else (a free periphery), for ``bench.runtime``'s ceiling column.
"""

from __future__ import annotations

import numpy as np

#: Matrix products per analog tile that the DESIGN §3.3 periphery needs, each as large as the
#: digital layer's one: x'@W, x'@(ramp⊙W) (IR drop), |x'|@|W| (IR drop a_i), x'²@|W| (noise σ).
PRODUCTS_PER_TILE = 4


def product_ceiling(model: bytes, k: int = PRODUCTS_PER_TILE, form: str = "wide") -> bytes:
    """The original model with every weight-bearing layer computing ``k`` products instead of one
    and nothing else: the cost of an analog model whose periphery were free. Its speed relative to
    the digital model bounds what any exact compilation of the periphery into standard ops can
    reach. Two forms, the bench keeps the faster: ``wide`` (the weights repeated k times along the
    outputs, one product of k·N columns, the first N kept by a Slice) and ``separate`` (k−1 extra
    nodes with their own weights, whose outputs are extra graph outputs that onnxruntime computes
    but the caller does not fetch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if form not in ("wide", "separate"):
        raise ValueError(f"form: expected 'wide' or 'separate', got {form!r}")
    m = onnx.load_from_string(model)
    inits = {t.name: t for t in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2 or node.input[1] not in inits:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(inits[node.input[1]])
        if form == "separate" or attrs.get("group", 1) > 1:  # repeating a grouped Conv's outputs regroups them
            nodes.append(node)
            for i in range(1, k):  # distinct weights, so no common-subexpression elimination
                extra = onnx.NodeProto()
                extra.CopyFrom(node)
                extra.name = f"{node.name}/ceiling_{i}"
                extra.input[1] = f"{node.input[1]}/ceiling_{i}"
                extra.output[0] = f"{node.output[0]}/ceiling_{i}"
                m.graph.initializer.append(
                    numpy_helper.from_array((w * (1 + 1e-3 * i)).astype(w.dtype), extra.input[1])
                )
                m.graph.output.append(helper.make_tensor_value_info(extra.output[0], TensorProto.FLOAT, None))
                nodes.append(extra)
            continue
        out_axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and attrs.get("transB", 0)) else 1
        n = w.shape[out_axis]
        # New initializers (never edit shared ones: exporters de-duplicate equal tensors).
        node.input[1] = f"{node.output[0]}/ceiling_w"
        m.graph.initializer.append(numpy_helper.from_array(np.concatenate([w] * k, axis=out_axis), node.input[1]))
        if len(node.input) > 2 and node.input[2] in inits:  # bias (Gemm C, Conv B)
            b = numpy_helper.to_array(inits[node.input[2]])
            if b.ndim >= 1 and b.shape[-1] == n:
                node.input[2] = f"{node.output[0]}/ceiling_b"
                m.graph.initializer.append(numpy_helper.from_array(np.concatenate([b] * k, axis=-1), node.input[2]))
        wide = node.output[0] + "/ceiling_wide"
        out = node.output[0]
        node.output[0] = wide
        nodes.append(node)
        axis = 1 if node.op_type == "Conv" else -1
        consts = [
            numpy_helper.from_array(np.array([v], np.int64), f"{out}/ceiling_{i}") for i, v in enumerate((0, n, axis))
        ]
        m.graph.initializer.extend(consts)
        nodes.append(helper.make_node("Slice", [wide, *(c.name for c in consts)], [out]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m.SerializeToString()
