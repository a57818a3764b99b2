"""Age parsing: seconds, unit durations, ISO-8601 (Y = 365 d, M = 30 d), and the errors."""

from __future__ import annotations

import pytest

from service.durations import DAY, HOUR, MONTH, SCHEDULE, YEAR, DurationError, format_age, parse_age


@pytest.mark.parametrize(
    "value, seconds",
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("3600", 3600.0),
        ("1e3", 1000.0),
        (" 42 ", 42.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("30d", 30 * DAY),
        ("1w", 7 * DAY),
        ("1y", YEAR),
        ("10y", 10 * YEAR),
        ("2mo", 2 * MONTH),
        ("5m", 300.0),
        ("5min", 300.0),
        ("1d12h", 1.5 * DAY),
        ("2h 30min", 2.5 * HOUR),
        ("3 days", 3 * DAY),
        ("1H", HOUR),
        (".5d", 0.5 * DAY),
        ("P1Y", YEAR),
        ("P1Y2M", YEAR + 2 * MONTH),
        ("P1Y2M10DT2H30M", YEAR + 2 * MONTH + 10 * DAY + 2.5 * HOUR),
        ("PT90S", 90.0),
        ("PT1M", 60.0),
        ("P1M", MONTH),
        ("P2W", 14 * DAY),
        ("P0D", 0.0),
        ("PT0.5S", 0.5),
        ("P1,5D", 1.5 * DAY),
        ("p1d", DAY),
        ("P1000Y", 1000 * YEAR),
    ],
)
def test_valid_ages(value, seconds):
    assert parse_age(value) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    "value, needle",
    [
        (-1, "≥ 0"),
        ("-1h", "≥ 0"),
        ("-5", "≥ 0"),
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "not a duration"),
        ("1x", "unknown unit"),
        ("1 fortnight", "unknown unit"),
        ("h", "not a duration"),
        ("1h-2m", "not a duration"),
        ("P", "ISO-8601"),
        ("PT", "ISO-8601"),
        ("P1H", "ISO-8601"),
        ("P1YT", "ISO-8601"),
        ("PT1D", "ISO-8601"),
        ("P1Y1Y", "ISO-8601"),
        ("1001y", "maximum"),
        (1e300, "maximum"),
        ("1e400", "finite"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (10**400, "too large"),
        (True, "boolean"),
        (None, "NoneType"),
        ([1], "list"),
        ("1" * 100, "longer than"),
        ("NaN", "not a duration"),
        ("inf", "not a duration"),
    ],
)
def test_invalid_ages_name_the_field(value, needle):
    with pytest.raises(DurationError) as info:
        parse_age(value, field="ages.3")
    assert str(info.value).startswith("ages.3: ") and needle in str(info.value)
    assert info.value.field == "ages.3" and isinstance(info.value, ValueError)


def test_schedule_and_labels():
    assert list(SCHEDULE) == ["1s", "1h", "1d", "1w", "30d", "1y", "10y"]
    for label, seconds in SCHEDULE.items():
        assert parse_age(label) == seconds and format_age(seconds) == label
    assert format_age(5400.0) == "1.5h" and format_age(12.0) == "12s" and format_age(2 * YEAR) == "2y"


def test_parsed_strings_are_cached_but_errors_are_raised_every_time():
    from service.durations import DurationError, _text_seconds, parse_duration

    _text_seconds.cache_clear()
    assert parse_duration("1d") == parse_duration(" 1d ") == 86400.0
    assert _text_seconds.cache_info().hits == 0 and _text_seconds.cache_info().misses == 2  # keyed by the text
    assert parse_duration("1d") == 86400.0 and _text_seconds.cache_info().hits == 1
    for _ in range(2):
        with pytest.raises(DurationError, match="when"):
            parse_duration("3 fortnights", "when")
