"""What the compiler hands the chip and the runtime: the layer plans and the compiled model.

A :class:`LayerPlan` says where one analog layer sits in the compiled graph (its tiles, the
names of their graph inputs, its output shape); the runtime fills those inputs with the
read-out weights of an age (:mod:`chipsim.compiler.weight_packing`). Plans are stored as JSON in
a chip's ``meta["plans"]``, so their fields are part of the chip format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from chipsim.modes import CONV_KINDS, LayerKind
from chipsim.state import ChipState, LayerSpec

#: Layout of the compiled graph (one product per tile part, integer DAC/ADC units; 3: flat per-MVM
#: noise inputs, reshaped in the graph to each tile's output as it is shaped in a run; 4: either
#: lowering of :class:`~chipsim.modes.GraphLowering`, named in the chip's ``meta["graph_lowering"]``,
#: the plans saying what the weight packing must match: ``lean`` and ``out_factor``; 5: the channel
#: slice of a tiled Conv padded to a multiple of 4, its weight inputs likewise, see
#: lowering.CONV_CHANNEL_ALIGN). A chip stores
#: the graph it was programmed with; a runtime recompiles chips of another layout from their
#: stored model (their physical state does not depend on it).
GRAPH_FORMAT = 5

#: LayerPlan fields that describe the graph, not the devices: a recompiled chip may change them.
GRAPH_FIELDS = ("lean", "out_factor", "channel_align")

#: Per-tile weight inputs of the compiled graph, one per product (see lowering.tile_parts).
WEIGHT_INPUTS = ("w", "r", "a", "v")


class CompileError(ValueError):
    """The model cannot be programmed; the message says why and what to do."""

    field = "model"


@dataclass
class LayerPlan:
    """How one analog layer (one set of devices) sits in the compiled graph.

    A layer is *read* once per use: a weight initializer used by several nodes, or a
    recurrence's weights at every time step, is one layer with several reads. All reads share
    the tiles' weight and scale inputs; each has its own per-MVM noise inputs (independent
    draws), named by :meth:`input_names` of its :meth:`read_view`.
    """

    index: int  # position in ChipState.layers
    name: str
    node: str  # the original node's name (the first node that reads the layer)
    kind: str  # a LayerKind value
    weight_name: str
    tiles: list[tuple[int, int]]
    cols: int
    out_shape: list[int]  # per-sample output shape of the first read, batch dimension = 1
    conv_shape: list[int] | None = None  # (cols, channels per group, *kernel) for conv tiles
    tile_channels: list[tuple[int, int]] | None = None  # channels (within a group) of each conv tile
    #: Conv groups: the layer's rows are one group's ``channels·kernel``, its columns all the
    #: groups' outputs (group g owns columns ``g·cols/groups …``); each column has devices only
    #: for its own group's rows, and the tiles run as one Conv with ``group = groups``.
    groups: int = 1
    #: Per-sample output shape of each further read (reads 1, 2, …; read 0 is ``out_shape``).
    reads: list[list[int]] = field(default_factory=list)
    #: Which read this plan describes: 0 in a stored plan, j in :meth:`read_view` ``(j)``.
    read: int = 0
    #: Lowered by :mod:`chipsim.compiler.lean` (its weight inputs: one per part, the IR ramp negated).
    lean: bool = False
    #: Positive factor on the layer's outputs (ADC scales and digital bias): the next layer's DAC
    #: scale ``1/(r·step)`` folded in (:mod:`chipsim.compiler.folding`); 1 when nothing is folded.
    out_factor: float = 1.0
    #: A tiled Conv's channel slices are padded with zero channels to a multiple of this in the
    #: graph and the weight inputs (:func:`chipsim.compiler.lowering.tile_channel_pad`); 1: none.
    channel_align: int = 1

    def __post_init__(self) -> None:
        self.kind = LayerKind(self.kind).value  # a plain string, as stored in the chip's JSON

    @property
    def is_conv(self) -> bool:
        return self.kind in CONV_KINDS

    @property
    def n_reads(self) -> int:
        return 1 + len(self.reads)

    def read_view(self, j: int) -> LayerPlan:
        """The plan as read ``j`` sees it: its output shape and its own noise inputs (the
        weights and scales stay the layer's)."""
        if not 0 <= j < self.n_reads:
            raise IndexError(f"layer {self.name!r} has {self.n_reads} reads, not {j + 1}")
        return replace(self, out_shape=list(self.reads[j - 1]) if j else list(self.out_shape), read=j)

    def input_names(self, k: int) -> dict[str, str]:
        p = f"chip/l{self.index}/t{k}/"
        names = {n: p + n for n in (*WEIGHT_INPUTS, "scale", "noise")}
        if self.read:
            names["noise"] = f"chip/l{self.index}/u{self.read}/t{k}/noise"
        return names

    def noise_inputs(self) -> list[tuple[str, list[int]]]:
        """(name, per-sample shape) of the noise input of every read and tile, in draw order."""
        out = []
        for j in range(self.n_reads):
            view = self.read_view(j)
            out += [(view.input_names(k)["noise"], view.out_shape) for k in range(len(self.tiles))]
        return out


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
    digital_parameters: int = 0  # float constants not on the chip (biases, norms, weights of digital ops)
    digital_weight_nodes: list[dict[str, Any]] = field(default_factory=list)  # weight-bearing nodes left digital
    #: Per layer, the nodes reading it (``node.name or op_type``; the first holds it): a weight
    #: shared by several nodes is one layer with several readers. Not stored in the chip.
    layer_readers: list[list[str]] = field(default_factory=list)
    #: the GraphLowering the graph was written with (stored as the chip's ``meta["graph_lowering"]``)
    lowering: str = "lean"

    def physical(self) -> list[dict[str, Any]]:
        """The plans without their :data:`GRAPH_FIELDS`: what must match a chip's programmed layers."""
        return [physical_plan(p) for p in self.plans]

    def plan_json(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.plans]

    def summary(self) -> dict[str, Any]:
        """What the compilation put on the chip and what it left digital. ``devices`` are the
        physical devices (2 per weight); ``reads`` the layer reads in one inference (a shared
        layer or a recurrence reads its devices several times)."""
        weights = sum(int(s.weight.size) for s in self.specs)
        return {
            "analog_layers": len(self.specs),
            "tiles": sum(len(p.tiles) for p in self.plans),
            "weights": weights,
            "devices": 2 * weights,
            "reads": sum(p.n_reads for p in self.plans),
            "kinds": {k: sum(p.kind == k for p in self.plans) for k in sorted({p.kind for p in self.plans})},
            "digital_nodes": self.digital_nodes,
            "digital_parameters": self.digital_parameters,
            "digital_weight_nodes": list(self.digital_weight_nodes),
        }

    def uncalibrated_layers(self) -> list[str]:
        """Layers whose DAC input range is the default (no metadata, calibration or eval data)."""
        return [s.name for s in self.specs if s.meta.get("input_range_source") == "default"]


def physical_plan(plan: LayerPlan) -> dict[str, Any]:
    """``plan`` as a dict without the fields that describe the graph (:data:`GRAPH_FIELDS`)."""
    return {k: v for k, v in asdict(plan).items() if k not in GRAPH_FIELDS}


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
