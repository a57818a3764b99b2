"""Energy and latency of an inference on a programmed chip: an *estimate* (counts × prices).

Counts come from :mod:`chipsim.cost.counts`, prices from a :class:`~chipsim.cost.cost_model.CostModel`.
Schedule assumed for the latency (no pipelining anywhere, so it is an upper bound for a chip
that could overlap work):

- the tiles of one layer (and the groups of a grouped Conv) run in parallel;
- the MVMs of one layer (pixels of a Conv, tokens of a per-token MatMul) run one after the
  other on each tile;
- layers, the digital work and the samples of a batch run one after the other.

So a batch costs ``batch ×`` one sample in energy and in latency.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from chipsim.cost.analog_layers import AnalogLayerCounts, chip_plans
from chipsim.cost.cost_model import OPS_PER_MAC, CostModel, cost_model_for, profile_warnings
from chipsim.cost.counts import GraphCounts, count_graph
from chipsim.cost.errors import CostError
from chipsim.cost.shapes import check_batch, check_shape, data_inputs, shape_skeleton
from chipsim.state import ChipState

#: The label every serialised estimate carries.
ESTIMATE_NOTE = (
    "estimate, not a measurement: operation counts of the compiled model priced by a cost model "
    "calibrated on published chips (chipsim.cost, docs/energy.md)"
)


def _per(n: int, batch: int) -> int | float:
    q, r = divmod(n, batch)
    return q if r == 0 else n / batch


@dataclass(frozen=True)
class EnergyBreakdown:
    """Energy by component, J."""

    tile_mvm_j: float = 0.0
    array_j: float = 0.0
    dac_j: float = 0.0
    adc_j: float = 0.0
    digital_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.tile_mvm_j + self.array_j + self.dac_j + self.adc_j + self.digital_j

    def scaled(self, f: float) -> EnergyBreakdown:
        return EnergyBreakdown(
            self.tile_mvm_j * f, self.array_j * f, self.dac_j * f, self.adc_j * f, self.digital_j * f
        )

    def __add__(self, o: EnergyBreakdown) -> EnergyBreakdown:
        return EnergyBreakdown(
            self.tile_mvm_j + o.tile_mvm_j,
            self.array_j + o.array_j,
            self.dac_j + o.dac_j,
            self.adc_j + o.adc_j,
            self.digital_j + o.digital_j,
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "tile_mvm": self.tile_mvm_j,
            "array": self.array_j,
            "dac": self.dac_j,
            "adc": self.adc_j,
            "digital": self.digital_j,
        }


@dataclass(frozen=True)
class LayerCost:
    """One analog layer (a weight-bearing node of the model), **per sample**."""

    name: str
    kind: str
    chip_layers: tuple[str, ...]
    tiles: int
    rows: int  # inputs per MVM (Σ over tiles and groups)
    cols: int  # outputs per MVM (Σ over groups)
    mvms: int | float  # applications: 1 (Dense), H_out·W_out (Conv), T (per-token MatMul)
    tile_mvms: int | float
    analog_macs: int | float
    dac_conversions: int | float
    adc_conversions: int | float
    digital_ops: int | float  # partial sums over tiles and bias
    energy_j: float
    latency_s: float
    breakdown: EnergyBreakdown

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "chip_layers": list(self.chip_layers),
            "tiles": self.tiles,
            "rows": self.rows,
            "cols": self.cols,
            "mvms": self.mvms,
            "tile_mvms": self.tile_mvms,
            "analog_macs": self.analog_macs,
            "dac_conversions": self.dac_conversions,
            "adc_conversions": self.adc_conversions,
            "digital_ops": self.digital_ops,
            "energy_j": self.energy_j,
            "latency_s": self.latency_s,
            "energy_breakdown_j": self.breakdown.to_dict(),
        }


@dataclass(frozen=True)
class DigitalCost:
    """The model's digital nodes (outside the crossbars), **per sample**."""

    nodes: int
    ops: int | float
    by_op: dict[str, int | float]
    energy_j: float
    latency_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "ops": self.ops,
            "ops_by_type": dict(self.by_op),
            "energy_j": self.energy_j,
            "latency_s": self.latency_s,
        }


