"""The ``fresh-q16`` sampler of per-MVM noise (chipsim.mvm_noise): 16 fresh random bits per draw
index 2^16 equiprobable bins of N(0, 1), the draw is the bin's conditional mean.

Checked against scipy (an independent implementation of the truncated normal's mean and of the
normal CDF), against its documented bound (Kolmogorov distance ≤ 2^-16), and for independence
between the four draws that share one 64-bit word of the generator, with a power check.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.modes import DEFAULT_MVM_NOISE, MvmNoiseSource
from chipsim.mvm_noise import Q16_BINS, Q16_BLOCK, q16_table, seeded_generator, standard_normal
from chipsim.runtime import ChipRuntime
from tests.mvm_noise_helpers import SIGMA, _xi, matmul_classifier

N = 1 << 20  # draws per sample below


def test_table_holds_the_conditional_mean_of_each_equiprobable_bin():
    table = q16_table().astype(np.float64)
    assert table.shape == (Q16_BINS,) and q16_table().dtype == np.float32
    assert np.all(np.diff(table) > 0)
    np.testing.assert_array_equal(table, -table[::-1])  # exactly odd: every odd moment is 0
    assert abs(np.mean(table**2) - 1) < 1e-6  # unit variance (float32 rounding: ~1e-8)
    ks = [0, 1, 2, 77, 4096, 32767, 32768, 40000, 65533, 65534, 65535]
    edges_lo = stats.norm.ppf(np.array(ks) / Q16_BINS)
    edges_hi = stats.norm.ppf((np.array(ks) + 1) / Q16_BINS)
    want = stats.truncnorm.mean(edges_lo, edges_hi)
    # float32 storage: 6e-8 relative; the unit-variance rescale moves them by ~1e-10
    np.testing.assert_allclose(table[ks], want, rtol=2e-6, atol=1e-6)
    assert np.all((table[ks] > edges_lo) & (table[ks] < edges_hi))  # each atom inside its own bin
    assert table.max() == pytest.approx(4.3875, abs=1e-3)  # the documented ±4.39 σ


def test_draws_are_standard_normal_within_the_documented_bound():
    x = standard_normal(seeded_generator(1, 2), N, MvmNoiseSource.FRESH_Q16).astype(np.float64)
    assert x.shape == (N,)
    # KS of N(0, 1) samples stays below 1.63/√n with probability 0.99; the sampler may add 2^-16.
    assert stats.kstest(x, "norm").statistic < 1.63 / np.sqrt(N) + 2.0**-16
    # Moments, 5 standard errors each: mean SE 1/√n; variance SE √(2/n); E x^4 SE √(96/n).
    assert abs(x.mean()) < 5 / np.sqrt(N)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / N)
    assert abs(np.mean(x**4) - 3) < 5 * np.sqrt(96 / N)
    assert np.abs(x).max() <= 4.39


def _lag_corr(x: np.ndarray, lag: int) -> float:
    return float(np.corrcoef(x[:-lag], x[lag:])[0, 1])


def test_the_four_draws_of_one_word_are_independent_and_the_check_has_power():
    x = standard_normal(seeded_generator(3, 4), N, MvmNoiseSource.FRESH_Q16).astype(np.float64)
    # Lags 1-4 cover every pair of lanes in a 64-bit word; correlation SE 1/√n = 9.8e-4, 5 SE.
    for lag in (1, 2, 3, 4):
        assert abs(_lag_corr(x, lag)) < 5 / np.sqrt(N), lag
    # Lanes as columns: no lane pair correlates (n/4 words each: SE 2e-3, 5 SE).
    lanes = np.corrcoef(x.reshape(-1, 4).T)
    assert np.abs(lanes[np.triu_indices(4, 1)]).max() < 5 / np.sqrt(N / 4)
    # Power: a sampler that reused its word's first lane for a second draw is caught at once.
    broken = x.reshape(-1, 4).copy()
    broken[:, 1] = broken[:, 0]
    assert abs(_lag_corr(broken.ravel(), 1)) > 0.2


def test_seeded_draws_are_bit_identical_and_keyed_and_differ_from_the_ziggurat():
    a = standard_normal(seeded_generator(5, 6, 0), 4096, "fresh-q16")
    np.testing.assert_array_equal(a, standard_normal(seeded_generator(5, 6, 0), 4096, "fresh-q16"))
    b = standard_normal(seeded_generator(5, 6, 1), 4096, "fresh-q16")
    z = standard_normal(seeded_generator(5, 6, 0), 4096, "fresh")
    # 4096 draws: correlation SE 0.016; 0.08 is 5 SE
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.08 and abs(np.corrcoef(a, z)[0, 1]) < 0.08
    assert np.isin(a, q16_table()).all() and not np.isin(z, q16_table()).all()


@pytest.mark.parametrize("source", ["fresh", "fresh-q16"])
def test_the_runtime_serves_either_sampler_with_unit_noise(source):
    """Through the chip: ξ recovered from the outputs (DESIGN §3.3 formula, tests.test_mvm_noise)
    is N(0, 1) for both samplers; the default is ``fresh-q16``."""
    model, matrix = matmul_classifier()
    chip = program_onnx(model, get_profile("ideal", out_noise=SIGMA), seed=3)
    rt = ChipRuntime(chip, noise=source)
    assert rt.noise_source == source and ChipRuntime(chip).noise_source == DEFAULT_MVM_NOISE == "fresh-q16"
    x = np.random.default_rng(8).uniform(-1, 1, (2048, 8)).astype(np.float32)
    xi = _xi(rt, model, matrix, x, channel_axis=1, seed=9).ravel().astype(np.float64)
    # 2048·16 = 32768 draws: KS below the 1 % critical value 1.63/√n (+ float32 rounding of the
    # recovery, ~3e-6, and the sampler's 2^-16); std within 5 SE (SE 1/√(2n) = 3.9e-3).
    assert stats.kstest(xi, "norm").statistic < 1.63 / np.sqrt(xi.size) + 2.0**-16
    assert abs(xi.std() - 1) < 5 / np.sqrt(2 * xi.size)


def test_the_service_setting_takes_both_samplers():
    from service.settings import Settings

    assert Settings().mvm_noise == "fresh-q16"
    assert Settings(mvm_noise="fresh").mvm_noise == "fresh"
    with pytest.raises(ValueError, match="mvm_noise"):
        Settings(mvm_noise="q8")


def test_sampler_accuracy_benchmark_pairs_chips_and_writes_its_table(tmp_path):
    """bench.sampler_accuracy on 2 chips of one zoo model: one row per age, paired intervals."""
    import json

    from bench.sampler_accuracy import main

    main(["--chips", "2", "--ages", "1y", "--models", "mlp-plain", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "sampler_accuracy.json").read_text())["rows"]
    assert [(r["model"], r["age"], r["chips"]) for r in rows] == [("mlp-plain", "1y", 2)]
    r = rows[0]
    # paired: the difference's mean is the difference of the means
    diff = r["accuracy_q16"]["mean"] - r["accuracy_fresh"]["mean"]
    assert r["accuracy_diff_pp"]["mean"] == pytest.approx(diff, abs=1e-9)
    assert r["rms_error_ratio"]["lo"] <= r["rms_error_ratio"]["mean"] <= r["rms_error_ratio"]["hi"]
    assert "| mlp-plain | 1y | 2 × 450 |" in (tmp_path / "sampler_accuracy.md").read_text()


def test_blocked_lookup_draws_what_one_whole_lookup_draws():
    """The look-up runs in blocks of Q16_BLOCK draws; the draws are those of the one-call form
    (each draw reads its own 16 bits of the generator's words, in order), across block edges."""
    n = 2 * Q16_BLOCK + 12345
    got = standard_normal(seeded_generator(7, 8), n, "fresh-q16")
    words = seeded_generator(7, 8).bit_generator.random_raw((n + 3) // 4)
    want = q16_table()[words.view(np.uint16)[:n].astype(np.int64)]
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_the_lookup_holds_no_copy_of_its_indices_beyond_one_block():
    """#20.7: np.take widened all indices to intp at once (8 bytes per draw beside the 4 of the
    output): resnet18's per-request noise peaked at 3.5x its size. Now: output (4 B), the
    generator's words (2 B) and one block of indices."""
    import tracemalloc

    n = 1 << 21
    q16_table()  # built once per process, not part of a draw
    tracemalloc.start()
    try:
        standard_normal(seeded_generator(1, 1), n, "fresh-q16")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 6 * n + 8 * Q16_BLOCK + (1 << 16)  # the old form: 14 bytes per draw
