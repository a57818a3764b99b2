"""The interface every device model implements.

A device model answers four questions about one physical device (one conductance of a
differential pair), each as a pure array function of numpy arrays or torch tensors:

- how noisy is programming to a target conductance (``prog_noise_std_us``),
- which drift exponent distribution a device programmed to a target gets (``drift_nu_stats``),
- how much the conductance has drifted at an age (``drift_factor``),
- how large the accumulated 1/f read noise is at an age (``read_noise_rel_std``).

Sampling (drawing the random numbers) is done by the caller with a ``numpy.random.Generator``
(chip) or ``torch.Generator`` (training), so the formulas stay deterministic and shared.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class DeviceModel(Protocol):
    """A conductance-device model. All conductances in µS, all times in seconds."""

    name: str
    g_max_us: float
    t0_s: float

    def prog_noise_std_us(self, g_target_us: Any) -> Any:
        """Standard deviation (µS) of the programmed conductance around its target."""

    def drift_nu_stats(self, g_target_us: Any) -> tuple[Any, Any]:
        """Mean and standard deviation of the drift exponent ν for a target conductance."""

    def drift_factor(self, nu: Any, age_s: float) -> Any:
        """Multiplicative conductance change G(t)/G_prog at ``age_s`` after programming."""

    def read_noise_q(self, g_prog_us: Any) -> Any:
        """The state-dependent amplitude of the 1/f read noise (age-independent part)."""

    def read_noise_time_factor(self, age_s: float) -> float:
        """The age-dependent factor of the 1/f read noise."""

    def read_noise_rel_std(self, g_prog_us: Any, age_s: float) -> Any:
        """Relative standard deviation of the accumulated 1/f read noise at ``age_s``:
        ``read_noise_q(g_prog) · read_noise_time_factor(age_s)``."""

    def describe(self) -> dict:
        """Parameters and their sources, for documentation and the API."""
