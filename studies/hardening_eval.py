"""The two evaluations of the hardening study (issue #18) for one trained model.

1. :func:`noise_model_fn` — the seed's protocol: the torch model with additive Gaussian noise of
   one absolute σ on every crossbar output (:mod:`studies.activation_noise` on the folded model;
   the same noise :mod:`models.activation_noise` trains with, a test checks they agree), as the
   ``model_fn`` of :func:`studies.noise_midpoint.sweep`.
2. :func:`chip_accuracies` — the aged chip on the serving path: the exported ONNX file programmed
   by ``chipsim.compiler.program_onnx`` onto ``n_chips`` instances of the ``pcm`` profile (chip
   seed ``i``), run by ``chipsim.runtime.ChipRuntime`` at every age of
   :data:`studies.common.AGE_SCHEDULE`, GDC on and off (read-out seed 0, per-MVM noise seed 0).
   A small evaluation of its own, kept behind this one function so that the Fashion-MNIST study's
   evaluation can replace it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from chipsim import get_profile
from studies.common import AGE_SCHEDULE, chip_accuracy

#: Keys of the chip table: GDC on, GDC off.
GDC_KEYS = {"gdc_on": True, "gdc_off": False}


def noise_model_fn(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> Callable[[float, int], np.ndarray]:
    """``model_fn(σ, seed)`` → per-image correctness (bool (N,)) of ``model`` with activation
    noise σ: the Fashion-MNIST study's sweep function on the BatchNorm-folded export copy, i.e.
    noise on every crossbar output, where :mod:`models.activation_noise` trained it."""
    from models.fmnist_models import export_copy
    from studies.activation_noise import torch_model_fn

    return torch_model_fn(export_copy(model), x, y, batch)


def chip_accuracies(
    onnx_bytes: bytes,
    x: np.ndarray,
    y: np.ndarray,
    n_chips: int,
    profile: str = "pcm",
    ages: dict[str, float] = AGE_SCHEDULE,
    threads: int = 1,
) -> dict[str, dict[str, list[float]]]:
    """{gdc_on/gdc_off: {age label: [accuracy of chip 0, 1, …]}} on the serving path."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    p = get_profile(profile)
    out: dict[str, dict[str, list[float]]] = {k: {a: [] for a in ages} for k in GDC_KEYS}
    for chip_seed in range(n_chips):
        rt = ChipRuntime(program_onnx(onnx_bytes, p, seed=chip_seed, chip_id=f"hardening-{chip_seed}"), threads=threads)
        for label, age in ages.items():
            for key, gdc in GDC_KEYS.items():
                out[key][label].append(chip_accuracy(rt, x, y, age, gdc))
    return out
