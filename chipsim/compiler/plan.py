"""What the compiler hands the chip and the runtime: the layer plans and the compiled model.

A :class:`LayerPlan` says where one analog layer sits in the compiled graph (its tiles, the
names of their graph inputs, its output shape); the runtime fills those inputs with the
read-out weights of an age (:mod:`chipsim.compiler.weight_packing`). Plans are stored as JSON in
a chip's ``meta["plans"]``, so their fields are part of the chip format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from chipsim.modes import LayerKind
from chipsim.state import ChipState, LayerSpec

#: Layout of the compiled graph (one product per tile part, integer DAC/ADC units). A chip stores
#: the graph it was programmed with; a runtime recompiles chips of another layout from their
#: stored model (their physical state does not depend on it).
GRAPH_FORMAT = 2

#: Per-tile weight inputs of the compiled graph, one per product (see lowering.tile_parts).
WEIGHT_INPUTS = ("w", "r", "a", "v")


class CompileError(ValueError):
    """The model cannot be programmed; the message says why and what to do."""

    field = "model"


@dataclass
class LayerPlan:
    """How one analog layer (or one group of a grouped Conv) sits in the compiled graph."""

    index: int  # position in ChipState.layers
    name: str
    node: str  # the original node's name
    kind: str  # a LayerKind value: "matmul" | "gemm" | "conv"
    weight_name: str
    tiles: list[tuple[int, int]]
    cols: int
    out_shape: list[int]  # per-sample output shape, batch dimension = 1
    conv_shape: list[int] | None = None  # (cols, channels, *kernel) for conv tiles
    tile_channels: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        self.kind = LayerKind(self.kind).value  # a plain string, as stored in the chip's JSON

    @property
    def is_conv(self) -> bool:
        return self.kind == LayerKind.CONV

    def input_names(self, k: int) -> dict[str, str]:
        p = f"chip/l{self.index}/t{k}/"
        return {n: p + n for n in (*WEIGHT_INPUTS, "scale", "noise")}


@dataclass
class CompiledModel:
    """Result of compilation: layer specs to program, the rewritten graph, and its plan."""

    specs: list[LayerSpec]
    plans: list[LayerPlan]
    graph: bytes
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    metadata: dict[str, str] = field(default_factory=dict)
    digital_nodes: int = 0

    def plan_json(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.plans]

    def uncalibrated_layers(self) -> list[str]:
        """Layers whose DAC input range is the default (no metadata, calibration or eval data)."""
        return [s.name for s in self.specs if s.meta.get("input_range_source") == "default"]


def load_plans(chip: ChipState) -> list[LayerPlan]:
    """The layer plans a chip was programmed with (from its JSON ``meta["plans"]``)."""
    plans = []
    for p in chip.meta["plans"]:
        p = dict(p)
        p["tiles"] = [tuple(t) for t in p["tiles"]]
        if p.get("tile_channels"):
            p["tile_channels"] = [tuple(t) for t in p["tile_channels"]]
        plans.append(LayerPlan(**p))
    return plans
