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


class SloMetric(StrEnum):
    """What a fleet's accuracy SLO is measured on (chipsim/fleet)."""

    ACCURACY = "accuracy"  # the chip's accuracy on the eval set (ratio)
    # chip accuracy ÷ the model's floating-point (digital) accuracy on the same eval set
    # (Rasch et al. 2023, Nature Communications 14:5282, "normalised accuracy")
    NORMALISED_ACCURACY = "normalised_accuracy"
