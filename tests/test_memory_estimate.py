"""The memory guard's estimate of a read-out at a new age (``service.memory.readout_cost``) against
what ``python -m bench.scale`` measured (bench/results/scale.json), and what it admits for the
500M-weight MLP of the README's "Models up to 500M weights" (issue 20, finding 7)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.memory import DEFAULT_BUDGET_SHARE, SAFETY_MARGIN, MemoryGuard, readout_cost
from service.problems import Unavailable

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "bench" / "results" / "scale.json"
#: Resident bytes per analog weight a programmed chip certainly holds (chipsim/state.py): two
#: float16 devices per pair, two pairs (8 B), and the float32 target weights (4 B).
CHIP_STATE_B_PER_WEIGHT = 12
#: Issue 20's target host: "models up to 500M weights on 24 GB".
HOST_BYTES = 24 * 10**9
#: What the service holds beyond bench.scale's child before any chip: the service's RSS with no
#: chip is 100 MB (create_app in a TestClient, Settings(default_model=''), service.memory.rss_bytes;
#: 2026-11-30), all of it counted here although the child's interpreter (~77 MB) is in its rows.
SERVICE_BASE_BYTES = 128 << 20


def _rows() -> list[dict]:
    return [m for m in json.loads(SCALE.read_text())["models"] if m["peak_rss_first_new_age_bytes"] is not None]


def _increment(row: dict) -> int:
    """Peak bytes the first new age added over the RSS just before it: measured where the row
    records that RSS, else bounded above by taking it as the RSS before programming plus the
    chip's certain state (test_the_chip_state_bound_holds_where_measured checks the bound)."""
    before = row.get("rss_before_first_new_age_bytes")
    if before is None:
        before = row["rss_before_program_bytes"] + CHIP_STATE_B_PER_WEIGHT * row["weights"]
    return row["peak_rss_first_new_age_bytes"] - before


def _resident_before_readout(row: dict) -> int:
    """RSS just before the first new age: measured where recorded, else the RSS before
    programming plus the largest programming growth per weight measured on any row."""
    if row.get("rss_before_first_new_age_bytes") is not None:
        return row["rss_before_first_new_age_bytes"]
    measured = [r for r in _rows() if r.get("rss_before_first_new_age_bytes") is not None]
    growth = max((r["rss_before_first_new_age_bytes"] - r["rss_before_program_bytes"]) / r["weights"] for r in measured)
    return row["rss_before_program_bytes"] + int(growth * row["weights"])


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("### Models up to 500M weights", 1)[1].split("\n### ", 1)[0]


def test_the_rows_cover_a_cnn_and_mlps_up_to_500m_weights():
    models = [r["model"] for r in _rows()]
    assert any(m.startswith("resnet18") for m in models)
    assert max(r["weights"] for r in _rows()) >= 500_000_000
    # the rows that record the RSS before the read-out: the small CNN and MLP at least
    assert sum(r.get("rss_before_first_new_age_bytes") is not None for r in _rows()) >= 2


def test_the_chip_state_bound_holds_where_measured():
    """Where the RSS before the read-out was recorded, programming left at least the chip's 12
    B/weight resident: the bound used for the rows that predate that column is an upper bound."""
    for r in _rows():
        if r.get("rss_before_first_new_age_bytes") is not None:
            grown = r["rss_before_first_new_age_bytes"] - r["rss_before_program_bytes"]
            assert grown >= CHIP_STATE_B_PER_WEIGHT * r["weights"], r["model"]


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["model"])
def test_the_estimate_covers_each_measured_read_out_with_its_margin(row):
    """A re-measurement (``python -m bench.scale --replace``) above the estimate fails here."""
    assert readout_cost(row["weights"], row["binding"]) >= SAFETY_MARGIN * _increment(row), row["model"]


def test_the_estimate_is_what_was_measured_not_padded():
    """The constants are the measurement × the margin, rounded up: the tightest row within 10 %."""
    tightest = min(readout_cost(r["weights"], r["binding"]) / (SAFETY_MARGIN * _increment(r)) for r in _rows())
    assert 1 <= tightest <= 1.10


def test_500m_mlp_first_read_out_does_not_fit_the_default_budget_of_24_gb():
    """The measurement itself says no: the first new age's peak (bench's child, the model's bytes
    resident as the service's chip holds them) exceeds 75 % of 24 GB, so the guard refuses."""
    row = next(r for r in _rows() if r["weights"] >= 500_000_000)
    default = int(DEFAULT_BUDGET_SHARE * HOST_BYTES)
    assert row["peak_rss_first_new_age_bytes"] > default
    resident = _resident_before_readout(row) + SERVICE_BASE_BYTES
    guard = MemoryGuard(default, rss=lambda: resident)
    with pytest.raises(Unavailable), guard.reserve(readout_cost(row["weights"], row["binding"]), "age", "infer"):
        pass


def test_the_readme_budget_admits_the_500m_read_out_and_stays_below_the_host():
    """The README's budget for a 500M-weight chip on 24 GB admits its first new age (with the
    margin) yet stays below the host's memory, so the guard still refuses what does not fit."""
    budget = int(re.search(r"AGEDCHIP_MEMORY_BUDGET=(\d+)", _readme_section()).group(1))
    assert budget < HOST_BYTES
    row = next(r for r in _rows() if r["weights"] >= 500_000_000)
    resident = _resident_before_readout(row) + SERVICE_BASE_BYTES
    guard = MemoryGuard(budget, rss=lambda: resident)
    with guard.reserve(readout_cost(row["weights"], row["binding"]), "age", "infer"):
        assert guard.pending_bytes > 0
    # a second new age while the first is cached is refused: the cached read-out holds at least
    # its float32 weights (4 B/weight)
    cached = resident + 4 * row["weights"]
    with (
        pytest.raises(Unavailable),
        MemoryGuard(budget, rss=lambda: cached).reserve(readout_cost(row["weights"], row["binding"]), "age", "infer"),
    ):
        pass


def test_through_the_service_the_readme_budget_admits_one_new_age_of_the_500m_chip():
    """bench.scale_http measured the 500M-weight chip through the HTTP service with the README's
    budget: programmed, its first new age answered, a second refused (503) while the first was
    cached, and the process's peak below the host. The guard, fed the resident sizes that run
    measured, decides the same way; and the budget one GB lower would have refused the first age."""
    res = json.loads((ROOT / "bench" / "results" / "scale_http.json").read_text())["result"]
    budget = int(re.search(r"AGEDCHIP_MEMORY_BUDGET=(\d+)", _readme_section()).group(1))
    assert res["weights"] >= 500_000_000 and int(res["settings"]["AGEDCHIP_MEMORY_BUDGET"]) == budget
    assert [res[k]["status"] for k in ("program", "first_new_age", "same_age_again", "second_new_age")] == [
        201,
        200,
        200,
        503,
    ]
    assert max(res[k]["peak_rss_bytes"] for k in ("program", "first_new_age")) < budget < HOST_BYTES
    cost = readout_cost(res["weights"], "inputs")
    with MemoryGuard(budget, rss=lambda: res["rss_after_program_bytes"]).reserve(cost, "age", "infer"):
        pass
    for used, limit in (
        (res["first_new_age"]["peak_rss_bytes"], budget),
        (res["rss_after_program_bytes"], budget - 10**9),
    ):
        with pytest.raises(Unavailable), MemoryGuard(limit, rss=lambda u=used: u).reserve(cost, "age", "infer"):
            pass
