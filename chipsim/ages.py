"""Chip ages: time constants, the standard age schedule and age validation, written once.

A chip's age is seconds since programming. The calendar units follow the convention the whole
project uses for drift (and ISO-8601 durations as the service parses them): a month is 30 days,
a year 365 days, so "10 y" is exactly 3.1536e8 s on every path.
"""

from __future__ import annotations

import math

MINUTE_S = 60.0
HOUR_S = 3600.0
DAY_S = 86400.0
WEEK_S = 7 * DAY_S
MONTH_S = 30 * DAY_S  #: a month is 30 days
YEAR_S = 365 * DAY_S  #: a year is 365 days

#: The standard evaluation schedule, 1 s … 10 y (label → seconds, in order): the ages of the
#: metrics contract and of the accuracy-vs-age studies.
STANDARD_AGES_S: dict[str, float] = {
    "1s": 1.0,
    "1h": HOUR_S,
    "1d": DAY_S,
    "1w": WEEK_S,
    "30d": 30 * DAY_S,
    "1y": YEAR_S,
    "10y": 10 * YEAR_S,
}

#: The oldest age a chip can be read at: 1000 years. Beyond that the drift law is an
#: extrapolation over 10 decades past the data it was fitted to (Joshi 2020 measured to ~1e6 s).
MAX_AGE_S = 1000 * YEAR_S


def check_age(age_s: float, field: str = "age") -> float:
    """A valid age in seconds: finite, ≥ 0 and ≤ MAX_AGE_S, else ``ValueError`` naming ``field``."""
    try:
        age = float(age_s)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a number of seconds, got {age_s!r}") from None
    if not math.isfinite(age):
        raise ValueError(f"{field}: must be finite, got {age_s!r}")
    if age < 0:
        raise ValueError(f"{field}: must be ≥ 0 s (seconds since programming), got {age}")
    if age > MAX_AGE_S:
        raise ValueError(f"{field}: {age:g} s is beyond the supported maximum of {MAX_AGE_S:g} s (1000 years)")
    return age
