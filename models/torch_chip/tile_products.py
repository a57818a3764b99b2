"""The matrix products of one tile's MVM that the periphery needs, for a dense layer
(:class:`TileProducts`) and for a convolution computed as convolutions (:class:`ConvTileProducts`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chipsim.periphery import ir_drop_ramp


class TileProducts:
    """The matrix products of one tile's MVM that the periphery needs, from the DAC-unit inputs
    ``x`` of the tile's rows and its normalised weights ``w`` at the age (``n_rows`` rows):
    ``x@w``, ``|x|@|w|`` and ``x̃@w`` (IR drop), ``x²@|w|`` (per-MVM read noise). This class
    computes them as matrix products of rows (batch, rows) → (batch, cols);
    :class:`ConvTileProducts` as convolutions, without unfolding."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor):
        self.x, self.w, self.n_rows = x, w, w.shape[0]

    def xw(self) -> torch.Tensor:
        return self.x @ self.w

    def abs_abs(self) -> torch.Tensor:
        return self.x.abs() @ self.w.abs()

    def ramped(self) -> torch.Tensor:
        return (self.x * ir_drop_ramp(self.n_rows, self.x)) @ self.w

    def sq_abs(self) -> torch.Tensor:
        return (self.x * self.x) @ self.w.abs()

    def per_col(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output-column vector (cols,), shaped to broadcast over the outputs."""
        return v

    def noise(self, draw: torch.Tensor) -> torch.Tensor:
        """An :class:`MvmDraws` array (one row per MVM, batch·positions × cols) in output layout."""
        return draw


class ConvTileProducts(TileProducts):
    """One tile of a convolution's crossbar, its products computed as convolutions of the whole
    DAC-unit input ``x_dac`` (batch, C, H, W) instead of matrix products of unfolded patches.

    The crossbar's rows are the patch elements in ``F.unfold`` order (channel, kernel row, kernel
    column), so tile rows ``a:b`` are input channels ``a//kk … ⌈b/kk⌉`` (kk = k_h·k_w). Where a
    tile boundary cuts a channel's kernel, the other tile's weights are zeroed: a zero weight adds
    exactly 0. Per-row factors (the IR-drop ramp) go onto the weights. Every product is the
    unfolded one summed in another order, i.e. equal up to float rounding; each input element is
    touched once instead of k_h·k_w times.
    """

    def __init__(
        self,
        x_dac: torch.Tensor,
        w_t: torch.Tensor,
        a: int,
        b: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ):
        kk = kernel_size[0] * kernel_size[1]
        c0, c1 = a // kk, -(-b // kk)
        w = w_t[c0 * kk : c1 * kk].t()  # (cols, channels·kk): conv weight order
        self.lead, self.n_rows = a - c0 * kk, b - a
        if self.lead or c1 * kk != b:
            mask = torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
            mask[self.lead : self.lead + self.n_rows] = 1
            w = w * mask
        self.x, self.w = x_dac[:, c0:c1], w
        self.shape = (w.shape[0], c1 - c0, *kernel_size)
        self.geometry = dict(stride=stride, padding=padding, dilation=dilation)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w.reshape(self.shape), **self.geometry)

    def xw(self) -> torch.Tensor:
        return self._conv(self.x, self.w)

    def abs_abs(self) -> torch.Tensor:
        return self._conv(self.x.abs(), self.w.abs())

    def ramped(self) -> torch.Tensor:
        ramp = torch.zeros(self.w.shape[1], dtype=self.w.dtype, device=self.w.device)
        ramp[self.lead : self.lead + self.n_rows] = ir_drop_ramp(self.n_rows, self.w)
        return self._conv(self.x, self.w * ramp)

    def sq_abs(self) -> torch.Tensor:
        return self._conv(self.x * self.x, self.w.abs())

    def per_col(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, 1, 1) if v.ndim == 1 else v

    def noise(self, draw: torch.Tensor) -> torch.Tensor:
        # MvmDraws rows are (image, output position) in unfold order; outputs are (image, col, h, w)
        g = self.geometry
        h, w = (
            (self.x.shape[2 + i] + 2 * g["padding"][i] - g["dilation"][i] * (self.shape[2 + i] - 1) - 1)
            // g["stride"][i]
            + 1
            for i in range(2)
        )
        return draw.reshape(self.x.shape[0], h, w, draw.shape[1]).permute(0, 3, 1, 2)
