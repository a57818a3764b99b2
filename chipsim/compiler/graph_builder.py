"""A small builder of ONNX nodes for the compiler: unique names, constants, graph inputs.

Names come from one counter per compilation, so a model compiles to the same graph bytes every
time (the compiled graph is stored with the chip and compared when a chip is recompiled).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Collects new nodes and constant initializers with unique names."""

    def __init__(self, lean: bool = False, free_products: bool = False) -> None:
        #: the lean lowering (graph format 4, chipsim.compiler.lean) instead of the full one
        self.lean = lean
        #: benchmark only: the lean graph with its three extra products read from the ideal one
        self.free_products = free_products
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._input_names: set[str] = set()
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}/{self._n}"

    def const(self, prefix: str, value: Any, dtype=np.float32) -> str:
        name = self.name(prefix + "/c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(f"{prefix}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(prefix + "/n"), **attrs))
        return out

    def split(self, x: str, axis: int, sizes: list[int], prefix: str) -> list[str]:
        outs = [self.name(f"{prefix}/Split") for _ in sizes]
        self.nodes.append(
            helper.make_node(
                "Split", [x, self.const(prefix, sizes, np.int64)], outs, name=self.name(prefix + "/n"), axis=axis
            )
        )
        return outs

    def slice(self, x: str, starts: list[int], ends: list[int], axes: list[int], prefix: str) -> str:
        """``x[starts:ends]`` along ``axes`` (ONNX Slice with constant bounds)."""
        return self.op(
            "Slice",
            [
                x,
                self.const(prefix, starts, np.int64),
                self.const(prefix, ends, np.int64),
                self.const(prefix, axes, np.int64),
            ],
            prefix,
        )

    def graph_input(self, name: str, shape: list[Any]) -> str:
        """Declare a float graph input (once: a layer read several times declares its weight
        and scale inputs at every read)."""
        if name not in self._input_names:
            self._input_names.add(name)
            self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def take_nodes(self) -> list[onnx.NodeProto]:
        """The nodes built since the last call (one rewritten node's replacement)."""
        nodes, self.nodes = self.nodes, []
        return nodes
