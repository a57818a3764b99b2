"""The two evaluations of the hardening study (issue #18) for one trained model.

1. :func:`noise_model_fn` — the seed's protocol: the torch model with additive Gaussian noise of
   one absolute σ on every crossbar output (:mod:`studies.activation_noise` on the folded model;
   the same noise :mod:`models.activation_noise` trains with, a test checks they agree), as the
   ``model_fn`` of :func:`studies.noise_midpoint.sweep`.
2. :func:`chip_accuracies` — the aged chip on the serving path: the exported ONNX file programmed
   by ``chipsim.compiler.program_onnx`` onto ``n_chips`` instances of the ``pcm`` profile, run by
   ``chipsim.runtime.ChipRuntime`` at every age of :data:`studies.common.AGE_SCHEDULE`, GDC on
   and off — the Fashion-MNIST study's evaluation (:mod:`studies.fmnist_eval`) and its cell
   cache, so both studies read the same chips.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from chipsim.modes import ColumnScaling
from studies.common import AGE_SCHEDULE
from studies.fmnist_eval import CACHE_DIR


def noise_model_fn(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> Callable[[float, int], np.ndarray]:
    """``model_fn(σ, seed)`` → per-image correctness (bool (N,)) of ``model`` with activation
    noise σ: the Fashion-MNIST study's sweep function on the BatchNorm-folded export copy, i.e.
    noise on every crossbar output, where :mod:`models.activation_noise` trained it."""
    from models.fmnist_models import export_copy
    from studies.activation_noise import torch_model_fn

    return torch_model_fn(export_copy(model), x, y, batch)


def chip_accuracies(
    run_dir: Path,
    n_images: int,
    n_chips: int,
    profile: str = "pcm",
    cache: Path = CACHE_DIR,
    threads: int = 1,
) -> dict[str, dict[str, list[float]]]:
    """{gdc_on/gdc_off: {age label: [accuracy of chip 0, 1, …]}} of the ONNX file in ``run_dir``
    on the first ``n_images`` test images: the Fashion-MNIST study's cells (serving path, column
    scaling ``max`` as deployed, chip ``k`` = programming and per-MVM noise seed ``k``), computed
    once into its cell cache ``cache`` and shared with that study."""
    from studies.fmnist_eval import CellStore, evaluate, find_models, load_cells

    models = find_models([run_dir])
    if len(models) != 1:
        raise ValueError(f"{run_dir}: expected one exported model (ONNX with agedchip.recipe), found {len(models)}")
    store, arm, ages = CellStore(Path(cache), profile, n_images), str(ColumnScaling.MAX), list(AGE_SCHEDULE)
    evaluate(store, models, [arm], n_chips, ages, threads=threads, progress=False)
    cells, _, used = load_cells(store, models, [arm], n_chips, ages)
    complete = used[models[0].arch]
    if len(complete) != n_chips:
        raise RuntimeError(f"{run_dir}: {len(complete)} of {n_chips} chips evaluated")
    key = models[0].key
    return {
        ours: {age: [float(v) for v in cells[(key, arm, age, theirs)].mean(axis=1)] for age in ages}
        for ours, theirs in (("gdc_on", "on"), ("gdc_off", "off"))
    }
