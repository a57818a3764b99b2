"""Shared by the periphery and analog-MVM tests: the per-MVM noise layout chipsim declares, and
the ages the tests use (seconds)."""

from __future__ import annotations

from chipsim import periphery as ph

# DESIGN §3.3 adds two independent Gaussians to each MVM output: the per-MVM weight read noise
# (σ_w = w_noise·sqrt(Σ_j |w_ij| x_j²)) and the ADC output noise (σ_o = out_noise). chipsim may draw
# them separately (two standard normals per output) or as one Gaussian with σ = sqrt(σ_w² + σ_o²)
# (same distribution, half the draws). The exact-draw tests (test_periphery, test_analog_matmul)
# follow whichever layout the code declares (``periphery.output_noise_std`` ⇒ combined); the
# variance test is layout-independent.
COMBINED_NOISE = hasattr(ph, "output_noise_std")


HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0