@dataclass(frozen=True)
class SampleCost:
    """Totals for one sample: analog layers plus digital nodes."""

    energy_j: float
    latency_s: float
    tile_mvms: int | float
    analog_macs: int | float
    dac_conversions: int | float
    adc_conversions: int | float
    digital_ops: int | float
    breakdown: EnergyBreakdown

    @property
    def tops_per_w(self) -> float:
        """Effective efficiency: (2 ops per analog MAC + digital ops) per joule, in TOPS/W."""
        ops = OPS_PER_MAC * self.analog_macs + self.digital_ops
        return ops / self.energy_j / 1e12 if self.energy_j > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_j": self.energy_j,
            "latency_s": self.latency_s,
            "tile_mvms": self.tile_mvms,
            "analog_macs": self.analog_macs,
            "dac_conversions": self.dac_conversions,
            "adc_conversions": self.adc_conversions,
            "digital_ops": self.digital_ops,
            "tops_per_w": self.tops_per_w,
            "energy_breakdown_j": self.breakdown.to_dict(),
        }


@dataclass(frozen=True)
class CostEstimate:
    """Estimated energy (J) and latency (s) of one request of ``batch`` samples."""

    cost_model: CostModel
    batch: int
    energy_j: float  # the whole batch
    latency_s: float  # the whole batch
    per_sample: SampleCost
    layers: tuple[LayerCost, ...]  # per sample
    digital: DigitalCost  # per sample
    warnings: tuple[str, ...] = ()

    def to_dict(self, constants: bool = True) -> dict[str, Any]:
        """JSON-able form; ``constants=False`` leaves out the cost model's constants and sources."""
        out: dict[str, Any] = {
            "estimate": True,
            "note": ESTIMATE_NOTE,
            "cost_model": self.cost_model.name,
            "batch": self.batch,
            "energy_j": self.energy_j,
            "latency_s": self.latency_s,
            "per_sample": self.per_sample.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "digital": self.digital.to_dict(),
            "warnings": list(self.warnings),
        }
        if constants:
            out["constants"] = self.cost_model.model_dump(mode="json", exclude={"name"})
        return out


def price(counts: GraphCounts, model: CostModel, warnings: Sequence[str] = ()) -> CostEstimate:
    """Price operation counts with a cost model (see the module docstring for the schedule)."""
    b = counts.batch
    layers: list[LayerCost] = []
    total = EnergyBreakdown()
    latency = 0.0
    for c in counts.layers:
        e = _layer_energy(c, model)
        t = c.mvms * model.t_tile_mvm_s + c.digital_ops * model.t_digital_op_s
        total += e
        latency += t
        layers.append(
            LayerCost(
                name=c.name,
                kind=c.kind,
                chip_layers=c.chip_layers,
                tiles=c.tiles,
                rows=c.rows,
                cols=c.cols,
                mvms=_per(c.mvms, b),
                tile_mvms=_per(c.tile_mvms, b),
                analog_macs=_per(c.analog_macs, b),
                dac_conversions=_per(c.dac_conversions, b),
                adc_conversions=_per(c.adc_conversions, b),
                digital_ops=_per(c.digital_ops, b),
                energy_j=e.total_j / b,
                latency_s=t / b,
                breakdown=e.scaled(1 / b),
            )
        )
    d = counts.digital
    e_dig = d.ops * model.e_digital_op_j
    t_dig = d.ops * model.t_digital_op_s
    total += EnergyBreakdown(digital_j=e_dig)
    latency += t_dig
    digital = DigitalCost(
        nodes=d.nodes,
        ops=_per(d.ops, b),
        by_op={k: _per(v, b) for k, v in d.by_op.items()},
        energy_j=e_dig / b,
        latency_s=t_dig / b,
    )
    energy = total.total_j
    sample = SampleCost(
        energy_j=energy / b,
        latency_s=latency / b,
        tile_mvms=_per(sum(c.tile_mvms for c in counts.layers), b),
        analog_macs=_per(sum(c.analog_macs for c in counts.layers), b),
        dac_conversions=_per(sum(c.dac_conversions for c in counts.layers), b),
        adc_conversions=_per(sum(c.adc_conversions for c in counts.layers), b),
        digital_ops=_per(d.ops + sum(c.digital_ops for c in counts.layers), b),
        breakdown=total.scaled(1 / b),
    )
    return CostEstimate(
        cost_model=model,
        batch=b,
        energy_j=energy,
        latency_s=latency,
        per_sample=sample,
        layers=tuple(layers),
        digital=digital,
        warnings=(*warnings, *counts.warnings),
    )


