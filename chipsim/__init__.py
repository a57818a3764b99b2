"""chipsim: an aged analog in-memory-computing chip in numpy (DESIGN.md §3–4).

Typical use::

    from chipsim import ChipRuntime, get_profile, program_onnx
    chip = program_onnx(model_bytes, get_profile("pcm"), seed=0)
    logits = ChipRuntime(chip).run(x, age_s=86400, seed=1)[0]

or, one matrix at a time::

    from chipsim import get_profile, LayerSpec, program, read, drift_metrics
    chip = program([LayerSpec("fc", W, input_range=1.0)], get_profile("pcm"), seed=0)
    readout = read(chip, age_s=86400, read_seed=1)
"""

from chipsim.ages import DAY_S, HOUR_S, MAX_AGE_S, STANDARD_AGES_S, YEAR_S, check_age
from chipsim.compiler import CompileError, compile_model, program_onnx
from chipsim.drift_metrics import drift_metrics
from chipsim.model_inputs import InputError
from chipsim.modes import GdcMode, LayerKind, MvmNoiseSource, RecalibrationAlgorithm, WeightBinding
from chipsim.profiles import PRESETS, ChipProfile, ProfileError, get_profile, profile_from_dict
from chipsim.programming import program
from chipsim.readout import ChipReadout, LayerReadout, read
from chipsim.recalibration import (
    RecalibrationCancelled,
    RecalibrationConfig,
    RecalibrationError,
    RecalibrationResult,
    recalibrate,
)
from chipsim.reference import MvmNoise, analog_matmul, draw_mvm_noise
from chipsim.runtime import ChipRuntime
from chipsim.state import ChipState, LayerSpec, LayerState, check_chip_id
from chipsim.store import (
    ChipCorruptError,
    ChipExistsError,
    ChipNotFoundError,
    ChipStore,
    ChipStoreError,
    ChipVersionError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreWriteError,
)

__all__ = [
    "DAY_S",
    "HOUR_S",
    "MAX_AGE_S",
    "PRESETS",
    "STANDARD_AGES_S",
    "YEAR_S",
    "ChipCorruptError",
    "ChipExistsError",
    "ChipNotFoundError",
    "ChipProfile",
    "ChipReadout",
    "ChipRuntime",
    "ChipState",
    "ChipStore",
    "ChipStoreError",
    "ChipVersionError",
    "CompileError",
    "GdcMode",
    "InputError",
    "LayerKind",
    "LayerReadout",
    "LayerSpec",
    "LayerState",
    "MvmNoise",
    "MvmNoiseSource",
    "ProfileError",
    "RecalibrationAlgorithm",
    "RecalibrationCancelled",
    "RecalibrationConfig",
    "RecalibrationError",
    "RecalibrationResult",
    "StoreLockedError",
    "StoreReadOnlyError",
    "StoreWriteError",
    "WeightBinding",
    "analog_matmul",
    "check_age",
    "check_chip_id",
    "compile_model",
    "draw_mvm_noise",
    "drift_metrics",
    "get_profile",
    "profile_from_dict",
    "program",
    "program_onnx",
    "read",
    "recalibrate",
]
