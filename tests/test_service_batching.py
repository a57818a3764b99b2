"""Dynamic batching of POST /infer end to end (in-process app): merged outputs equal separate
runs, seeded requests stay bit-identical and alone, merged members draw independent noise,
failures stay with their request, overload answers 429, and the settings are validated."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import chipsim.runtime
from service.app import create_app
from service.settings import Settings
from tests.service_helpers import POISON, err, make_settings, poison_infer
from tests.service_helpers import metric_value as metric

AGE = "1d"


def app(tmp_path, zoo, name: str = "state", **kw) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path / name, zoo, **kw)))


def x(n: int, seed: int) -> list:
    return np.random.default_rng(seed).random((n, 1, 8, 8)).astype(np.float32).tolist()


def post_all(c: TestClient, bodies: list[dict]) -> list:
    """The bodies posted at once (one thread each), responses in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: c.post("/infer", json=b), bodies))


def batches(c: TestClient) -> tuple[float, float]:
    """(batches run, requests merged into them) so far."""
    return metric(c, "agedchip_batch_requests_count") or 0.0, metric(c, "agedchip_batch_requests_sum") or 0.0


def logits(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"]["y"], dtype=np.float64)


# ------------------------------------------------------------------------------ equality
def test_merged_outputs_equal_separate_runs_at_zero_noise(tmp_path, zoo):
    bodies = [{"chip_id": "default", "inputs": x(n, seed), "age": AGE} for seed, n in enumerate((1, 1, 2, 1, 2, 1))]
    kw = dict(default_profile="ideal", batch_max_queue_delay_ms=1000, batch_max_size=8, infer_concurrency=1)
    with app(tmp_path, zoo, **kw) as c:
        t0 = time.monotonic()
        out = post_all(c, bodies)  # 8 samples: one full batch, started without waiting the 1 s
        seconds = time.monotonic() - t0
        assert batches(c) == (1, 6)
        chip = c.app.state.registry.get("default")
        age_s = chip.age_of(AGE)[0]
        for b, r in zip(bodies, out):
            alone = chip.runtime.run(np.asarray(b["inputs"], np.float32), age_s)[0]
            # ideal profile: no noise, no quantisation; merged and separate runs differ only in
            # the summation order onnxruntime's kernels pick per batch size (float32 rounding)
            np.testing.assert_allclose(logits(r), alone, rtol=1e-5, atol=1e-6)
            assert r.json()["batch"] == len(b["inputs"]) and r.json()["age_source"] == "request"
    assert seconds < 5.0  # well below 6 × the 1 s delay: the full batch did not wait


def test_requests_differing_in_age_read_seed_or_gdc_are_not_merged(tmp_path, zoo):
    base = {"chip_id": "default", "inputs": x(1, 0), "age": AGE}
    variants = [base, base, {**base, "age": "2d"}, {**base, "read_seed": 1}, {**base, "gdc": False}]
    with app(tmp_path, zoo, batch_max_queue_delay_ms=300, batch_max_size=8) as c:
        assert all(r.status_code == 200 for r in post_all(c, variants))
        assert batches(c) == (4, 5)  # the two identical ones merged, the others ran alone


# ------------------------------------------------------------------------------ seeds
def test_seeded_requests_are_bit_identical_with_batching_on_and_off(tmp_path, zoo):
    seeded = [{"chip_id": "default", "inputs": x(2, s), "age": AGE, "seed": 10 + s} for s in range(3)]
    unseeded = [{"chip_id": "default", "inputs": x(1, 7), "age": AGE}] * 5
    with app(tmp_path, zoo, "on", batch_max_queue_delay_ms=200, batch_max_size=8) as on:
        mixed = post_all(on, seeded + unseeded)
        assert batches(on)[1] == 5  # only the unseeded requests went through the batcher
    with app(tmp_path, zoo, "off", batch_max_size=1) as off:
        assert off.app.state.batcher is None
        alone = [off.post("/infer", json=b) for b in seeded]
    for a, b in zip(mixed[:3], alone):
        assert a.json()["outputs"] == b.json()["outputs"]  # exact: same floats, same JSON
    assert mixed[0].json()["outputs"] != mixed[1].json()["outputs"]


# ------------------------------------------------------------------------------ independence
def pair_correlations(out: np.ndarray) -> np.ndarray:
    """out[k, i, l]: round k, member i, logit l → ρ[i, j], the mean over rounds and logits of the
    product of members i's and j's logits standardised over all rounds and members."""
    z = (out - out.mean(axis=(0, 1))) / out.std(axis=(0, 1))
    return np.einsum("kil,kjl->ij", z, z) / (out.shape[0] * out.shape[2])


@pytest.mark.slow  # 40 rounds of 8 merged requests
def test_merged_requests_draw_independent_noise(tmp_path, zoo, monkeypatch):
    rng = np.random.Generator(np.random.SFC64(2024))  # fixed seed for the unseeded draws
    monkeypatch.setattr(chipsim.runtime, "thread_generator", lambda: rng)
    rounds, members = 40, 8
    body = {"chip_id": "default", "inputs": x(1, 3), "age": AGE}  # one input: only noise differs
    kw = dict(batch_max_queue_delay_ms=1000, batch_max_size=members, infer_concurrency=1)
    with app(tmp_path, zoo, **kw) as c:
        out = np.stack([np.stack([logits(r)[0] for r in post_all(c, [body] * members)]) for _ in range(rounds)])
        assert batches(c) == (rounds, rounds * members)  # every round ran as one merged batch
        # power check: two requests per round that share their noise (one seed per round)
        shared = np.stack([[logits(c.post("/infer", json={**body, "seed": k}))[0]] * 2 for k in range(rounds)])
    assert out.std(axis=(0, 1)).min() > 0  # the noise is there
    rho = pair_correlations(out)
    off_diagonal = rho[~np.eye(members, dtype=bool)]
    # Independent members: each ρ has mean ~0 and standard error ≤ 1/sqrt(rounds) = 0.16 even
    # if a request's 10 logits were fully correlated with each other (effective n ≥ rounds);
    # 0.6 is ≥ 3.8 standard errors. Shared noise (the failure) gives ρ = 1, as the power check
    # below shows.
    assert np.abs(off_diagonal).max() < 0.6, rho
    assert pair_correlations(shared)[0, 1] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ isolation
def test_a_bad_member_fails_alone(tmp_path, zoo):
    good = {"chip_id": "default", "inputs": x(1, 0), "age": AGE, "labels": [3]}
    bad = {**good, "labels": [1, 2]}  # two labels for one sample: this request's own error
    with app(tmp_path, zoo, batch_max_queue_delay_ms=1000, batch_max_size=4) as c:
        out = post_all(c, [good, bad, good, good])
        assert batches(c) == (1, 4)
    assert [r.status_code for r in out] == [200, 422, 200, 200]
    assert err(out[1]) == (422, "labels")
    assert out[0].json()["accuracy"] in (0.0, 1.0)


def test_a_member_that_breaks_the_merged_run_fails_alone(tmp_path, zoo, monkeypatch):
    with app(tmp_path, zoo, batch_max_queue_delay_ms=1000, batch_max_size=4) as c:
        calls = poison_infer(c.app.state.registry.get("default"), monkeypatch)
        good = {"chip_id": "default", "inputs": x(1, 0), "age": AGE}
        poison = {**good, "inputs": np.full((1, 1, 8, 8), POISON).tolist()}
        out = post_all(c, [good, poison, good, good])
    assert [r.status_code for r in out] == [200, 422, 200, 200]
    assert err(out[1]) == (422, "inputs.x")
    assert calls == [4, 1, 1, 1, 1]  # the merged run failed; each member then ran alone


# ------------------------------------------------------------------------------ overload
def test_overload_answers_429_and_never_hangs(tmp_path, zoo, monkeypatch):
    kw = dict(infer_concurrency=1, max_queue_infer=2, queue_timeout_s=0.5, batch_max_queue_delay_ms=0)
    body = {"chip_id": "default", "inputs": x(1, 0), "age": AGE}
    with app(tmp_path, zoo, **kw) as c, ThreadPoolExecutor(4) as pool:
        chip = c.app.state.registry.get("default")
        release, real = threading.Event(), chip.infer
        monkeypatch.setattr(chip, "infer", lambda *a, **k: (release.wait(20), real(*a, **k))[1])
        try:
            running = pool.submit(c.post, "/infer", json=body)
            deadline = time.monotonic() + 10
            while metric(c, "agedchip_workload_inflight", workload="infer") != 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            queued = [pool.submit(c.post, "/infer", json=body) for _ in range(2)]
            while metric(c, "agedchip_workload_queued", workload="infer") != 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            t0 = time.monotonic()
            flood = [c.post("/infer", json=body) for _ in range(3)]
            assert time.monotonic() - t0 < 2  # refused at once: the batch queue is the lane's line
            waited = [f.result(timeout=10) for f in queued]  # the slot stays busy past their 0.5 s
        finally:
            release.set()
        assert running.result(timeout=20).status_code == 200
        assert [r.status_code for r in flood + waited] == [429] * 5
        assert all(int(r.headers["retry-after"]) >= 1 for r in flood + waited)
        assert metric(c, "agedchip_admission_rejections_total", workload="infer", reason="queue_full") == 3
        assert metric(c, "agedchip_admission_rejections_total", workload="infer", reason="queue_timeout") == 2
        assert c.post("/infer", json=body).status_code == 200  # the line recovered
        assert metric(c, "agedchip_workload_queued", workload="infer") == 0


def test_queue_delay_is_bounded_and_exported(tmp_path, zoo):
    body = {"chip_id": "default", "inputs": x(1, 0), "age": AGE}
    with app(tmp_path, zoo, batch_max_queue_delay_ms=300, batch_max_size=8) as c:
        t0 = time.monotonic()
        assert c.post("/infer", json=body).status_code == 200
        seconds = time.monotonic() - t0
        waited = metric(c, "agedchip_batch_queue_delay_seconds_sum")
        assert metric(c, "agedchip_batch_size_count") == 1
    # alone, it waited the 300 ms for company and then ran (0.5 s slack: a loaded 2-core host)
    assert 0.3 <= waited < 0.8 and seconds < 2.0


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(batch_preferred_sizes="4,x"), "batch_preferred_sizes"),
        (dict(batch_preferred_sizes="16,8"), "batch_preferred_sizes"),
        (dict(batch_preferred_sizes="64", batch_max_size=32), "batch_preferred_sizes"),
        (dict(batch_preferred_sizes="0"), "batch_preferred_sizes"),
        (dict(batch_max_queue_delay_ms=1001), "batch_max_queue_delay_ms"),
        (dict(batch_max_queue_delay_ms=-1), "batch_max_queue_delay_ms"),
        (dict(batch_max_size=0), "batch_max_size"),
    ],
)
def test_batch_settings_are_validated(tmp_path, kw, name):
    with pytest.raises(ValidationError) as e:
        Settings(state_dir=tmp_path, **kw)
    assert name in str(e.value)


def test_batch_settings_parse_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEDCHIP_BATCH_PREFERRED_SIZES", " 4, 8 ")
    monkeypatch.setenv("AGEDCHIP_BATCH_MAX_QUEUE_DELAY_MS", "1.5")
    monkeypatch.setenv("AGEDCHIP_BATCH_MAX_SIZE", "64")
    monkeypatch.setenv("AGEDCHIP_MAX_BATCH", "16")
    config = Settings(state_dir=tmp_path).batch_config()
    assert config.preferred_sizes == (4, 8) and config.max_queue_delay_s == pytest.approx(0.0015)
    assert config.max_size == 16  # capped at AGEDCHIP_MAX_BATCH: a batch is one inference
