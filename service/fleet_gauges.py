"""A fleet's figures for /metrics, from its last evaluation report: yield per (age, GDC) and the
percentiles of the age at which chips breach the SLO."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from chipsim.fleet import BreachStatus
from chipsim.fleet.stats import PERCENTILES


@dataclass(frozen=True)
class FleetGauges:
    """A fleet's figures from its last evaluation, for /metrics (replaced whole, never edited)."""

    yield_ratio: dict[tuple[str, str], float] = field(default_factory=dict)  # (age label, gdc) → share
    breach_age_s: dict[str, float] = field(default_factory=dict)  # percentile ("5") → age, s; GDC on
    # age label → its age, s: what the dashboard orders the yield bars by (labels sort as text)
    age_s: dict[str, float] = field(default_factory=dict)


def age_label(age_s: float) -> str:
    """A compact label for an age in seconds ('1y', '30d', '1h', '90s'), exact where it can be."""
    for unit, seconds in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        n = age_s / seconds
        if n >= 1 and math.isclose(n, round(n), rel_tol=0, abs_tol=1e-9):
            return f"{round(n)}{unit}"
    return f"{age_s:g}s"


def fleet_gauges(report: dict[str, Any]) -> FleetGauges:
    """Yield per (age, gdc) and the GDC-on breach-age percentiles of an evaluation report; a
    percentile that is not breached by the last age is left out, one breached at the first age is
    reported at its bracket's upper end (the first age)."""
    yields = {
        (age_label(entry["age_s"]), gdc): entry[f"gdc_{gdc}"]["yield"]["share"]
        for entry in report["results"]
        for gdc in ("on", "off")
    }
    ages = {}
    for q in PERCENTILES:
        b = report["breach"]["gdc_on"][f"p{q}"]
        if b["status"] == BreachStatus.BREACHED:
            ages[f"{q}"] = b["age_s"]
        elif b["status"] == BreachStatus.BREACHED_AT_FIRST:
            ages[f"{q}"] = b["bracket_s"][1]
    age_s = {age_label(entry["age_s"]): float(entry["age_s"]) for entry in report["results"]}
    return FleetGauges(yield_ratio=yields, breach_age_s=ages, age_s=age_s)
