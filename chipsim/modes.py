"""Every mode of the chip, written once (aihwkit's ``simulator/parameters/enums.py`` style).

The members are ``StrEnum`` values, so they compare equal to the strings that the API, the
stored chip profiles and the command lines carry (``GdcMode.GLOBAL == "global"``), and a
profile written before these enums existed loads unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class GdcMode(StrEnum):
    """Global drift compensation variant (DESIGN §3.4)."""

    GLOBAL = "global"  # one α per tile, from an identity read through the noisy periphery
    COLUMN = "column"  # one α per tile and output column
    EXACT = "exact"  # noise-free reference: mean|w_target| over mean|w(t)|, no periphery
    OFF = "off"  # α = 1

    @classmethod
    def resolve(cls, gdc: bool | str | None, profile_mode: str) -> GdcMode:
        """The mode a request gets: ``True``/``None`` → the profile's mode (``global`` when the
        profile says ``off``, since asking for GDC must compensate), ``False`` → ``off``, a name → it.

        Raises ``ValueError`` naming the known modes for anything else.
        """
        if gdc is None or gdc is True:
            mode = cls(profile_mode)
            return cls.GLOBAL if mode is cls.OFF else mode
        if gdc is False:
            return cls.OFF
        try:
            return cls(gdc)
        except ValueError:
            raise ValueError(f"gdc: unknown mode {gdc!r}; known: {[m.value for m in cls]}") from None


class MvmNoiseSource(StrEnum):
    """Where unseeded per-MVM noise comes from (``AGEDCHIP_MVM_NOISE``)."""

    TABLE = "table"
    FRESH = "fresh"


class WeightBinding(StrEnum):
    """How a runtime hands the read-out weights of an age to onnxruntime (DESIGN §3.7)."""

    INPUTS = "inputs"  # one session per chip, the weights fed with every run
    INITIALIZERS = "initializers"  # one session per cached age, the weights embedded as constants


class LayerKind(StrEnum):
    """The ONNX op an analog layer was compiled from (``LayerPlan.kind``, stored in a chip's plans)."""

    MATMUL = "matmul"
    GEMM = "gemm"
    CONV = "conv"


class RangeSource(StrEnum):
    """Where an analog layer's DAC input range came from (``input_range_source`` in its meta),
    in order of precedence (chipsim.compiler.calibration)."""

    GIVEN = "given"  # set by the caller (a chip recompiled with its programmed ranges)
    METADATA = "metadata"  # learned by HWA training, in the model's agedchip.input_ranges
    CALIBRATION = "calibration"  # measured on the calibration data uploaded with the model
    EVAL = "eval"  # measured on the model's eval set (no calibration data given)
    DEFAULT = "default"  # uncalibrated: DEFAULT_INPUT_RANGE


class RecalibrationAlgorithm(StrEnum):
    """How recalibration writes its updates to the devices (chipsim.analog_training)."""

    ANALOG_SGD = "analog-sgd"  # plain analog SGD by pulses
    RESIDUAL = "residual"  # residual learning v1 (Tiki-Taka-like transfer)
    RESIDUAL_V2 = "residual-v2"  # residual learning v2: filtered, thresholded transfer
