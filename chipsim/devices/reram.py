"""A ReRAM-like device preset: state-independent programming noise, negligible drift.

It exists to show the device model is pluggable and to give co-design users a contrast to
PCM. Parameters are *illustrative*, chosen from the qualitative behaviour reported for
filamentary ReRAM compute-in-memory chips (Wan et al., "A compute-in-memory chip based on
resistive random-access memory", Nature 608:504 (2022): write-verify programming leaves a
roughly conductance-independent error of a few percent of the range; conductance relaxation
after verification is small compared with PCM drift). They are not a fit to that chip.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from chipsim.xp import namespace


@dataclass(frozen=True)
class ReRAMDevice:
    """State-independent noise device. Conductances in µS, times in s."""

    name: str = "reram"
    #: Range of the write-verify window, µS (Wan 2022 operates devices over ~40 µS).
    g_max_us: float = 40.0
    #: Conductance-independent programming error, µS (~2 % of g_max, illustrative).
    prog_std_us: float = 0.8
    #: Small, state-independent relaxation exponent: ν = 0.001 loses 0.8 % of the conductance
    #: after 1 d and 1.6 % after 10 y (illustrative: "negligible drift").
    nu_mean: float = 0.001
    nu_std: float = 0.0005
    t0_s: float = 20.0
    #: State-independent relative read noise at t0 (illustrative, ~0.5 %), growing with the same
    #: 1/f accumulation law as PCM.
    read_rel_std: float = 0.005
    t_read_s: float = 250e-9

    def prog_noise_std_us(self, g_target_us: Any) -> Any:
        return g_target_us * 0.0 + self.prog_std_us

    def drift_nu_stats(self, g_target_us: Any) -> tuple[Any, Any]:
        zero = g_target_us * 0.0
        return zero + self.nu_mean, zero + self.nu_std

    def drift_factor(self, nu: Any, age_s: float) -> Any:
        xp = namespace(nu)
        return xp.exp(-nu * math.log((age_s + self.t0_s) / self.t0_s))

    def read_noise_q(self, g_prog_us: Any) -> Any:
        """State-independent amplitude, normalised so the relative σ is ``read_rel_std`` at t = 0."""
        return g_prog_us * 0.0 + self.read_rel_std / self.read_noise_time_factor(0.0)

    def read_noise_rel_std(self, g_prog_us: Any, age_s: float) -> Any:
        return self.read_noise_q(g_prog_us) * self.read_noise_time_factor(age_s)

    def read_noise_time_factor(self, age_s: float) -> float:
        return math.sqrt(math.log((age_s + self.t0_s + self.t_read_s) / (2.0 * self.t_read_s)))

    def describe(self) -> dict:
        return {"source": "illustrative, after Wan et al., Nature 608:504 (2022)", **asdict(self)}
