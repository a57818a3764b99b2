"""Time to SLO breach: the age at which a chip's accuracy curve crosses its threshold.

**Method.** A chip is evaluated at ages t₁ < … < t_K (seconds, > 0), giving values m_k (its
accuracy, or normalised accuracy, averaged over read-outs). A value meets the SLO when
``m_k >= threshold``. The breach is the *first* evaluated age that misses, t_k, after one that
meets, t_{k−1}; between them the curve is taken as linear in log-age (drift is a power law in
time, so accuracy changes roughly evenly per decade), and the crossing is

    log t* = log t_{k−1} + (m_{k−1} − θ) / (m_{k−1} − m_k) · (log t_k − log t_{k−1}).

**Uncertainty.** The evaluated points only say that the breach lies in ``[t_{k−1}, t_k]``: that
bracket is reported with every estimate. It covers the interpolation, not the read-out noise
of the m_k (see the read-out spread in the evaluation) nor later recoveries (a curve that dips
below and comes back is reported at its first crossing, the conservative choice).

**Censoring.** ``breached_at_first``: already below at t₁, the breach is in ``[0, t₁]``;
``not_breached``: never below up to t_K, the breach is in ``[t_K, ∞)``. Neither has a point
estimate (``age_s`` is None).

**Fleet percentiles.** The q-th percentile of breach age over chips is the inverse empirical
CDF (the ⌈q·n⌉-th smallest; no interpolation between chips, so censored chips stay ordered:
``breached_at_first`` before every estimate, ``not_breached`` after). Its bracket is the same
order statistic of the chips' bracket bounds, which contains the true order statistic since
every chip's true crossing lies inside its own bracket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class BreachStatus(StrEnum):
    BREACHED = "breached"  # crossed between two evaluated ages: interpolated
    BREACHED_AT_FIRST = "breached_at_first"  # left-censored: already below at the first age
    NOT_BREACHED = "not_breached"  # right-censored: still meets at the last age


@dataclass(frozen=True)
class BreachTime:
    status: BreachStatus
    age_s: float | None  # the interpolated crossing (s); None when censored
    bracket_s: tuple[float, float | None]  # the crossing lies in [low, high]; high None = ∞

    def as_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "age_s": self.age_s, "bracket_s": list(self.bracket_s)}

    def sort_key(self) -> float:
        """Where the chip ranks among breach ages (censored chips at their bracket's ends)."""
        if self.status == BreachStatus.BREACHED_AT_FIRST:
            return -math.inf
        if self.status == BreachStatus.NOT_BREACHED:
            return math.inf
        return float(self.age_s)  # type: ignore[arg-type]


def time_to_breach(ages_s: Sequence[float], values: Sequence[float], threshold: float) -> BreachTime:
    """The age at which ``values`` (at ``ages_s``, increasing, > 0) first fall below ``threshold``."""
    if len(ages_s) != len(values) or not ages_s:
        raise ValueError("time_to_breach: need as many values as ages, at least one")
    t = [float(a) for a in ages_s]
    if any(a <= 0 for a in t) or any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError("time_to_breach: ages must be > 0 and strictly increasing (log-age interpolation)")
    m = [float(v) for v in values]
    if m[0] < threshold:
        return BreachTime(BreachStatus.BREACHED_AT_FIRST, None, (0.0, t[0]))
    for k in range(1, len(t)):
        if m[k] < threshold:
            frac = (m[k - 1] - threshold) / (m[k - 1] - m[k])  # in [0, 1): m[k−1] ≥ θ > m[k]
            log_t = math.log(t[k - 1]) + frac * (math.log(t[k]) - math.log(t[k - 1]))
            return BreachTime(BreachStatus.BREACHED, math.exp(log_t), (t[k - 1], t[k]))
    return BreachTime(BreachStatus.NOT_BREACHED, None, (t[-1], None))


def breach_percentile(breaches: Sequence[BreachTime], q: float) -> BreachTime:
    """The q-th percentile (0 < q ≤ 100) of breach age over chips (module docstring)."""
    if not breaches:
        raise ValueError("breach_percentile: no chips")
    if not 0 < q <= 100:
        raise ValueError(f"breach_percentile: q must be in (0, 100], got {q}")
    n = len(breaches)
    rank = max(1, math.ceil(q / 100 * n)) - 1  # 0-based ⌈q·n⌉-th smallest
    chosen = sorted(breaches, key=BreachTime.sort_key)[rank]
    lows = sorted(b.bracket_s[0] for b in breaches)
    highs = sorted(math.inf if b.bracket_s[1] is None else b.bracket_s[1] for b in breaches)
    high = highs[rank]
    return BreachTime(chosen.status, chosen.age_s, (lows[rank], None if math.isinf(high) else high))


def breach_from_evaluation(
    results: Sequence[dict[str, Any]], threshold: float, key: str = "gdc_on", fp_accuracy: float | None = None
) -> BreachTime:
    """Time to breach of a single chip from its ``POST /chips/{id}/evaluate`` ``results`` rows
    (``{"age_s", "gdc_on": {"mean"…}, "gdc_off": …}``); ``fp_accuracy`` turns the threshold
    into one on normalised accuracy. Rows at age 0 are skipped (no log-age)."""
    rows = sorted((r for r in results if float(r["age_s"]) > 0), key=lambda r: float(r["age_s"]))
    if not rows:
        raise ValueError("breach_from_evaluation: no result at an age > 0")
    scale = 1.0 / fp_accuracy if fp_accuracy else 1.0
    return time_to_breach([float(r["age_s"]) for r in rows], [float(r[key]["mean"]) * scale for r in rows], threshold)


def seconds_until_breach(breach: BreachTime, chip_age_s: float, time_scale: float) -> float | None:
    """Wall-clock seconds from now until the predicted breach of a chip that is ``chip_age_s``
    old and ages ``time_scale`` chip seconds per wall second (the dashboard's "breach within N
    days"). 0 when already breached; None when not breached by the last evaluated age or when
    the chip does not age (time scale 0). Uses the interpolated age, else the bracket's upper end."""
    if breach.status == BreachStatus.NOT_BREACHED:
        return None
    at = breach.age_s if breach.age_s is not None else breach.bracket_s[1]
    remaining = max(0.0, float(at) - chip_age_s)  # type: ignore[arg-type]
    if remaining == 0.0:
        return 0.0
    return None if time_scale <= 0 else remaining / time_scale
