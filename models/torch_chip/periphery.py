"""Periphery on torch tensors: one analog MVM (dense or convolution) through an aged layer, step 6
of :mod:`models.torch_chip`, the torch twin of ``chipsim.reference.analog_matmul`` with chipsim's
DAC, IR-drop, output-noise and ADC formulas."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chipsim.periphery import adc, dac, ir_drop_delta_from, output_noise_std_from
from chipsim.profiles import ChipProfile
from models.torch_chip.devices import AgedWeights
from models.torch_chip.gradients import GradientMode, ValueWithGate, adc_expected_derivative, ste
from models.torch_chip.tile_products import ConvTileProducts, TileProducts


@dataclass
class MvmDraws:
    """Standard normals of one analog MVM, one (batch, cols) array per tile, scaled by the
    combined σ of per-MVM weight read noise and ADC output noise (the draws of
    ``chipsim.reference.draw_mvm_noise``)."""

    draws: list[torch.Tensor]

    @classmethod
    def draw(cls, batch: int, cols: int, n_tiles: int, generator: torch.Generator, dtype=torch.float32) -> MvmDraws:
        return cls([torch.randn(batch, cols, generator=generator, dtype=dtype) for _ in range(n_tiles)])


def _adc_active(profile: ChipProfile) -> bool:
    return profile.out_levels > 0 or profile.out_bound > 0


def _dac_input(x: torch.Tensor, input_range: float | torch.Tensor, profile: ChipProfile, gradient: GradientMode):
    """(x in DAC units, the range r the outputs are scaled back by). Elementwise, so it commutes
    with unfolding (and DAC(0) = 0, so with zero padding too). What autograd sees per mode:
    ``STE`` anything (run under no_grad), ``THROUGH_NOISE`` the clip and ÷r with the rounding as
    identity, ``THROUGH_CHIP`` the clip mask with r constant."""
    clip = getattr(profile, "in_clip", True)
    if gradient == GradientMode.THROUGH_CHIP:
        r = input_range.detach() if isinstance(input_range, torch.Tensor) else input_range
        if not (clip or profile.in_levels > 0):
            return x / r, r  # what dac() computes for an ideal DAC
        with torch.no_grad():
            x_val = dac(x, r, profile.in_levels, clip)
        inside = (x.detach().abs() <= r) if clip else None
        return ValueWithGate.apply(x / r, x_val, inside), r
    r = input_range
    x_dac = dac(x, r, profile.in_levels, clip)
    if gradient == GradientMode.THROUGH_NOISE:
        rr = torch.as_tensor(r, dtype=x.dtype)
        smooth = (torch.minimum(torch.maximum(x, -rr), rr) if clip else x) / rr
        x_dac = ste(x_dac, smooth, True)
    return x_dac, r


def _tiles_through_periphery(
    tiles: list[TileProducts],
    aged: AgedWeights,
    r: float | torch.Tensor,
    profile: ChipProfile,
    draws: MvmDraws,
    gradient: GradientMode,
    adc_gates: list[torch.Tensor] | None,
) -> torch.Tensor:
    """Per tile: ``x@w`` + IR drop + per-MVM read noise and output noise, ADC, ``× α_k``; summed
    over tiles, ``× r·s_col`` (no bias). The formulas are chipsim's (``ir_drop_delta_from``,
    ``output_noise_std_from``, ``adc``) on the products ``tiles`` compute.

    ``THROUGH_NOISE`` passes the ADC rounding straight through; ``THROUGH_CHIP`` differentiates
    IR drop and gates the ADC by its expected derivative over the Gaussian noise in front of it
    (σ per output from ``chipsim.periphery.output_noise_std``), appended to ``adc_gates``."""
    through_chip = gradient == GradientMode.THROUGH_CHIP
    straight_through = gradient == GradientMode.THROUGH_NOISE
    needs_noise = profile.w_noise > 0 or profile.out_noise > 0
    y = None
    for k, t in enumerate(tiles):
        yk = t.xw()
        if profile.ir_drop > 0:
            yk = yk + ir_drop_delta_from(t.abs_abs(), t.ramped(), t.n_rows, profile.ir_drop)
        std = None
        if needs_noise:
            with torch.no_grad():  # a constant for autograd in every mode (see models.torch_chip)
                std = output_noise_std_from(t.sq_abs(), profile.w_noise, profile.out_noise)
        if through_chip and _adc_active(profile):
            with torch.no_grad():
                noisy = yk + std * t.noise(draws.draws[k]) if std is not None else yk
                value = adc(noisy, profile.out_bound, profile.out_levels)
                gate = adc_expected_derivative(
                    yk, std if std is not None else 0.0, profile.out_bound, profile.out_levels
                )
            if adc_gates is not None:
                adc_gates.append(gate)
            yk = ValueWithGate.apply(yk, value, gate)
        else:
            if std is not None:
                yk = yk + std * t.noise(draws.draws[k])
            if not through_chip:
                yk = ste(adc(yk, profile.out_bound, profile.out_levels), yk, straight_through)
        yk = t.per_col(aged.alpha[k]) * yk
        y = yk if y is None else y + yk
    return y * tiles[0].per_col(r * aged.col_scale)


def analog_matmul(
    x: torch.Tensor,
    aged: AgedWeights,
    input_range: float | torch.Tensor,
    profile: ChipProfile,
    draws: MvmDraws,
    bias: torch.Tensor | None = None,
    gradient: GradientMode = GradientMode.STE,
    adc_gates: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``y ≈ x @ W + b`` through the aged tile, the torch twin of ``chipsim.reference.analog_matmul``.

    ``x`` (batch, rows) in input units, returns (batch, cols). ``gradient`` decides what autograd
    sees (:class:`GradientMode`; ``STE`` callers run this under ``no_grad``); the formulas are
    chipsim's. ``THROUGH_CHIP`` holds ``input_range`` constant and appends each tile's expected
    ADC derivative to ``adc_gates`` when given.
    """
    x_dac, r = _dac_input(x, input_range, profile, gradient)
    tiles = [TileProducts(x_dac[:, a:b], aged.w_t[a:b]) for a, b in aged.tiles]
    y = _tiles_through_periphery(tiles, aged, r, profile, draws, gradient, adc_gates)
    return y + bias if bias is not None else y


def analog_conv2d(
    x: torch.Tensor,
    aged: AgedWeights,
    input_range: float | torch.Tensor,
    profile: ChipProfile,
    draws: MvmDraws,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    bias: torch.Tensor | None = None,
    gradient: GradientMode = GradientMode.STE,
    adc_gates: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """A convolution through the aged tile: :func:`analog_matmul` of the unfolded patches of ``x``
    (rows in ``F.unfold`` order, one MVM per image and output position), folded back, computed
    without unfolding (:class:`ConvTileProducts`): the DAC runs once per input element, the
    products as convolutions, noise is drawn per output. ``x`` (batch, C, H, W) in input units,
    ``aged.w_t`` (C·k_h·k_w, cols); returns (batch, cols, H_out, W_out). ``draws`` as for the
    unfolded product: (batch·H_out·W_out, cols) per tile, so one generator state gives the same
    chip either way. Gradient modes as :func:`analog_matmul`; ADC gates come in output layout.
    """
    x_dac, r = _dac_input(x, input_range, profile, gradient)
    tiles: list[TileProducts] = [
        ConvTileProducts(x_dac, aged.w_t, a, b, kernel_size, stride, padding, dilation) for a, b in aged.tiles
    ]
    y = _tiles_through_periphery(tiles, aged, r, profile, draws, gradient, adc_gates)
    return y + bias.reshape(-1, 1, 1) if bias is not None else y
