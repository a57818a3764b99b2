"""A served chip's gauges: the background refresher's latest numbers for one chip, read by /metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The gauges' ``gdc`` label → the GDC request it stands for (the profile's mode, or off).
GAUGE_GDC: dict[str, bool] = {"on": True, "off": False}


@dataclass
class ChipGauges:
    """The background refresher's latest numbers for one chip (read by /metrics)."""

    age_s: float | None = None
    alpha: dict[str, float] = field(default_factory=dict)
    weight_error: float | None = None
    weight_error_gdc: float | None = None
    g_ratio: float | None = None
    current_accuracy: dict[str, float] = field(default_factory=dict)  # GAUGE_GDC label → accuracy
    eval_accuracy: dict[tuple[str, str], float] = field(default_factory=dict)  # (age label, gdc) → accuracy
    refreshed_at: float | None = None
    # Unix time of the predicted SLO breach (GDC on) from the last evaluation with an SLO; None when
    # that evaluation predicted none up to its last age (or there was none).
    slo_breach_at: float | None = None
