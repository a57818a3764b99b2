"""Rules written once in chipsim: GDC factors per mode, ages, session options, enums."""

import numpy as np
import pytest

from chipsim import ages
from chipsim.modes import GdcMode, RecalibrationAlgorithm, WeightBinding
from chipsim.ort_session import session_options
from chipsim.readout import LayerReadout
from chipsim.recalibration import ALGORITHMS, RecalibrationConfig, RecalibrationError
from chipsim.runtime import ChipRuntime


def _readout() -> LayerReadout:
    # 2 tiles × 3 columns with distinct factors per kind, so a mix-up shows.
    return LayerReadout(
        w_norm=np.zeros((4, 3), np.float32),
        alpha_global=np.array([1.5, 2.5], np.float32),
        alpha_column=np.array([[1.1, 1.2, 1.3], [2.1, 2.2, 2.3]], np.float32),
        alpha_exact=np.array([0.5, 0.75], np.float32),
    )


@pytest.mark.parametrize(
    "mode, applied, measured, per_tile",
    [
        ("global", [[1.5] * 3, [2.5] * 3], [1.5, 2.5], [1.5, 2.5]),
        ("column", [[1.1, 1.2, 1.3], [2.1, 2.2, 2.3]], [[1.1, 1.2, 1.3], [2.1, 2.2, 2.3]], [1.5, 2.5]),
        ("exact", [[0.5] * 3, [0.75] * 3], [0.5, 0.75], [0.5, 0.75]),
        ("off", [[1.0] * 3, [1.0] * 3], [1.5, 2.5], [1.5, 2.5]),
    ],
)
def test_gdc_factors_of_each_mode(mode, applied, measured, per_tile):
    ro = _readout()
    np.testing.assert_array_equal(ro.alpha(mode), np.array(applied, np.float32))
    np.testing.assert_array_equal(ro.alpha(GdcMode(mode)), np.array(applied, np.float32))
    np.testing.assert_array_equal(ro.measured_alpha(mode), np.array(measured, np.float32))
    np.testing.assert_array_equal(ro.tile_alpha(mode), np.array(per_tile, np.float32))


def test_alpha_column_is_a_copy_and_unknown_modes_are_named():
    ro = _readout()
    ro.alpha("column")[0, 0] = 99.0
    assert ro.alpha_column[0, 0] == np.float32(1.1)
    with pytest.raises(ValueError, match="gdc: unknown mode 'sideways'"):
        ro.alpha("sideways")


def test_age_constants_and_standard_schedule():
    assert ages.YEAR_S == 31_536_000.0 and ages.DAY_S == 86_400.0 and ages.HOUR_S == 3_600.0
    assert list(ages.STANDARD_AGES_S) == ["1s", "1h", "1d", "1w", "30d", "1y", "10y"]
    assert ages.STANDARD_AGES_S["10y"] == 315_360_000.0
    assert ages.MAX_AGE_S == 31_536_000_000.0
    assert ages.check_age(ages.MAX_AGE_S) == ages.MAX_AGE_S
    with pytest.raises(ValueError, match="age: .* beyond"):
        ages.check_age(ages.MAX_AGE_S * 1.001)


def test_session_options_pin_the_pools():
    opts = session_options(3)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level) == (3, 1, 3)
    default = session_options(None)
    assert (default.intra_op_num_threads, default.inter_op_num_threads) == (0, 0)  # onnxruntime's defaults


def test_enums_are_the_accepted_names():
    assert ALGORITHMS == ("analog-sgd", "residual", "residual-v2")
    assert ChipRuntime.BINDINGS == ("inputs", "initializers")
    assert [b.value for b in WeightBinding] == list(ChipRuntime.BINDINGS)
    assert RecalibrationConfig(algorithm=RecalibrationAlgorithm.ANALOG_SGD).algorithm == "analog-sgd"
    with pytest.raises(RecalibrationError, match="algorithm: expected one of"):
        RecalibrationConfig(algorithm="adam")
    with pytest.raises(RecalibrationError, match=r"steps: must be in \[1, 100000\]"):
        RecalibrationConfig(steps=100_001)
