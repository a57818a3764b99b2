"""A lean graph without the ops a read-out proved negligible (:mod:`.tile_bounds`), and its weights.

The lean lowering (:mod:`.lean`) writes a tile's IR term and ADC as

    t1 = a + c2/c3;  t3 = t1·a + c1/c3;  ir = (t3·a)·ρ      (ρ: the ramp product, weights −ir·c3)
    … Round → Clip(±L) → Mul(scale)

- ``ir_cubic``: ``c1·a + c2·a² = c2·a·(a + c1/c2)``, so with ρ's weights times ``c2/c3`` (−4, exact
  in float) ``ir = (t1'·a)·ρ'`` with ``t1' = a + c1/c2``: two elementwise passes fewer;
- ``adc_clip``: the Mul reads the Round's output, one pass fewer.

Each rewrite finds its ops from the tile's weight and scale graph inputs (``chip/l{i}/t{k}/r``,
``.../scale``) and checks the exact pattern above, every intermediate read once; where it does not
match (a tile inside a Scan body, a benchmark's free-products graph) nothing is dropped for that
tile and :func:`drop_ops` leaves it out of what it reports applied, so its weights stay as packed.
A layer read several times drops the op at every read (its weights, hence its bound, are shared).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from chipsim.compiler.plan import LayerPlan
from chipsim.compiler.tile_bounds import Drop, decide_drops
from chipsim.modes import TileDrop
from chipsim.periphery import IR_DROP_POLY
from chipsim.profiles import ChipProfile

#: Factor on the ramp product's weights when the cubic term is dropped (c2/c3: the quadratic
#: coefficient moves to the front, see the module docstring).
RAMP_FACTOR_QUADRATIC = IR_DROP_POLY[1] / IR_DROP_POLY[2]


class _Graph:
    """Producers, readers and constant values of a graph's top-level nodes, for pattern checks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.producer = {o: n for n in g.node for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.readers[i].append(n)
        self.consts = {t.name: t for t in g.initializer}

    def only_reader(self, tensor: str, op: str) -> onnx.NodeProto | None:
        r = self.readers.get(tensor, [])
        return r[0] if len(r) == 1 and r[0].op_type == op else None

    def made_by(self, tensor: str, op: str) -> onnx.NodeProto | None:
        n = self.producer.get(tensor)
        return n if n is not None and n.op_type == op else None

    def const_value(self, name: str) -> float | None:
        t = self.consts.get(name)
        if t is None:
            return None
        v = numpy_helper.to_array(t)
        return float(v.item()) if v.size == 1 else None

    def other(self, node: onnx.NodeProto, tensor: str) -> str | None:
        """The other input of a two-input node that reads ``tensor``."""
        if len(node.input) != 2 or tensor not in node.input:
            return None
        return node.input[1] if node.input[0] == tensor else node.input[0]


def _close(value: float | None, want: float) -> bool:
    return value is not None and abs(value - want) <= 1e-6 * abs(want)


def _cubic_sites(g: _Graph, layer: int, tile: int) -> list[tuple[onnx.NodeProto, ...]] | None:
    """Per read of the tile, its (A1, M2, A3, M4) nodes (see the module docstring); None unless
    every read matches."""
    c1, c2, c3 = IR_DROP_POLY
    products = g.readers.get(f"chip/l{layer}/t{tile}/r", [])
    sites = []
    for prod in products:
        if prod.op_type not in ("MatMul", "Conv"):
            return None
        m5 = g.only_reader(prod.output[0], "Mul")
        m4 = m5 and g.made_by(g.other(m5, prod.output[0]) or "", "Mul")
        a3 = m4 and g.made_by(m4.input[0], "Add")
        m2 = a3 and g.made_by(a3.input[0], "Mul")
        a1 = m2 and g.made_by(m2.input[0], "Add")
        if not (m4 and a3 and m2 and a1):
            return None
        a = a1.input[0]
        if m2.input[1] != a or m4.input[1] != a or not _close(g.const_value(a1.input[1]), c2 / c3):
            return None
        if not _close(g.const_value(a3.input[1]), c1 / c3):
            return None
        if any(len(g.readers[t]) != 1 for t in (a1.output[0], m2.output[0], a3.output[0], m4.output[0])):
            return None
        sites.append((a1, m2, a3, m4))
    return sites or None


