"""Drift metrics of a chip at an age (DESIGN §3.4, §5 ``/drift``).

Per layer: the GDC factor α (mean and per tile), the conductance ratio ΣG(t)/ΣG_prog over all
devices, the relative weight error ‖W(t) − W‖/‖W‖ without and with GDC, stuck devices by kind
and the mean drift exponent of healthy devices.
"""

from __future__ import annotations

import numpy as np

from chipsim import faults
from chipsim.modes import GdcMode
from chipsim.readout import ChipReadout, conductances_at, layer_age, read, read_stream
from chipsim.state import ChipState


def _rel_error(w_t: np.ndarray, w: np.ndarray) -> float:
    norm = float(np.linalg.norm(w))
    return float(np.linalg.norm(w_t - w)) / norm if norm > 0 else 0.0


def drift_metrics(
    chip: ChipState,
    age_s: float,
    read_seed: int = 0,
    gdc: GdcMode | None = None,
    readout: ChipReadout | None = None,
) -> dict:
    """Metrics per layer and for the whole chip. ``gdc`` defaults to the profile's mode
    (``global`` if the profile has GDC off, so the "with GDC" error is always informative)."""
    mode = GdcMode.resolve(gdc, chip.profile.gdc)
    readout = readout or read(chip, age_s, read_seed)
    g_max = chip.profile.device_model.g_max_us
    layers = []
    tot = dict(sq_err_raw=0.0, sq_err_gdc=0.0, sq_w=0.0, g_t=0.0, g_prog=0.0, reset=0, set=0, nu_sum=0.0, nu_n=0)
    for i, (layer, layer_readout) in enumerate(zip(chip.layers, readout.layers)):
        w = layer.weight.astype(np.float64)
        s = layer.col_scale.astype(np.float64)
        w_raw = layer_readout.w_norm * s
        alpha = layer_readout.alpha(mode)
        tile_alpha = layer_readout.tile_alpha(mode)
        w_gdc = np.empty_like(w_raw)
        for k, (a, b) in enumerate(layer.tiles):
            w_gdc[a:b] = w_raw[a:b] * alpha[k]
        g_prog = layer.g_prog_us(g_max)
        device_age = layer_age(layer, readout.age_s)
        rng = read_stream(chip.seed, readout.read_seed, i, device_age)  # same draws as the read-out
        g_t = conductances_at(layer, chip.profile, device_age, rng)
        codes = faults.decode_faults(layer.nu)
        nu = layer.nu.astype(np.float64)[codes == faults.HEALTHY]
        entry = {
            "name": layer.name,
            "rows": layer.shape[0],
            "cols": layer.shape[1],
            "tiles": len(layer.tiles),
            "devices": int(layer.nu.size),
            "alpha_mean": float(np.mean(tile_alpha)),
            "alpha_per_tile": [float(a) for a in tile_alpha],
            "g_ratio": float(g_t.sum(dtype=np.float64) / max(g_prog.sum(dtype=np.float64), 1e-30)),
            "weight_error": _rel_error(w_raw, w),
            "weight_error_gdc": _rel_error(w_gdc, w),
            "stuck_reset": int(np.sum(codes == faults.STUCK_RESET)),
            "stuck_set": int(np.sum(codes == faults.STUCK_SET)),
            "mean_nu": float(nu.mean()) if nu.size else 0.0,
        }
        layers.append(entry)
        tot["sq_err_raw"] += float(np.sum((w_raw - w) ** 2))
        tot["sq_err_gdc"] += float(np.sum((w_gdc - w) ** 2))
        tot["sq_w"] += float(np.sum(w**2))
        tot["g_t"] += float(g_t.sum(dtype=np.float64))
        tot["g_prog"] += float(g_prog.sum(dtype=np.float64))
        tot["reset"] += entry["stuck_reset"]
        tot["set"] += entry["stuck_set"]
        tot["nu_sum"] += float(nu.sum())
        tot["nu_n"] += int(nu.size)
    sq_w = max(tot["sq_w"], 1e-300)
    return {
        "age_s": readout.age_s,
        "read_seed": readout.read_seed,
        "gdc": mode,
        "layers": layers,
        "weight_error": (tot["sq_err_raw"] / sq_w) ** 0.5,
        "weight_error_gdc": (tot["sq_err_gdc"] / sq_w) ** 0.5,
        "g_ratio": tot["g_t"] / max(tot["g_prog"], 1e-30),
        "stuck_reset": tot["reset"],
        "stuck_set": tot["set"],
        "stuck_fraction": (tot["reset"] + tot["set"]) / max(chip.n_devices, 1),
        "mean_nu": tot["nu_sum"] / max(tot["nu_n"], 1),
    }
