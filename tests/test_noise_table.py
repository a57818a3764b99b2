"""The shared noise table: windows, statistics, fallback, and the runtime's two noise sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.noise_table import NoiseTable, shared_table
from chipsim.runtime import ChipRuntime
from tests import onnx_models as om


def test_table_is_standard_normal():
    t = shared_table().samples
    assert t.dtype == np.float32 and t.size == shared_table().size and not t.flags.writeable
    # 2^23 samples: the mean's standard error is 1/sqrt(M) = 3.5e-4 and the std's 1/sqrt(2M) = 2.4e-4;
    # 5 standard errors are allowed. The KS statistic of M normal samples is below 1.63/sqrt(M) with
    # probability 0.99 (Kolmogorov distribution); a uniform or wrongly scaled table is far above.
    assert abs(float(t.mean())) < 5 / np.sqrt(t.size)
    assert abs(float(t.std()) - 1) < 5 / np.sqrt(2 * t.size)
    assert stats.kstest(t[: 1 << 20], "norm").statistic < 1.63 / np.sqrt(1 << 20)


def test_one_window_per_request_every_output_its_own_sample():
    table = NoiseTable(size=1000, seed=1)
    shapes = [(2, 3), (4,), (1, 5, 2)]
    arrays = table.windows(shapes, np.random.default_rng(0))
    assert [a.shape for a in arrays] == shapes
    flat = np.concatenate([a.ravel() for a in arrays])
    start = int(np.flatnonzero(table.samples == flat[0])[0])
    assert np.array_equal(flat, table.samples[start:start + flat.size])  # consecutive, none repeated
    assert all(np.shares_memory(a, table.samples) for a in arrays)  # views: no copies


def test_offsets_are_uniform_and_seeded_windows_repeat():
    table = NoiseTable(size=1000, seed=1)
    rng = np.random.default_rng(5)
    starts = []
    for _ in range(4000):
        w = table.windows([(10,)], rng)[0]
        starts.append(int(np.flatnonzero(table.samples == w[0])[0]))
    # 991 possible offsets in 10 bins of ~99: 4000 draws, ~400 per bin; chi-square with 9 degrees of
    # freedom exceeds 27.9 with probability 0.001.
    counts = np.histogram(starts, bins=10, range=(0, 991))[0]
    assert stats.chisquare(counts).statistic < 27.9, counts
    a = table.windows([(3, 3)], np.random.default_rng(42))[0]
    assert np.array_equal(a, table.windows([(3, 3)], np.random.default_rng(42))[0])


def test_requests_larger_than_half_the_table_get_fresh_draws():
    table = NoiseTable(size=100, seed=1)
    arrays = table.windows([(30,), (40,)], np.random.default_rng(0))
    assert [a.shape for a in arrays] == [(30,), (40,)]
    assert not any(np.shares_memory(a, table.samples) for a in arrays)
    with pytest.raises(ValueError, match="size"):
        NoiseTable(size=1)


def test_table_and_fresh_noise_give_the_same_output_spread():
    """The chip's output spread over repeated unseeded requests is the same with either source."""
    model = om.export(om.mlp(sizes=(64, 32)), torch.zeros(2, 64))
    chip = program_onnx(model, get_profile("pcm"), seed=4)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64)).astype(np.float32)
    spread = {}
    for source in ChipRuntime.NOISE_SOURCES:
        rt = ChipRuntime(chip, noise=source)
        ys = np.stack([rt.run(x, age_s=60.0)[0][0] for _ in range(600)])
        spread[source] = ys.std(axis=0)
    # 600 requests: each output's std has a relative standard error of 1/sqrt(2·600) = 2.9 %; the ratio
    # of two independent estimates 4.1 %, and its mean over 32 outputs ~0.7 % (outputs share the input,
    # so allow for correlation): 5 % is > 5 standard errors of the mean ratio.
    ratio = spread["table"] / spread["fresh"]
    assert spread["fresh"].min() > 0
    assert abs(float(ratio.mean()) - 1) < 0.05, ratio
    with pytest.raises(ValueError, match="noise"):
        ChipRuntime(chip, noise="quantum")