def _clip_sites(g: _Graph, layer: int, tile: int) -> list[tuple[onnx.NodeProto, onnx.NodeProto]] | None:
    """Per read of the tile, its (Clip, Mul by scale) nodes; None unless every read matches."""
    sites = []
    scale = f"chip/l{layer}/t{tile}/scale"
    for mul in g.readers.get(scale, []):
        clipped = g.other(mul, scale) if mul.op_type == "Mul" else None
        clip = clipped and g.made_by(clipped, "Clip")
        if not clip or len(g.readers[clipped]) != 1:  # type: ignore[index]
            return None
        sites.append((clip, mul))
    return sites or None


def drop_ops(model: onnx.ModelProto, drops: Iterable[Drop]) -> tuple[onnx.ModelProto, frozenset[Drop]]:
    """A copy of the lean ``model`` without the ops of ``drops``, and the drops applied (those
    whose pattern matched; the others keep their ops)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    removed: set[str] = set()  # by output name (each node's outputs are unique)
    applied: set[Drop] = set()
    for layer, tile, what in sorted(drops):
        if what == TileDrop.IR_CUBIC:
            sites = _cubic_sites(g, layer, tile)
            for a1, m2, a3, m4 in sites or ():
                name = f"chip/l{layer}/t{tile}/drop/c1_over_c2"
                if name not in g.consts:  # shaped like c2/c3 (chipsim.compiler.session_graph gives it full rank)
                    dims = tuple(g.consts[a1.input[1]].dims) if a1.input[1] in g.consts else ()
                    t = numpy_helper.from_array(np.full(dims, IR_DROP_POLY[0] / IR_DROP_POLY[1], np.float32), name)
                    out.graph.initializer.append(t)
                    g.consts[name] = t
                a1.input[1] = name
                m4.input[0] = a1.output[0]
                removed.update((m2.output[0], a3.output[0]))
        else:
            sites = _clip_sites(g, layer, tile)  # type: ignore[assignment]
            for clip, mul in sites or ():  # type: ignore[misc]
                mul.input[list(mul.input).index(clip.output[0])] = clip.input[0]
                removed.add(clip.output[0])
        if sites:
            applied.add((layer, tile, what))
    # the constants the removed nodes read stay: onnxruntime drops unused initializers itself, and
    # a Scan body may read an outer one by name
    keep = [n for n in out.graph.node if n.output[0] not in removed]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out, frozenset(applied)


def rescale_ramps(weights: dict[str, np.ndarray], applied: Iterable[Drop]) -> None:
    """Multiply, in place, the ramp weights of every tile whose cubic term :func:`drop_ops`
    dropped by :data:`RAMP_FACTOR_QUADRATIC` (see the module docstring)."""
    for layer, tile, what in applied:
        if what == TileDrop.IR_CUBIC:
            name = f"chip/l{layer}/t{tile}/r"
            weights[name] = weights[name] * np.float32(RAMP_FACTOR_QUADRATIC)


def read_out_graph(
    graph: onnx.ModelProto,
    plans: Sequence[LayerPlan],
    ranges: Sequence[float],
    weights: dict[str, np.ndarray],
    profile: ChipProfile,
) -> tuple[onnx.ModelProto, frozenset[Drop]]:
    """The lean ``graph`` for one read-out's packed ``weights`` (rescaled in place to match): the
    ops :func:`~chipsim.compiler.tile_bounds.decide_drops` allows left out, and those dropped."""
    drops = decide_drops(plans, ranges, weights, profile)
    if not drops:
        return graph, frozenset()
    out, applied = drop_ops(graph, drops)
    rescale_ramps(weights, applied)
    return out, applied
