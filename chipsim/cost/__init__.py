"""Energy and latency per inference: an estimate from the compiled model's operation counts
priced by a cost model calibrated on published analog chips (docs/energy.md).

    from chipsim.cost import estimate, CostEstimator
    est = estimate(chip, batch=1)                 # CostEstimate: energy_j, latency_s, layers, per_sample
    est.to_dict()                                 # JSON-able, labelled as an estimate
    CostEstimator(chip).request(batch=8)          # (energy_j, latency_s) of one request, cached

Modules: :mod:`~chipsim.cost.cost_model` (constants and their sources), :mod:`~chipsim.cost.counts`
(tile MVMs, MACs, conversions and digital operations from the graph; over
:mod:`~chipsim.cost.shapes`, :mod:`~chipsim.cost.analog_layers` and :mod:`~chipsim.cost.digital_ops`),
:mod:`~chipsim.cost.estimate` (pricing, schedule, JSON).
"""

from chipsim.cost.cost_model import (
    COST_MODELS,
    DEFAULT_COST_MODEL,
    CostModel,
    cost_model_for,
    get_cost_model,
    hermes_cost_model,
)
from chipsim.cost.counts import GraphCounts, count_chip, count_graph
from chipsim.cost.errors import CostError
from chipsim.cost.estimate import ESTIMATE_NOTE, CostEstimate, CostEstimator, LayerCost, estimate, price

__all__ = [
    "COST_MODELS",
    "DEFAULT_COST_MODEL",
    "ESTIMATE_NOTE",
    "CostError",
    "CostEstimate",
    "CostEstimator",
    "CostModel",
    "GraphCounts",
    "LayerCost",
    "cost_model_for",
    "count_chip",
    "count_graph",
    "estimate",
    "get_cost_model",
    "hermes_cost_model",
    "price",
]
