"""The six perturbation classes of DESIGN §3.3 as chipsim profiles with one class switched on, and
the strength sweep of each (used by :mod:`studies.diagnose`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from chipsim import get_profile
from chipsim.ages import YEAR_S
from chipsim.profiles import ChipProfile


@dataclass(frozen=True)
class PerturbationClass:
    """One of the six classes of DESIGN §3.3: which profile fields a strength ``s`` sets."""

    key: str
    label: str
    knob: str
    strengths: tuple[float, ...]
    fields: Callable[[float], dict]
    fmt: Callable[[float], str]
    #: The noise ramp of HWA scales the strength (False: the class is applied at full strength
    #: from the first step, as the trainer does with quantisation).
    ramp: bool = True
    age_s: float = YEAR_S

    def profile(self, s: float) -> ChipProfile:
        """The chipsim profile with only this class on, at strength ``s`` (GDC off)."""
        return get_profile("ideal", gdc="off", **self.fields(s))


def _adc_fields(levels: float) -> dict:
    return dict(out_levels=int(levels), out_bound=10.0, out_noise=0.04, in_clip=True)


def _adc_fmt(levels: float) -> str:
    n = int(levels)
    return f"{n} st. ({math.log2(n + 2):.3g} b)" if n > 1 else "1 st. (1 b)"


#: The sweeps run from harmless to destructive for the digits models; ``1`` is the chip as
#: published (DESIGN §3.2/§3.3) where the class has a published strength.
CLASSES: dict[str, PerturbationClass] = {
    c.key: c
    for c in (
        PerturbationClass(
            "read_noise",
            "read noise",
            "×(1/f read_noise_scale, w_noise/0.0175), at 1 y",
            (0.5, 1.0, 2.0, 4.0, 8.0),
            lambda s: dict(read_noise_scale=s, w_noise=0.0175 * s),
            lambda s: f"×{s:g}",
        ),
        PerturbationClass(
            "variability",
            "variability",
            "×prog_noise_scale, d2d_sigma = 0.02·s",
            (0.5, 1.0, 2.0, 4.0, 8.0),
            lambda s: dict(prog_noise_scale=s, d2d_sigma=min(1.0, 0.02 * s)),
            lambda s: f"×{s:g}",
        ),
        PerturbationClass(
            "drift",
            "drift (no GDC)",
            "×drift_scale (ν), read at 1 y, GDC off",
            (0.25, 0.5, 1.0, 2.0, 4.0),
            lambda s: dict(drift_scale=s),
            lambda s: f"×{s:g}",
        ),
        PerturbationClass(
            "stuck",
            "stuck-at faults",
            "p = p_stuck_reset + p_stuck_set (4:1)",
            (0.001, 0.01, 0.03, 0.1, 0.3, 1.0),
            lambda s: dict(p_stuck_reset=0.8 * s, p_stuck_set=0.2 * s),
            lambda s: f"{100 * s:g} %",
        ),
        PerturbationClass(
            "ir_drop",
            "IR drop",
            "×ir_drop (1 = standard model)",
            (1.0, 3.0, 10.0, 30.0, 100.0),
            lambda s: dict(ir_drop=s),
            lambda s: f"×{s:g}",
        ),
        PerturbationClass(
            "adc",
            "ADC discretisation",
            "out_levels steps on ±10 (+ out_noise 0.04, DAC clip)",
            (254, 62, 14, 6, 2, 1),
            _adc_fields,
            _adc_fmt,
            ramp=False,
        ),
    )
}

#: HWA's recipe on an unperturbed chip: separates what the recipe itself (weight clipping,
#: distillation, more epochs) buys from what training *under the perturbation* buys.
CONTROL = PerturbationClass("none", "none (control)", "ideal chip", (0.0,), lambda s: {}, lambda s: "–")
