"""Fleet statistics without chips: the Wilson interval, distributions over chips, time to breach
by log-age interpolation with censoring, and the report built from synthetic rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chipsim.fleet import (
    BreachStatus,
    BreachTime,
    EvalRow,
    Fleet,
    FleetChip,
    FleetEvalSpec,
    FleetSpec,
    breach_from_evaluation,
    breach_percentile,
    distribution,
    seconds_until_breach,
    summarise,
    time_to_breach,
    wilson_interval,
)
from chipsim.fleet.stats import Z95

DAY, YEAR = 86400.0, 365 * 86400.0


# ----------------------------------------------------------------------------- Wilson
def test_wilson_by_hand():
    # 8 of 10, z = 1.9599640: z² = 3.8414588; denominator 1 + z²/n = 1.38414588;
    # centre (0.8 + 3.8414588/20) / 1.38414588 = 0.99207294/1.38414588 = 0.7167402;
    # half-width 1.9599640·sqrt(0.8·0.2/10 + 3.8414588/400) / 1.38414588
    #          = 1.9599640·sqrt(0.02560365)/1.38414588 = 0.3136166/1.38414588 = 0.2265777
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.7167402 - 0.2265777, abs=2e-7)
    assert hi == pytest.approx(0.7167402 + 0.2265777, abs=2e-7)
    assert Z95 == pytest.approx(1.959963985, abs=1e-9)


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (score, no continuity
        # correction), printed to 4 decimals.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_examples(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 5)
    assert hi == 1.0 and 0 < lo < 1
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


@pytest.mark.parametrize("p", [0.3, 0.5, 0.8, 0.9])
def test_wilson_coverage_on_simulated_binomials(p):
    # 4000 simulated fleets of n = 50 chips with true yield p. The share of intervals containing p
    # has a Monte-Carlo SE of sqrt(0.95·0.05/4000) = 0.0034; Wilson's exact coverage at n = 50
    # oscillates within about ±0.015 of 0.95 for these p (Brown, Cai & DasGupta 2001, Stat. Sci.
    # 16:101, Fig. 5). So [0.925, 0.975] allows both (~0.015 + 3 SE). A Wald interval, or z for
    # 90 %, gives ~0.90 or less at p = 0.9 and fails this.
    rng = np.random.default_rng(1234)
    n, trials = 50, 4000
    ks = rng.binomial(n, p, size=trials)
    covered = sum(lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in ks))
    assert 0.925 <= covered / trials <= 0.975


# ----------------------------------------------------------------------------- distributions
def test_distribution_by_hand():
    d = distribution([0.9, 0.8, 1.0, 0.7])
    assert d["mean"] == pytest.approx(0.85)
    # sample std: deviations ±0.05, ±0.15 → sqrt((2·0.0025 + 2·0.0225)/3) = sqrt(0.05/3)
    assert d["std"] == pytest.approx(math.sqrt(0.05 / 3))
    # type 7 percentiles of sorted [0.7, 0.8, 0.9, 1.0]: position q·(n−1)
    assert d["p50"] == pytest.approx(0.85)
    assert d["p5"] == pytest.approx(0.7 + 0.15 * 0.1)  # position 0.15
    assert d["p95"] == pytest.approx(0.9 + 0.85 * 0.1)  # position 2.85
    assert distribution([0.5])["std"] == 0.0


# ----------------------------------------------------------------------------- time to breach
AGES = [1.0, 60.0, 3600.0, DAY, 30 * DAY, YEAR, 10 * YEAR]


def test_breach_recovers_a_known_crossing_of_a_log_linear_curve():
    # m(t) = 0.95 − 0.02·log10(t) crosses θ = 0.85 at log10 t = 5, i.e. t* = 1e5 s exactly.
    values = [0.95 - 0.02 * math.log10(t) for t in AGES]
    b = time_to_breach(AGES, values, 0.85)
    assert b.status == BreachStatus.BREACHED
    assert b.age_s == pytest.approx(1e5, rel=1e-9)
    assert b.bracket_s == (DAY, 30 * DAY)


def test_breach_of_a_curved_curve_lies_in_its_bracket_and_near_the_truth():
    # m(t) = 0.95 − 0.004·(log10 t)²: crossing θ = 0.8 at log10 t = sqrt(37.5) = 6.1237 (1.33e6 s).
    # Between the grid points 1 d and 30 d the chord is below the concave curve, so the estimate
    # is early; in log10 units the chord errs by less than the bracket width (1.48 decades).
    f = lambda t: 0.95 - 0.004 * math.log10(t) ** 2  # noqa: E731
    b = time_to_breach(AGES, [f(t) for t in AGES], 0.8)
    truth = 10 ** math.sqrt(37.5)
    assert b.bracket_s[0] <= b.age_s <= b.bracket_s[1] and b.bracket_s[0] <= truth <= b.bracket_s[1]
    assert b.age_s < truth and abs(math.log10(b.age_s) - math.log10(truth)) < 0.15


def test_breach_censoring_and_first_crossing():
    never = time_to_breach(AGES, [0.9] * 7, 0.8)
    assert never == BreachTime(BreachStatus.NOT_BREACHED, None, (10 * YEAR, None))
    first = time_to_breach(AGES, [0.7] * 7, 0.8)
    assert first == BreachTime(BreachStatus.BREACHED_AT_FIRST, None, (0.0, 1.0))
    # exactly at the threshold meets it; a dip that recovers reports its first crossing
    dip = time_to_breach(AGES, [0.9, 0.8, 0.7, 0.9, 0.9, 0.9, 0.9], 0.8)
    assert dip.bracket_s == (60.0, 3600.0) and dip.age_s == pytest.approx(60.0)
    with pytest.raises(ValueError):
        time_to_breach([10.0, 1.0], [0.9, 0.9], 0.8)


def test_breach_percentiles_with_censored_chips():
    t = lambda lo, hi, at: BreachTime(BreachStatus.BREACHED, at, (lo, hi))  # noqa: E731
    chips = [
        BreachTime(BreachStatus.BREACHED_AT_FIRST, None, (0.0, 1.0)),
        t(60.0, 3600.0, 500.0),
        t(3600.0, DAY, 9000.0),
        t(DAY, 30 * DAY, 2e5),
        BreachTime(BreachStatus.NOT_BREACHED, None, (10 * YEAR, None)),
    ]
    # n = 5: p5 → 1st smallest (censored low), p50 → 3rd, p95 → 5th (censored high)
    assert breach_percentile(chips, 5).status == BreachStatus.BREACHED_AT_FIRST
    p50 = breach_percentile(chips, 50)
    assert p50.age_s == 9000.0 and p50.bracket_s == (3600.0, DAY)
    p95 = breach_percentile(chips, 95)
    assert p95.status == BreachStatus.NOT_BREACHED and p95.bracket_s == (10 * YEAR, None)
    assert breach_percentile(chips, 40).age_s == 500.0  # ⌈0.4·5⌉ = 2nd


def test_breach_from_a_single_chip_evaluate_response():
    results = [
        {"age": a, "age_s": s, "gdc_on": {"mean": m}, "gdc_off": {"mean": m - 0.1}}
        for a, s, m in [("0s", 0.0, 0.95), ("1s", 1.0, 0.95), ("1d", DAY, 0.93), ("1y", YEAR, 0.85)]
    ]
    on = breach_from_evaluation(results, 0.9)
    # 0.93 → 0.85 crosses 0.9 at 3/8 of the way from log(1 d) to log(1 y)
    assert on.age_s == pytest.approx(math.exp(math.log(DAY) + 0.375 * (math.log(YEAR) - math.log(DAY))))
    assert breach_from_evaluation(results, 0.9, key="gdc_off").status == BreachStatus.BREACHED_AT_FIRST
    # normalised: 0.93/0.95 = 0.979 ≥ 0.95 > 0.85/0.95 = 0.895
    assert breach_from_evaluation(results, 0.95, fp_accuracy=0.95).bracket_s == (DAY, YEAR)


def test_seconds_until_breach():
    b = BreachTime(BreachStatus.BREACHED, 10 * DAY, (DAY, 30 * DAY))
    assert seconds_until_breach(b, chip_age_s=4 * DAY, time_scale=86400) == pytest.approx(6 * DAY / 86400)
    assert seconds_until_breach(b, chip_age_s=20 * DAY, time_scale=1) == 0.0
    assert seconds_until_breach(BreachTime(BreachStatus.NOT_BREACHED, None, (YEAR, None)), 0, 1) is None


# ----------------------------------------------------------------------------- the report
def _fleet(n, fp=0.9):
    spec = FleetSpec(fleet_id="syn", n_chips=n, seed=0)
    return Fleet(
        spec=spec,
        chips=[FleetChip(i, spec.chip_id(i), i, "d") for i in range(n)],
        model_digest="m",
        fp_accuracy=fp,
        eval_samples=100,
        created_at=0.0,
        programming_s=0.0,
        profile={"gdc": "global"},
    )


def test_summarise_synthetic_rows():
    # 4 chips, 2 ages, 2 read-outs, 100 samples. Chip c at age a (GDC on) has correct counts
    # (90 − 5c − 10a ± 1) over its two read-outs: mean 90 − 5c − 10a, read-out std 1/100.
    fleet = _fleet(4)
    spec = FleetEvalSpec.parse(
        {"ages_s": [DAY, YEAR], "readouts": 2, "slo": {"metric": "normalised_accuracy", "threshold": 0.9}}
    )
    rows = []
    for c in range(4):
        for a, age in enumerate(spec.ages_s):
            for r in range(2):
                base = 90 - 5 * c - 10 * a
                rows.append(EvalRow(c, f"syn-{c:03d}", age, r, "on", "global", base + (1 if r else -1), 100))
                rows.append(EvalRow(c, f"syn-{c:03d}", age, r, "off", "off", base - 20, 100))
    rep = summarise(fleet, spec, rows)
    day_on = rep["results"][0]["gdc_on"]
    assert day_on["accuracy"]["mean"] == pytest.approx((0.90 + 0.85 + 0.80 + 0.75) / 4)
    assert day_on["readout_std_mean"] == pytest.approx(0.01)
    # normalised ≥ 0.9 ⇔ accuracy ≥ 0.81: chips 0 and 1 at 1 d, chip 0 (0.80 < 0.81) fails at 1 y
    assert day_on["yield"]["meets"] == 2 and day_on["yield"]["chips"] == 4
    assert (day_on["yield"]["ci95_low"], day_on["yield"]["ci95_high"]) == pytest.approx(wilson_interval(2, 4))
    assert rep["results"][1]["gdc_on"]["yield"]["meets"] == 0
    assert rep["results"][0]["gdc_off"]["yield"]["meets"] == 0
    b0 = rep["chips"][0]["gdc_on"]["breach"]
    # chip 0: normalised 1.0 at 1 d, 0.8/0.9 = 0.889 at 1 y; crosses 0.9 at 0.1111/0.1111... of the way:
    frac = (1.0 - 0.9) / (1.0 - 0.8 / 0.9)
    assert b0["age_s"] == pytest.approx(math.exp(math.log(DAY) + frac * (math.log(YEAR) - math.log(DAY))))
    assert rep["chips"][3]["gdc_on"]["breach"]["status"] == "breached_at_first"
    assert rep["breach"]["gdc_on"]["chips_breached"] == 2
    assert rep["breach"]["gdc_off"]["chips_breached_at_first"] == 4
    with pytest.raises(RuntimeError):
        summarise(fleet, spec, rows[:-1])  # a missing cell is an executor bug, never a silent NaN
