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
    """Where per-MVM noise comes from (``AGEDCHIP_MVM_NOISE``, ``ChipRuntime(noise=...)``).

    Both live sources draw one new standard normal per analog output and request from a
    counter-based generator (chipsim.mvm_noise); they differ in the sampler:

    - ``fresh``: numpy's ziggurat, an exact N(0, 1) (~8 ns per draw here);
    - ``fresh-q16`` (the default): 16 fresh random bits per draw pick one of 2^16 equiprobable
      bins of N(0, 1), whose conditional mean is the draw (~1.3 ns per draw here). Draws are as
      independent as ``fresh``'s; the marginal differs from N(0, 1) by at most 2^-16 in CDF
      (Kolmogorov distance), has unit variance and stops at ±4.39 σ (chipsim.mvm_noise).

    ``table`` is deprecated and served as ``fresh`` (:data:`MVM_NOISE_TABLE_DEPRECATION` says why).
    """

    FRESH = "fresh"
    FRESH_Q16 = "fresh-q16"
    TABLE = "table"  # deprecated: accepted for old configurations, served as FRESH


#: The per-MVM noise a runtime and the service use unless told otherwise.
DEFAULT_MVM_NOISE = MvmNoiseSource.FRESH_Q16


#: Why ``table`` noise is gone (the warning a runtime or the service gives when asked for it).
MVM_NOISE_TABLE_DEPRECATION = (
    "mvm_noise='table' is deprecated and served as 'fresh': windows of the shared noise table "
    "overlapped between requests (6-91 % for realistic loads, issue 14), so per-MVM noise was not "
    "independent across requests; every request now draws fresh noise (bench/results/mvm_noise.md)"
)


class WeightBinding(StrEnum):
    """How a runtime hands the read-out weights of an age to onnxruntime (DESIGN §3.7)."""

    INPUTS = "inputs"  # one session per chip, the weights fed with every run
    INITIALIZERS = "initializers"  # one session per cached age, the weights embedded as constants


class GraphLowering(StrEnum):
    """How the compiler writes an analog layer's periphery as ONNX ops (both exact, DESIGN §3.3)."""

    #: One product per tile part on its own input form (``|x|``, ``x²``; a Conv tile's parts
    #: stacked into one grouped Conv), each unit change an elementwise op: graph format 3.
    FULL = "full"
    #: Format 4 (:mod:`chipsim.compiler.lean`): sign analysis, the next layer's DAC scale folded
    #: into this layer's ADC scale, MaxPool before the ADC rounding, one variadic Sum per tile.
    LEAN = "lean"


class TileDrop(StrEnum):
    """An op of a lean tile that a read-out's weights prove negligible (chipsim.compiler.tile_bounds)."""

    IR_CUBIC = "ir_cubic"  # the cubic term of the IR-drop factor c(a)
    ADC_CLIP = "adc_clip"  # the ADC's clip, never reached


class LayerKind(StrEnum):
    """The ONNX op an analog layer was compiled from (``LayerPlan.kind``, stored in a chip's plans)."""

    MATMUL = "matmul"
    MATMUL_LEFT = "matmul_left"  # MatMul(W, x) with the constant first: the layer holds Wᵀ
    GEMM = "gemm"
    CONV = "conv"  # any groups: one layer per node (see LayerPlan.groups)
    CONV_TRANSPOSE = "conv_transpose"  # a Conv on the zero-upsampled input with the flipped kernel
    LSTM = "lstm"  # W or R of one direction of an LSTM node (R: one read per time step)
    GRU = "gru"
    RNN = "rnn"


#: Layer kinds whose tiles run as a Conv in the compiled graph.
CONV_KINDS = frozenset({LayerKind.CONV, LayerKind.CONV_TRANSPOSE})


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


class SloMetric(StrEnum):
    """What a fleet's accuracy SLO is measured on (chipsim/fleet)."""

    ACCURACY = "accuracy"  # the chip's accuracy on the eval set (ratio)
    # chip accuracy ÷ the model's floating-point (digital) accuracy on the same eval set
    # (Rasch et al. 2023, Nature Communications 14:5282, "normalised accuracy")
    NORMALISED_ACCURACY = "normalised_accuracy"


class ColumnScaling(StrEnum):
    """How programming picks each weight column's digital scale ``s_col`` (chipsim.caws)."""

    MAX = "max"  # s_col = max|W[:, col]| (DESIGN §3.1): no weight is clipped
    # channel-wise adaptive weight scaling: per column the clip bound that minimises the expected
    # squared error of the programmed weights (clipping + programming noise), W clipped to it
    CAWS = "caws"
