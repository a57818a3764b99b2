"""The analog tile's periphery: DAC, per-MVM read noise, IR drop, output noise and ADC.

Every function is an array function (numpy or torch, see :mod:`chipsim.xp`) so the chip and
hardware-aware training apply the same formulas. Units: inputs ``x`` in the layer's input
units, ``x_dac`` in DAC units (normalised to [−1, 1]), weights ``w`` normalised to [−1, 1]
(conductance difference / g_max), outputs in normalised weight × normalised input.
The formulas follow DESIGN §3.3, i.e. aihwkit's standard inference periphery (Rasch et al.,
Nat. Commun. 14:5282 (2023), Methods "Standard AIMC setting").
"""

from __future__ import annotations

from typing import Any

from chipsim.xp import namespace

#: Wire-to-device conductance ratio of the IR-drop model, 1/0.35/5e-6 (aihwkit's
#: ``IOParameters.ir_drop_g_ratio`` default; DESIGN §3.3).
IR_DROP_G_RATIO = 1.0 / 0.35 / 5e-6
#: Coefficients (c1, c2, c3) of the IR-drop factor ``c(a) = c1·a + c2·a² + c3·a³`` (DESIGN §3.3,
#: aihwkit's ``ir_drop`` model: ``a·(0.05·a² − 0.2·a + 0.5)``).
IR_DROP_POLY = (0.5, -0.2, 0.05)


def quantize(x: Any, levels: int, bound: float) -> Any:
    """Round to a uniform grid of step ``2·bound/levels`` (``levels <= 0``: no quantisation).

    Rounding is half-to-even in numpy, torch and ONNX's ``Round`` alike, so all three agree.
    """
    if levels <= 0:
        return x
    xp = namespace(x)
    step = 2.0 * bound / levels
    return xp.round(x / step) * step


def dac(x: Any, input_range: float, levels: int, clip: bool = True) -> Any:
    """DAC: clip to ±r, normalise to [−1, 1], quantise with ``levels`` steps over [−1, 1].
    ``clip=False`` is an ideal DAC with unbounded range (the ``ideal`` profile)."""
    xp = namespace(x)
    if clip:
        x = xp.clip(x, -input_range, input_range)
    return quantize(x / input_range, levels, 1.0)


def adc(y: Any, bound: float, levels: int) -> Any:
    """ADC: quantise with step ``2·bound/levels`` then clip to ±bound (``bound <= 0``: no clip)."""
    xp = namespace(y)
    y = quantize(y, levels, bound)
    return xp.clip(y, -bound, bound) if bound > 0 else y


def mvm_noise_std(x_dac: Any, w: Any, w_noise: float) -> Any:
    """Short-term weight read noise of one MVM: ``w_noise·sqrt(Σ_j |w_ij|·x_j²)``, per output.

    ``x_dac`` is (batch, rows), ``w`` (rows, cols); returns (batch, cols).
    """
    xp = namespace(x_dac, w)
    return w_noise * xp.sqrt((x_dac * x_dac) @ xp.abs(w))


def output_noise_std(x_dac: Any, w: Any, w_noise: float, out_noise: float) -> Any:
    """Total σ of the Gaussian noise added to one MVM's outputs before the ADC.

    The per-MVM weight read noise (σ_w = ``mvm_noise_std``) and the ADC output noise (σ_o =
    ``out_noise``) are independent zero-mean Gaussians added to the same output, so their sum
    is one Gaussian with ``σ = sqrt(σ_w² + σ_o²)``: one draw per output instead of two, with the
    same distribution (this halves the random numbers the runtime draws per inference).
    """
    xp = namespace(x_dac, w)
    return output_noise_std_from((x_dac * x_dac) @ xp.abs(w), w_noise, out_noise)


def output_noise_std_from(sq_abs: Any, w_noise: float, out_noise: float) -> Any:
    """:func:`output_noise_std` from its one matrix product ``sq_abs = x_dac² @ |w|`` (batch, cols),
    for callers that compute the product another way (a convolution over the unfolded patches)."""
    xp = namespace(sq_abs)
    return xp.sqrt((w_noise * w_noise) * sq_abs + out_noise * out_noise)


def ir_drop_ramp(n_rows: int, like: Any) -> Any:
    """Position weights ``1 − (1 − j/n)²`` for rows ``j = 0 … n−1`` (DESIGN §3.3)."""
    xp = namespace(like)
    if xp.__name__ == "torch":
        j = xp.arange(n_rows, dtype=like.dtype, device=like.device)
    else:
        j = xp.arange(n_rows, dtype=like.dtype)
    return 1.0 - (1.0 - j / n_rows) ** 2


def ir_drop_c(a: Any) -> Any:
    """``c(a) = a·(0.05·a² − 0.2·a + 0.5)``: the IR-drop attenuation factor for wire load ``a``."""
    c1, c2, c3 = IR_DROP_POLY
    return a * (c3 * a * a + c2 * a + c1)


def ir_drop_delta(x_dac: Any, w: Any, scale: float) -> Any:
    """The output change due to IR drop, to be *added* to ``y = x_dac @ w``.

    ``a_i = (n/g_ratio)·Σ_j |w_ij|·|x_j|``, ``c_i = a_i·(0.05·a_i² − 0.2·a_i + 0.5)``,
    ``x̃_j = x_j·(1 − (1 − j/n)²)``, ``Δy_i = −scale·c_i·Σ_j w_ij·x̃_j``.
    """
    xp = namespace(x_dac, w)
    n = w.shape[0]
    x_tilde = x_dac * ir_drop_ramp(n, x_dac)
    return ir_drop_delta_from(xp.abs(x_dac) @ xp.abs(w), x_tilde @ w, n, scale)


def ir_drop_delta_from(abs_abs: Any, ramped: Any, n_rows: int, scale: float) -> Any:
    """:func:`ir_drop_delta` from its two matrix products over the tile's ``n_rows`` rows:
    ``abs_abs = |x_dac| @ |w|`` and ``ramped = x̃ @ w`` (``x̃_j = x_j·(1 − (1 − j/n)²)``), each
    (batch, cols), for callers that compute the products another way (convolutions)."""
    c = ir_drop_c((n_rows / IR_DROP_G_RATIO) * abs_abs)
    return -scale * c * ramped
