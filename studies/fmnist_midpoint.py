"""Robustness midpoint µ of the Fashion-MNIST models under the hardening literature's noise model,
with the clip-only control (issue #12).

Noise: Gaussian, one absolute σ on every weight layer's output (:mod:`studies.activation_noise`),
on the BatchNorm-folded network (the layers the chip computes), no other perturbation; accuracy on
the first ``n_images`` test images at each σ of :data:`SIGMAS` and noise seed; logistic fit in
ln σ with chance 0.1 (:mod:`studies.noise_midpoint`). The training seeds of one (arch, mode) are
pooled: a bootstrap replicate resamples (model, noise seed) pairs and images, with one bootstrap
seed for all arms, so that µ ratios between arms of equally many models are paired.

Arms: each trained mode, and **plain + clip only** — the plain models with HWA's per-channel
weight clipping (``clip_sigma`` of the HWA recipe, 2.5 σ by default) applied after training and
nothing else, so that µ(clip only)/µ(plain) shows the share of HWA's µ that clipping alone buys.
Needs torch and each run's ``model.pt``, or rebuilds the model from its ONNX file
(:mod:`models.fmnist_rebuild`, checked against onnxruntime); sweeps are cached beside the chip cells.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from studies.fmnist_eval import TrainedModel
from studies.noise_midpoint import LogisticFit, MidpointFitError, Sweep, fit_logistic, midpoint_difference, sweep

#: Absolute σ grid (units of the layer outputs; BN-folded ResNet layer outputs are O(1)).
SIGMAS = np.logspace(-2, 2, 17)
NOISE_SEEDS = (0, 1, 2)
CHANCE = 0.1
CLIP_LABEL = "plain + clip only"
#: HWA's clipping when no HWA recipe says otherwise (models.train_fmnist.FmnistRecipe.clip_sigma).
DEFAULT_CLIP_SIGMA = 2.5


def _sweep_path(cache: Path, m: TrainedModel, label: str, n_images: int, sigmas, seeds) -> Path:
    key = hashlib.sha256(json.dumps([label, n_images, list(map(float, sigmas)), list(seeds)]).encode()).hexdigest()
    return cache / m.digest / f"mu-{key[:12]}.json"


def _model_sweep(m: TrainedModel, label: str, clip_sigma: float | None, x, y, sigmas, seeds) -> Sweep:
    import torch

    from models import fmnist_models as FM
    from models.fmnist_rebuild import torch_from_onnx
    from models.train_fmnist import load_model
    from studies.activation_noise import clipped_copy, torch_model_fn

    torch.set_num_threads(1)
    if m.torch_path is not None:
        model, _, _ = load_model(m.torch_path.parent)
    else:  # the zoo's committed ONNX alone (seed 0's model.pt was lost): the same weights, checked
        model = torch_from_onnx(m.onnx_path)[0]
    if clip_sigma is not None:
        model = clipped_copy(model, clip_sigma)
    return sweep(torch_model_fn(FM.export_copy(model).eval(), x, y), sigmas, seeds)


def sweeps(
    models: Sequence[TrainedModel],
    cache: Path,
    n_images: int,
    sigmas: Sequence[float] = SIGMAS,
    seeds: Sequence[int] = NOISE_SEEDS,
    progress: bool = True,
) -> dict[tuple[str, str], list[Sweep]]:
    """{(arch, arm label): [Sweep per model]} for every model, cached; a model without a
    ``model.pt`` is rebuilt from its ONNX file (:func:`models.fmnist_rebuild.torch_from_onnx`)."""
    from tqdm.auto import tqdm

    from models import fmnist_data as D

    test = D.load_split("test", n_images)
    clip = {m.arch: m.clip_sigma for m in models if m.mode == "hwa" and m.clip_sigma}
    jobs = [(m, m.mode, None) for m in models]
    jobs += [(m, CLIP_LABEL, clip.get(m.arch, DEFAULT_CLIP_SIGMA)) for m in models if m.mode == "plain"]
    out: dict[tuple[str, str], list[Sweep]] = {}
    for m, label, clip_sigma in tqdm(jobs, desc="µ sweeps", unit="model", disable=not progress):
        path = _sweep_path(cache, m, label, n_images, sigmas, seeds)
        if path.is_file():
            s = Sweep.from_json(json.loads(path.read_text()))
        else:
            s = _model_sweep(m, label, clip_sigma, test.x, test.y, sigmas, seeds)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(s.to_json()))
            os.replace(tmp, path)
        out.setdefault((m.arch, label), []).append(s)
    return out


def _fit(ss: list[Sweep], n_boot: int, seed: int) -> LogisticFit | None:
    pooled = np.concatenate([s.correct for s in ss], axis=1)  # (σ, models × noise seeds, N)
    try:
        return fit_logistic(np.log(ss[0].sigmas), pooled, CHANCE, n_boot=n_boot, seed=seed)
    except MidpointFitError:
        return None


def _fit_json(f: LogisticFit | None) -> dict | None:
    if f is None:
        return None
    return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in f.to_json().items()} | {
        "mu_ci": [round(v, 4) for v in f.mu_ci],
        "slope_ci": [round(v, 4) for v in f.slope_ci],
    }


def midpoint_study(
    models: Sequence[TrainedModel],
    cache: Path,
    n_images: int = 2000,
    n_boot: int = 200,
    sigmas: Sequence[float] = SIGMAS,
    seeds: Sequence[int] = NOISE_SEEDS,
    progress: bool = True,
) -> dict:
    """µ per (arch, arm) with bootstrap intervals, and µ ratios to plain (JSON-able)."""
    by = sweeps(models, cache, n_images, sigmas, seeds, progress)
    # one bootstrap seed for every fit: arms with the same number of models resample the same
    # (model, noise seed) positions and images in each replicate, so their µ ratios are paired
    fits = {k: _fit(v, n_boot, seed=0) for k, v in sorted(by.items())}
    rows = [
        {
            "arch": a,
            "arm": label,
            "n_models": len(by[(a, label)]),
            "fit": _fit_json(f),
            "accuracy": [
                round(float(v) * 100, 2) for v in np.concatenate([s.correct for s in by[(a, label)]], 1).mean((1, 2))
            ],
        }
        for (a, label), f in sorted(fits.items())
    ]
    ratios = []
    for (a, label), f in sorted(fits.items()):
        base = fits.get((a, "plain"))
        if label == "plain" or f is None or base is None:
            continue
        r, (lo, hi) = midpoint_difference(f, base)
        ratios.append(
            {
                "arch": a,
                "arm": label,
                "ratio": round(r, 3),
                "lo": round(lo, 3),
                "hi": round(hi, 3),
                "significant": bool(lo > 1 or hi < 1),
            }
        )
    return {
        "sigmas": [float(s) for s in sigmas],
        "noise_seeds": list(seeds),
        "n_images": n_images,
        "n_boot": n_boot,
        "chance": CHANCE,
        "rows": rows,
        "ratios": ratios,
    }
