"""bench.scale_http: the settings a large upload needs, the page's verdict, and (slow) a tiny MLP
through a real server."""

from __future__ import annotations

import pytest

from bench import scale_http as S


def test_settings_cover_the_archive_and_two_devices_per_weight():
    env = S.settings_for(500_000_000, 2_000_000_000)
    assert int(env["AGEDCHIP_MAX_UPLOAD_BYTES"]) > int(env["AGEDCHIP_MAX_ARCHIVE_BYTES"]) > 2_000_000_000
    assert int(env["AGEDCHIP_MAX_DEVICES"]) >= 1_000_000_000
    assert int(env["AGEDCHIP_MEMORY_BUDGET"]) < S.HOST_BYTES


def _res(weights: int, peak: int, status: int = 200) -> dict:
    phase = {"status": status, "seconds": 1.0, "peak_rss_bytes": peak}
    return {
        "command": "c",
        "when": "w",
        "machine": "m",
        "cpu_busy_before": "0%",
        "result": {
            "width": 1,
            "layers": 8,
            "weights": weights,
            "archive_bytes": 4 * weights,
            "archive_build_s": 1.0,
            "settings": {},
            "rss_idle_bytes": 10**8,
            "program": {**phase, "status": 201},
            "first_new_age": phase,
            "same_age_again": phase,
            "second_new_age": phase,
        },
    }


def test_the_verdict_needs_500m_weights_answered_below_24_gb():
    assert "served on a 24 GB host: met" in S.render(_res(500_000_000, 18 * 10**9))
    assert "not shown" in S.render(_res(10_000_000, 10**9))  # too small to show it
    assert "not shown" in S.render(_res(500_000_000, 25 * 10**9))  # too much memory
    assert "refused or failed" in S.render(_res(500_000_000, 18 * 10**9, status=429))


@pytest.mark.slow  # starts a server (~10 s)
def test_a_tiny_mlp_programs_and_answers_through_the_server(tmp_path):
    r = S.run(64, 2, tmp_path)
    assert r["program"]["status"] == 201, r["program"]
    assert [r[k]["status"] for k in ("first_new_age", "same_age_again", "second_new_age")] == [200, 200, 200]
    assert r["program"]["peak_rss_bytes"] >= r["rss_idle_bytes"] > 0
