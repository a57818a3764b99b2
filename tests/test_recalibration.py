"""On-chip recalibration of an aged chip's last layer (chipsim.recalibration)."""

from __future__ import annotations

import numpy as np
import pytest

from chipsim import ChipStore, get_profile
from chipsim.compiler import program_onnx
from chipsim.readout import read
from chipsim.recalibration import RecalibrationCancelled, RecalibrationConfig, RecalibrationError, recalibrate
from chipsim.runtime import ChipRuntime
from tests import onnx_models as om

torch = pytest.importorskip("torch")
TEN_YEARS = 10 * 365 * 86400.0


@pytest.fixture(scope="module")
def aged():
    model, x, y, x_train = om.digits_mlp()
    # drift ×3 makes 10 years clearly harmful even with GDC (seen: 0.98 → 0.77), so there is
    # something to recover on 300 samples.
    chip = program_onnx(model, get_profile("pcm", drift_scale=3.0), seed=1, calibration=x_train, chip_id="parent")
    return chip, x, y


def test_recalibration_recovers_accuracy_and_leaves_parent_untouched(aged):
    chip, x, y = aged
    dg = chip.layers[-1].dg_us.copy()
    res = recalibrate(
        chip, TEN_YEARS, x[:300], y[:300], RecalibrationConfig(algorithm="residual-v2", steps=300), "child"
    )
    # 75 held-out samples: one sample is 1.3 points; seen 0.83 → 0.96. Requiring +5 points
    # leaves room for ~5 samples of noise while still failing if training does nothing.
    assert res.accuracy_after >= res.accuracy_before + 0.05, (res.accuracy_before, res.accuracy_after)
    assert res.pulses > 0 and res.chip.meta["parent"] == "parent"
    assert res.chip.meta["recalibration"]["algorithm"] == "residual-v2"
    np.testing.assert_array_equal(chip.layers[-1].dg_us, dg)  # parent immutable
    # On the other 1097 test samples, the new chip at age 0 beats the parent at 10 years.
    acc = lambda c, age: float(np.mean(ChipRuntime(c).run(x[300:], age, seed=0)[0].argmax(1) == y[300:]))  # noqa: E731
    assert acc(res.chip, 0.0) > acc(chip, TEN_YEARS) + 0.03


def test_carried_layers_are_the_parent_at_the_recalibration_age(aged):
    chip, x, y = aged
    res = recalibrate(chip, 86400.0, x[:100], y[:100], RecalibrationConfig(algorithm="analog-sgd", steps=20), "c2")
    assert res.chip.layers[0].meta["age_offset_s"] == 86400.0
    np.testing.assert_array_equal(
        read(res.chip, 3600.0).layers[0].w_norm, read(chip, 86400.0 + 3600.0).layers[0].w_norm
    )
    # The re-written layer restarts drift: at its age 0 it holds the trained weights (no drift).
    assert res.chip.layers[-1].meta["age_offset_s"] == 0.0


def test_derived_chip_survives_the_store(aged, tmp_path):
    chip, x, y = aged
    res = recalibrate(chip, 3600.0, x[:64], y[:64], RecalibrationConfig(steps=5), "c3")
    store = ChipStore(tmp_path)
    store.save(res.chip)
    back = store.load("c3")
    assert back.meta["recalibration"]["pulses"] == res.pulses
    xs = x[:16]
    np.testing.assert_array_equal(
        ChipRuntime(back).run(xs, 10.0, seed=1)[0], ChipRuntime(res.chip).run(xs, 10.0, seed=1)[0]
    )


def test_cancel_and_bad_input(aged):
    chip, x, y = aged
    with pytest.raises(RecalibrationCancelled):
        recalibrate(chip, 1.0, x[:64], y[:64], RecalibrationConfig(steps=50), "c4", should_cancel=lambda: True)
    with pytest.raises(RecalibrationError, match="labels"):
        recalibrate(chip, 1.0, x[:64], y[:64] + 20, RecalibrationConfig(steps=5), "c5")
    with pytest.raises(RecalibrationError, match="not the model's last layer"):
        recalibrate(chip, 1.0, x[:64], y[:64], RecalibrationConfig(layer=chip.layers[0].name, steps=5), "c6")
    with pytest.raises(RecalibrationError, match="algorithm"):
        RecalibrationConfig(algorithm="adam")
    cnn = program_onnx(om.export(om.cnn(), torch.zeros(2, 3, 8, 8)), get_profile("pcm"), seed=0)
    with pytest.raises(RecalibrationError, match="conv"):
        recalibrate(
            cnn,
            1.0,
            np.zeros((16, 3, 8, 8), np.float32),
            np.zeros(16, np.int64),
            RecalibrationConfig(layer=cnn.layers[0].name, steps=5),
            "c7",
        )
