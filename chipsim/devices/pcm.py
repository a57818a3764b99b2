"""Phase-change-memory (PCM) device model.

The statistical model fitted to a 1M-device PCM chip by Nandakumar et al. (2019) and
Joshi et al., "Accurate deep neural network inference using computational phase-change
memory", Nat. Commun. 11:2473 (2020), Methods and Supplementary Note 3; the same model
aihwkit ships as ``PCMLikeNoiseModel`` and that Rasch et al., Nat. Commun. 14:5282 (2023)
use as the standard AIMC evaluation setting. DESIGN.md §3.2 restates every formula below.

Reference values (DESIGN §3.2): σ_prog/g_max = 1.05 % at g=0, 2.73 % at g=0.25, 4.22 % at g=1;
μ_ν = 0.1 for g ≤ 0.0076 falling to 0.049 for g ≥ 0.2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from chipsim.xp import clip_max, clip_min, namespace


@dataclass(frozen=True)
class PCMDevice:
    """PCM conductance statistics. Conductances in µS, times in s."""

    name: str = "pcm"
    #: Maximal programmable conductance, µS (Joshi 2020: 25 µS).
    g_max_us: float = 25.0
    #: Programming-noise polynomial σ(g) = c0 + c1·g + c2·g² in µS, g = G_target/g_max
    #: (Joshi 2020, Suppl. Note 3, fit of iterative-programming error).
    prog_coeffs_us: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    #: μ_ν = clip(a·ln g + b, lo, hi) (Joshi 2020 / Nandakumar 2019 drift-exponent fit).
    nu_mean_coeffs: tuple[float, float] = (-0.0155, 0.0244)
    nu_mean_clip: tuple[float, float] = (0.049, 0.1)
    #: σ_ν = clip(a·ln g + b, lo, hi) (same source).
    nu_std_coeffs: tuple[float, float] = (-0.0125, -0.0059)
    nu_std_clip: tuple[float, float] = (0.008, 0.045)
    #: Reference time of the drift power law: first read 20 s after programming (Joshi 2020).
    t0_s: float = 20.0
    #: Duration of one read, 250 ns (Joshi 2020, 1/f-noise integration lower bound).
    t_read_s: float = 250e-9
    #: 1/f noise amplitude Q_s = min(q / max(g_prog^exp, q_floor), q_max) (Joshi 2020, Suppl. Note 3).
    read_q_coeff: float = 0.0088
    read_q_exp: float = 0.65
    read_q_floor: float = 1e-3
    read_q_max: float = 0.2
    #: Smallest normalised conductance inside a logarithm (DESIGN §3.2).
    g_log_floor: float = 1e-7

    def _g(self, g_target_us: Any) -> Any:
        return clip_min(g_target_us / self.g_max_us, self.g_log_floor)

    def prog_noise_std_us(self, g_target_us: Any) -> Any:
        """σ_prog(g) = 0.26348 + 1.9650·g − 1.1731·g² µS (the off device, g=0, gets 0.263 µS)."""
        g = g_target_us / self.g_max_us
        c0, c1, c2 = self.prog_coeffs_us
        return c0 + c1 * g + c2 * g * g

    def drift_nu_stats(self, g_target_us: Any) -> tuple[Any, Any]:
        """(μ_ν, σ_ν) of the drift exponent for a target conductance (from the *target*)."""
        xp = namespace(g_target_us)
        ln_g = xp.log(self._g(g_target_us))
        a, b = self.nu_mean_coeffs
        mu = xp.clip(a * ln_g + b, *self.nu_mean_clip)
        a, b = self.nu_std_coeffs
        sigma = xp.clip(a * ln_g + b, *self.nu_std_clip)
        return mu, sigma

    def drift_factor(self, nu: Any, age_s: float) -> Any:
        """((t + t0)/t0)^(−ν): 1 at t = 0, 0.775 at 1 h, 0.664 at 1 d, 0.497 at 1 y for ν = 0.049."""
        xp = namespace(nu)
        log_ratio = math.log((age_s + self.t0_s) / self.t0_s)
        return xp.exp(-nu * log_ratio)

    def read_noise_q(self, g_prog_us: Any) -> Any:
        """1/f noise amplitude Q_s = min(0.0088 / max((G_prog/g_max)^0.65, 1e-3), 0.2)."""
        xp = namespace(g_prog_us)
        g = xp.abs(g_prog_us) / self.g_max_us
        return clip_max(self.read_q_coeff / clip_min(g**self.read_q_exp, self.read_q_floor), self.read_q_max)

    def read_noise_rel_std(self, g_prog_us: Any, age_s: float) -> Any:
        """Q_s·sqrt(ln((t + t0 + t_read)/(2·t_read))), relative to |G_drift|."""
        return self.read_noise_q(g_prog_us) * self.read_noise_time_factor(age_s)

    def read_noise_time_factor(self, age_s: float) -> float:
        """sqrt(ln((t + t0 + t_read)/(2·t_read))): the accumulated 1/f noise power at an age."""
        return math.sqrt(math.log((age_s + self.t0_s + self.t_read_s) / (2.0 * self.t_read_s)))

    def describe(self) -> dict:
        return {"source": "Joshi et al., Nat. Commun. 11:2473 (2020); Nandakumar et al. (2019)", **asdict(self)}
