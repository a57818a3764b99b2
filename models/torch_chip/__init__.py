"""The chip on torch tensors: one layer programmed, aged and read, and one analog matrix product.

DESIGN §7. Every physical formula is imported from :mod:`chipsim` and run on torch tensors
(the device model's ``prog_noise_std_us``, ``drift_nu_stats``, ``drift_factor``,
``read_noise_rel_std``; the periphery's ``dac``, ``adc``, ``output_noise_std_from``,
``ir_drop_delta_from`` on the tile's matrix products, computed for convolutions as convolutions;
GDC's ``references``/``ratio``), so training sees the same chip the runtime emulates. What this
package adds is only the *orchestration* that chipsim does in numpy at programming and read-out
time, in the same order as ``chipsim.programming``, ``chipsim.readout`` and
``chipsim.reference.analog_matmul``:

1. channelwise remapping: ``s_col = max|W[:, col]|``, ``w = W/s_col`` ∈ [−1, 1]
2. differential pair targets ``G± = g_max·max(±w, 0)`` (µS)
3. programming noise ``G_prog = max(0, G + σ_prog(G)·ξ)``, drift exponent ``ν = |μ_ν + σ_ν·ξ|``
   from the target, stuck-at faults as drop-connect (RESET → 0 µS, SET → g_max, no drift)
4. age ``t``: ``G_drift = G_prog·((t+t0)/t0)^−ν``, 1/f noise ``max(0, G_drift + |G_drift|·σ_read·ξ)``
5. GDC: α per tile from chipsim's identity read at programming and at ``t`` (numpy, no gradient)
6. DAC (clip to ±r, ÷r, quantise), per tile ``x'@w(t)`` + IR drop + per-MVM read noise and
   output noise (one Gaussian with their combined σ), ADC, ``× α_k``, summed over tiles,
   ``× r·s_col`` + bias.

The value is the chip's in every :class:`GradientMode`; the mode only decides what autograd sees.
In every mode the noise *amplitudes* (σ_prog, σ_read, the per-MVM σ) are constants for autograd:
their formulas have infinite slope where a conductance or input is 0 (``g^0.65``, ``sqrt``), which
would turn the gradient into NaN; the noise still scales with the weights in the forward pass.

Modules: :mod:`~models.torch_chip.devices` (steps 1–5: program a layer, read it at an age, GDC),
:mod:`~models.torch_chip.periphery` (step 6: one MVM, dense or convolution), over
:mod:`~models.torch_chip.tile_products` (a tile's matrix products, as convolutions for a Conv) and
:mod:`~models.torch_chip.gradients` (:class:`GradientMode` and what autograd sees in each).
"""

from models.torch_chip.devices import (
    AgedWeights,
    DeviceDraws,
    age_weights,
    conductances_at,
    gdc_alpha,
    program_devices,
)
from models.torch_chip.gradients import GradientMode, adc_expected_derivative
from models.torch_chip.periphery import MvmDraws, analog_conv2d, analog_matmul
from models.torch_chip.tile_products import ConvTileProducts, TileProducts

__all__ = [
    "AgedWeights",
    "ConvTileProducts",
    "DeviceDraws",
    "GradientMode",
    "MvmDraws",
    "TileProducts",
    "adc_expected_derivative",
    "age_weights",
    "analog_conv2d",
    "analog_matmul",
    "conductances_at",
    "gdc_alpha",
    "program_devices",
]