def _layer_energy(c: AnalogLayerCounts, m: CostModel) -> EnergyBreakdown:
    return EnergyBreakdown(
        tile_mvm_j=c.tile_mvms * m.e_tile_mvm_j,
        array_j=c.analog_macs * m.e_mac_j,
        dac_j=c.dac_conversions * m.e_dac_j,
        adc_j=c.adc_conversions * m.e_adc_j,
        digital_j=c.digital_ops * m.e_digital_op_j,
    )


class CostEstimator:
    """Estimates for one chip: parses its model once; :meth:`request` caches the per-sample
    cost by the inputs' non-batch shape (a request costs a dict look-up after the first).
    Thread-safe."""

    CACHE_ENTRIES = 64

    def __init__(self, chip: ChipState, cost_model: CostModel | str | None = None):
        self.chip_id = chip.chip_id
        self.cost_model = cost_model_for(chip.profile, cost_model)
        self._plans = chip_plans(chip)
        self._model = shape_skeleton(onnx.load_from_string(chip.attachments["model.onnx"]))
        self._input_names = [i.name for i in data_inputs(self._model)]
        self._warnings = tuple(profile_warnings(chip.profile, self.cost_model))
        self._cache: dict[Any, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def estimate(
        self, batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None
    ) -> CostEstimate:
        """The full estimate at ``batch`` (default 1), or at the given input shapes (their
        leading dimension is the batch; symbolic dimensions not given: batch or 1)."""
        if batch is not None:
            check_batch(batch)
        counts = count_graph(self._model, self._plans, batch, input_shapes)
        return price(counts, self.cost_model, self._warnings)

    def request(self, batch: int, input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[float, float]:
        """``(energy_j, latency_s)`` of one request of ``batch`` samples (inputs of
        ``input_shapes`` when the model has symbolic non-batch dimensions)."""
        batch = check_batch(batch)
        shapes = {k: check_shape(s, f"inputs.{k}") for k, s in (input_shapes or {}).items() if s is not None}
        for name, s in shapes.items():
            if not s or s[0] != batch:
                raise CostError(
                    f"inputs.{name}: leading dimension {s[:1]} is not the batch {batch}", field=f"inputs.{name}"
                )
        key = tuple((n, tuple(shapes[n][1:])) for n in sorted(shapes))
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            one = self.estimate(batch=1, input_shapes={n: [1, *s[1:]] for n, s in shapes.items()} or None)
            hit = (one.per_sample.energy_j, one.per_sample.latency_s)
            with self._lock:
                if len(self._cache) >= self.CACHE_ENTRIES:
                    self._cache.clear()
                self._cache[key] = hit
        return hit[0] * batch, hit[1] * batch


def estimate(
    chip: ChipState,
    batch: int | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    cost_model: CostModel | str | None = None,
) -> CostEstimate:
    """Estimated energy and latency of running ``batch`` samples (default 1) on ``chip``;
    ``cost_model`` (a model or a name) defaults to the chip profile's."""
    return CostEstimator(chip, cost_model).estimate(batch, input_shapes)
