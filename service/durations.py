"""Chip ages: seconds or human durations (DESIGN §5).

Accepted forms (whitespace is ignored, units are case-insensitive except ISO-8601's ``M``):

- a number of seconds: ``3600``, ``1.5e4``, or the same as a string ``"3600"``;
- a duration made of ``<number><unit>`` terms: ``"90s"``, ``"1.5h"``, ``"30d"``, ``"1w"``, ``"1y"``,
  ``"1d12h"``, ``"2h 30min"``. Units: ``ms``; ``s``/``sec``; ``m``/``min`` (minutes); ``h``/``hr``;
  ``d``/``day``; ``w``/``wk``/``week``; ``mo``/``month`` (= 30 d); ``y``/``yr``/``year`` (= 365 d),
  plurals allowed;
- an ISO-8601 duration ``PnYnMnWnDTnHnMnS`` (``"P1Y2M10DT2H30M"``, ``"PT90S"``, ``"P2W"``), where a
  year ``Y`` is 365 d and a month ``M`` (before ``T``) is 30 d; fractions are allowed in any field.

Every result is checked with :func:`chipsim.check_age`: finite, ≥ 0 and at most 1000 years.
Errors are :class:`DurationError` (a ``ValueError``) whose message starts with the field name.
Ages from the wall clock are rounded by :func:`quantise_age`. The time constants and the fixed
evaluation schedule of the service are defined here, once.
"""

from __future__ import annotations

import functools
import math
import re

from chipsim import check_age
from chipsim.ages import DAY_S as DAY
from chipsim.ages import HOUR_S as HOUR
from chipsim.ages import MAX_AGE_S, STANDARD_AGES_S
from chipsim.ages import MINUTE_S as MINUTE
from chipsim.ages import MONTH_S as MONTH  # a month is 30 days (ISO-8601 ``M`` before ``T``, and ``mo``)
from chipsim.ages import WEEK_S as WEEK
from chipsim.ages import YEAR_S as YEAR  # a year is 365 days (ISO-8601 ``Y`` and ``y``)

UNITS: dict[str, float] = {
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": MINUTE,
    "min": MINUTE,
    "mins": MINUTE,
    "minute": MINUTE,
    "minutes": MINUTE,
    "h": HOUR,
    "hr": HOUR,
    "hrs": HOUR,
    "hour": HOUR,
    "hours": HOUR,
    "d": DAY,
    "day": DAY,
    "days": DAY,
    "w": WEEK,
    "wk": WEEK,
    "wks": WEEK,
    "week": WEEK,
    "weeks": WEEK,
    "mo": MONTH,
    "mon": MONTH,
    "month": MONTH,
    "months": MONTH,
    "y": YEAR,
    "yr": YEAR,
    "yrs": YEAR,
    "year": YEAR,
    "years": YEAR,
}

#: The fixed evaluation schedule of the metrics contract (label → seconds), in order.
SCHEDULE: dict[str, float] = STANDARD_AGES_S

MAX_DURATION_CHARS = 64
#: Wall-clock ages are rounded to this many steps per decade (≤ 2.3 % apart, so the drift factor
#: ((t+t0)/t0)^−ν with ν ≤ 0.1 moves by < 0.23 % between steps) so that consecutive requests
#: share a cached read-out instead of computing one per request.
AGE_STEPS_PER_DECADE = 100

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(rf"({_NUM})([a-zA-Z]+)")
_TERMS = re.compile(rf"(?:{_NUM}[a-zA-Z]+)+")
_PLAIN = re.compile(rf"[+]?{_NUM}")
_ISO_NUM = r"(\d+(?:[.,]\d+)?)"
_ISO = re.compile(
    rf"P(?:{_ISO_NUM}Y)?(?:{_ISO_NUM}M)?(?:{_ISO_NUM}W)?(?:{_ISO_NUM}D)?"
    rf"(?:T(?:{_ISO_NUM}H)?(?:{_ISO_NUM}M)?(?:{_ISO_NUM}S)?)?"
)


class DurationError(ValueError):
    """A malformed or out-of-range age; ``field`` names the request field."""

    def __init__(self, message: str, field: str = "age"):
        super().__init__(message)
        self.field = field


