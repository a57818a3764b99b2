"""Validation of programming and read-out inputs: ages and seeds (valid ones accepted, invalid
ones refused with a domain error), named profiles, profile errors naming their field, and the
per-layer age offset."""

from __future__ import annotations

import numpy as np
import pytest

from chipsim import LayerSpec, ProfileError, get_profile, program, read
from chipsim.profiles import PRESETS, ChipProfile, profile_from_dict
from chipsim.readout import MAX_AGE_S, check_age
from tests.programming_formulas import HOUR, YEAR, clipped_normal_matrix


# ---------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def small_chip():
    return program([LayerSpec("fc", clipped_normal_matrix((64, 32), 5))], get_profile("pcm"), seed=1)


@pytest.mark.parametrize("age", [0, 0.0, 1e-9, 1, HOUR, 100 * YEAR, MAX_AGE_S, np.float32(5.0)])
def test_valid_ages(small_chip, age):
    r = read(small_chip, age, 0)
    assert r.age_s == float(age)
    assert np.all(np.isfinite(r.layers[0].w_norm))


@pytest.mark.parametrize(
    "age", [-1.0, -1e-12, float("nan"), float("inf"), float("-inf"), "abc", None, MAX_AGE_S * 1.01]
)
def test_invalid_ages_are_errors(small_chip, age):
    with pytest.raises(ValueError, match="age"):
        read(small_chip, age, 0)
    with pytest.raises(ValueError, match="age"):
        check_age(age)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, "1", None, True])
def test_invalid_seeds_are_errors(small_chip, seed):
    with pytest.raises(ValueError, match="read_seed"):
        read(small_chip, 1.0, seed)
    with pytest.raises(ValueError, match="seed"):
        program([LayerSpec("fc", np.ones((4, 4), np.float32))], get_profile("pcm"), seed=seed)


def test_named_profiles_exist_and_differ():
    assert {"ideal", "pcm", "pcm-faulty"} <= set(PRESETS)
    ideal, pcm, faulty = get_profile("ideal"), get_profile("pcm"), get_profile("pcm-faulty")
    assert isinstance(pcm, ChipProfile) and pcm.name == "pcm" and pcm.device == "pcm"
    for f in (
        "prog_noise_scale",
        "drift_scale",
        "read_noise_scale",
        "w_noise",
        "ir_drop",
        "out_noise",
        "p_stuck_reset",
        "p_stuck_set",
        "d2d_sigma",
    ):
        assert getattr(ideal, f) == 0, f
    assert faulty.p_stuck_reset > pcm.p_stuck_reset > 0 and faulty.p_stuck_set > pcm.p_stuck_set > 0
    assert pcm.w_noise == 0.0175 and pcm.out_noise == 0.04 and pcm.out_levels == 254 and pcm.out_bound == 10
    # Profiles are immutable.
    with pytest.raises(Exception):
        pcm.drift_scale = 2.0  # type: ignore[misc]
    # Round trip through the JSON form stored in manifests.
    assert profile_from_dict(faulty.model_dump(mode="json")) == faulty


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(bogus=1), "bogus"),
        (dict(prog_noise_scale=-1.0), "prog_noise_scale"),
        (dict(drift_scale=1e9), "drift_scale"),
        (dict(p_stuck_set=1.5), "p_stuck_set"),
        (dict(tile_rows=0), "tile_rows"),
        (dict(gdc="sometimes"), "gdc"),
        (dict(out_levels="many"), "out_levels"),
        (dict(w_noise=float("nan")), "w_noise"),
    ],
)
def test_profile_errors_name_the_field(overrides, field):
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", **overrides)
    assert info.value.field == field
    assert field in str(info.value)


def test_profile_errors_of_cross_field_rules_name_the_fields():
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", device="flash")
    assert "device" in str(info.value) and "flash" in str(info.value)
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", p_stuck_reset=0.7, p_stuck_set=0.7)
    assert "p_stuck_reset" in str(info.value) and "p_stuck_set" in str(info.value)
    with pytest.raises(ProfileError) as info:
        get_profile("no-such-preset")
    assert info.value.field == "name" and "no-such-preset" in str(info.value)
    with pytest.raises(ProfileError) as info:
        profile_from_dict({"device": "pcm", "extra": 1})
    assert info.value.field == "extra"


def test_profile_error_field_of_unknown_device():
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", device="flash")
    assert info.value.field == "device"


def test_layer_age_offset_shifts_only_that_layer():
    """A layer carried into a derived chip with ``age_offset_s`` reads as that much older;
    the other layers are unaffected (independent check: the drift law on the same devices)."""
    import copy

    from chipsim.readout import read

    rng = np.random.default_rng(0)
    specs = [
        LayerSpec("a", rng.standard_normal((16, 8)).astype(np.float32)),
        LayerSpec("b", rng.standard_normal((16, 8)).astype(np.float32)),
    ]
    profile = get_profile("pcm", read_noise_scale=0.0)
    chip = program(specs, profile, seed=1)
    older = copy.deepcopy(chip)
    older.layers[0].meta["age_offset_s"] = 86400.0
    base = read(chip, 86400.0)
    shifted = read(older, 0.0)
    np.testing.assert_array_equal(shifted.layers[0].w_norm, base.layers[0].w_norm)
    np.testing.assert_array_equal(shifted.layers[1].w_norm, read(chip, 0.0).layers[1].w_norm)
