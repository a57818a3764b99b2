"""chipsim: an aged analog in-memory-computing chip in numpy (DESIGN.md §3–4).

Typical use::

    from chipsim import get_profile, LayerSpec, program, read, drift_metrics
    chip = program([LayerSpec("fc", W, input_range=1.0)], get_profile("pcm"), seed=0)
    readout = read(chip, age_s=86400, read_seed=1)
"""

from chipsim.metrics import drift_metrics
from chipsim.profiles import PRESETS, ChipProfile, ProfileError, get_profile
from chipsim.programming import check_chip_id, program
from chipsim.readout import ChipReadout, LayerReadout, check_age, read
from chipsim.reference import MvmNoise, analog_matmul, draw_mvm_noise
from chipsim.state import ChipState, LayerSpec, LayerState
from chipsim.store import (
    ChipCorruptError, ChipExistsError, ChipNotFoundError, ChipStore, ChipStoreError, ChipVersionError, StoreLockedError,
    StoreReadOnlyError, StoreWriteError,
)

__all__ = [
    "PRESETS", "ChipCorruptError", "ChipExistsError", "ChipNotFoundError", "ChipProfile", "ChipReadout",
    "ChipState", "ChipStore", "ChipStoreError", "ChipVersionError", "LayerReadout", "LayerSpec", "LayerState", "MvmNoise",
    "ProfileError", "analog_matmul", "check_age", "check_chip_id", "draw_mvm_noise", "drift_metrics",
    "get_profile", "program", "read", "StoreLockedError", "StoreReadOnlyError", "StoreWriteError",
]