def _iso(text: str, field: str) -> float:
    m = _ISO.fullmatch(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise DurationError(
            f"{field}: {text!r} is not an ISO-8601 duration (PnYnMnWnDTnHnMnS, e.g. 'P1Y2M10DT2H30M' or 'PT90S')",
            field,
        )
    factors = (YEAR, MONTH, WEEK, DAY, HOUR, MINUTE, 1.0)
    return sum(float(v.replace(",", ".")) * f for v, f in zip(m.groups(), factors) if v is not None)


def _units(text: str, field: str) -> float:
    compact = re.sub(r"\s+", "", text)
    if not _TERMS.fullmatch(compact):
        raise DurationError(
            f"{field}: {text!r} is not a duration; use seconds (3600), '<number><unit>' terms such as '90s', "
            "'1.5h', '30d', '1w', '1y', '1d12h' (units ms, s, m/min, h, d, w, mo = 30 d, y = 365 d) or ISO-8601 "
            "('P1Y2M', 'PT90S')",
            field,
        )
    total = 0.0
    for num, unit in _TERM.findall(compact):
        factor = UNITS.get(unit.lower())
        if factor is None:
            raise DurationError(
                f"{field}: unknown unit {unit!r} in {text!r}; known units: ms, s, m/min, h, d, w, mo (30 d), y (365 d)",
                field,
            )
        total += float(num) * factor
    return total


@functools.lru_cache(maxsize=256)
def _text_seconds(value: str, field: str) -> float:
    """Seconds of a duration string. Cached: every batch-1 request parses its age ("1d"), which
    was 3 % of a batched request's event-loop time; errors are raised each time (not cached)."""
    text = value.strip()
    if not text:
        raise DurationError(f"{field}: empty duration", field)
    if len(text) > MAX_DURATION_CHARS:
        raise DurationError(f"{field}: duration longer than {MAX_DURATION_CHARS} characters", field)
    if _PLAIN.fullmatch(text):
        return float(text)
    if text[0] in "Pp":
        return _iso(text.upper(), field)
    return _units(text, field)


def parse_duration(value: object, field: str = "age") -> float:
    """Seconds from a number or a duration string; no range check beyond finiteness."""
    if isinstance(value, bool):
        raise DurationError(f"{field}: expected seconds or a duration string, got a boolean", field)
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise DurationError(f"{field}: number too large", field) from None
    elif isinstance(value, str):
        seconds = _text_seconds(value, field)
    else:
        raise DurationError(
            f"{field}: expected seconds (a number) or a duration string, got {type(value).__name__}", field
        )
    if not math.isfinite(seconds):
        raise DurationError(f"{field}: must be finite", field)
    return seconds


def parse_age(value: object, field: str = "age") -> float:
    """A chip age in seconds from seconds or a duration, validated by :func:`chipsim.check_age`."""
    if isinstance(value, str) and value.strip().startswith("-"):
        raise DurationError(f"{field}: must be ≥ 0 s (time since programming), got {value.strip()!r}", field)
    seconds = parse_duration(value, field)
    try:
        return check_age(seconds, field)
    except ValueError as err:
        raise DurationError(str(err), field) from None


def format_age(seconds: float) -> str:
    """A short human label for an age in seconds (``'1h'``, ``'30d'``, ``'1.5y'``, ``'90s'``)."""
    for label, s in SCHEDULE.items():
        if seconds == s:
            return label
    for unit, s in (("y", YEAR), ("d", DAY), ("h", HOUR), ("min", MINUTE)):
        if seconds >= s:
            return f"{seconds / s:.3g}{unit}"
    return f"{seconds:.3g}s"


def quantise_age(age_s: float) -> float:
    """A wall-clock-derived age rounded onto a log grid (see AGE_STEPS_PER_DECADE), in [0, MAX_AGE_S]."""
    if not math.isfinite(age_s) or age_s <= 0:
        return 0.0
    if age_s < 1.0:
        return round(age_s, 2)
    q = 10 ** (round(math.log10(age_s) * AGE_STEPS_PER_DECADE) / AGE_STEPS_PER_DECADE)
    return float(min(float(f"{q:.6g}"), MAX_AGE_S))
