"""The steps of the study in :mod:`studies.diagnose`: its configuration and data, plain training,
the plain model under every setting, the training strengths, HWA under each class alone, and
the verdicts (diagnostics against what training did).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from models.data import load_split
from models.hwa import HwaConfig
from models.torch_chip import GradientMode
from models.train import RECIPES, Recipe, accuracy, train
from studies import gradient_diagnostics
from studies.diagnose_setting import accuracy_under, class_schedule, diagnose_setting
from studies.perturbations import CLASSES, CONTROL, PerturbationClass


@dataclass
class StudyConfig:
    arch: str = "cnn"
    plain_epochs: int = 60
    #: The diagnostics run on the plain recipe trained for this many epochs (its own cosine
    #: schedule): a model in the middle of learning, where the clean gradient carries signal. At
    #: the converged model the clean gradient is ≈ 0 (buried in minibatch noise) and cosines to
    #: it are arbitrary; those are measured too, at the training strengths, for reference.
    diag_epochs: int = 3
    hwa_epochs: int = 30
    hwa_seeds: int = 2
    draws: int = 16
    batch: int = 256
    n_chips: int = 10
    seed: int = 0
    #: Training strength = the weakest sweep strength at which the plain model loses ≥ pick_gap
    #: accuracy on the validation split (else the strongest).
    pick_gap: float = 0.05
    classes: tuple[str, ...] = tuple(CLASSES)
    #: Per-class sweep overrides (tests, --quick).
    strengths: dict[str, tuple[float, ...]] = field(default_factory=dict)
    rules: gradient_diagnostics.Rules = field(default_factory=gradient_diagnostics.Rules)
    tau: float = gradient_diagnostics.TAU_W
    gate_pass: float = gradient_diagnostics.GATE_PASS
    max_steps: int | None = None
    progress: bool = True
    control: bool = True

    def sweep(self, key: str) -> tuple[float, ...]:
        return tuple(self.strengths.get(key, CLASSES[key].strengths))

    def settings(self) -> list[tuple[str, float]]:
        """Every (class, strength) of the sweeps."""
        return [(k, s) for k in self.classes for s in self.sweep(k)]


QUICK = dict(plain_epochs=30, hwa_epochs=12, hwa_seeds=1, draws=6, n_chips=4, batch=128)


@dataclass
class StudyData:
    """The digits splits as tensors, and the fixed training batch the diagnostics run on."""

    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    x_te: torch.Tensor
    y_te: torch.Tensor
    xb: torch.Tensor
    yb: torch.Tensor

    @classmethod
    def load(cls, batch: int, seed: int) -> StudyData:
        tr, va, te = (load_split(s) for s in ("train", "val", "test"))
        x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
        pick = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:batch]
        return cls(
            x_tr,
            y_tr,
            torch.from_numpy(va.x),
            torch.from_numpy(va.y),
            torch.from_numpy(te.x),
            torch.from_numpy(te.y),
            x_tr[pick],
            y_tr[pick],
        )


def diagnose_row(
    cfg: StudyConfig, data: StudyData, model: nn.Module, g_clean: list[torch.Tensor], k: str, s: float, bar
) -> dict:
    """The diagnostics of class ``k`` at strength ``s``, as a results row."""
    bar.set_postfix_str(f"{k} {CLASSES[k].fmt(s)}")
    d = diagnose_setting(
        model, CLASSES[k], s, data.xb, data.yb, g_clean, cfg.draws, cfg.seed + 1, cfg.tau, cfg.gate_pass, bar
    )
    if d.forward_mismatch > 1e-3:
        raise RuntimeError(
            f"{k} at {s}: the through forward left the trainer's chip instance "
            f"(|Δlogits| = {d.forward_mismatch:.3g}); models.hwa changed?"
        )
    return {"strength": s, **asdict(d)}


def evaluate_plain(cfg: StudyConfig, data: StudyData, plain: nn.Module, tqdm) -> dict[str, list[dict]]:
    """The plain model under every setting: validation and test accuracy."""
    plain_acc: dict[str, list[dict]] = {k: [] for k in cfg.classes}
    for k, s in tqdm(cfg.settings(), desc="evaluate plain", disable=not cfg.progress):
        va = accuracy_under(plain, CLASSES[k], s, data.x_va, data.y_va, cfg.n_chips, cfg.seed + 2)
        te = accuracy_under(plain, CLASSES[k], s, data.x_te, data.y_te, cfg.n_chips, cfg.seed + 3)
        plain_acc[k].append({"strength": s, "val": va[0], "test": te[0], "test_std": te[1]})
    return plain_acc


def training_strengths(cfg: StudyConfig, plain_acc: dict[str, list[dict]], acc_clean_va: float) -> dict[str, float]:
    """Per class, the weakest strength at which the plain model loses ≥ ``pick_gap`` on the
    validation split (else the strongest)."""
    train_strength = {}
    for k in cfg.classes:
        chosen = cfg.sweep(k)[-1]
        for row in plain_acc[k]:
            if acc_clean_va - row["val"] >= cfg.pick_gap:
                chosen = row["strength"]
                break
        train_strength[k] = chosen
    return train_strength


def hwa_run(
    cfg: StudyConfig, data: StudyData, plain: nn.Module, key: str, pc: PerturbationClass, s: float
) -> dict[str, list[float]]:
    """The HWA recipe trained under ``pc`` at ``s`` (key ``none``: the control on an ideal chip),
    mean over seeds of its test accuracy on every sweep point of its class (the control: of
    every class) and without perturbation (``clean``)."""
    per_seed: list[dict[str, list[float]]] = []
    for j in range(cfg.hwa_seeds):
        recipe = replace(
            RECIPES[f"{cfg.arch}-hwa"],
            epochs=cfg.hwa_epochs,
            seed=cfg.seed + 10 + j,
            ramp_epochs=max(1, round(cfg.hwa_epochs / 6)),
            noise=HwaConfig(profile="ideal", gdc=False, mode=GradientMode.STE),
        )
        res = train(
            recipe,
            init=plain.state_dict(),
            teacher=plain if recipe.distill > 0 else None,
            progress=cfg.progress,
            desc=f"hwa {key} {pc.fmt(s)}",
            max_steps=cfg.max_steps,
            chip=class_schedule(pc, s),
        )
        for name, p in plain.named_parameters():  # the trainer froze its teacher
            p.requires_grad_(not name.endswith("input_range"))
        accs: dict[str, list[float]] = {}
        for k in cfg.classes:
            if key != "none" and k != key:
                continue
            accs[k] = [
                accuracy_under(res.model, CLASSES[k], s2, data.x_te, data.y_te, cfg.n_chips, cfg.seed + 3)[0]
                for s2 in cfg.sweep(k)
            ]
        accs["clean"] = [accuracy(res.model, data.x_te, data.y_te)]
        per_seed.append(accs)
    return {k: [float(v) for v in np.mean([p[k] for p in per_seed], axis=0)] for k in per_seed[0]}


def verdict_rows(
    cfg: StudyConfig,
    diag: dict[str, list[dict]],
    plain_acc: dict[str, list[dict]],
    hwa_acc: dict[str, dict],
    train_strength: dict[str, float],
    acc_clean_te: float,
) -> list[dict]:
    """Per class, at its training strength: what the diagnostics say and what training did."""
    rows = []
    for k in cfg.classes:
        pc = CLASSES[k]
        s = train_strength[k]
        i = list(cfg.sweep(k)).index(s)
        d = diag[k][i]
        ok, why = gradient_diagnostics.diagnostic_verdict(
            d["cos_ste"], d["relvar_ste"], d["sens_weights"], d["sens_outputs"], cfg.rules
        )
        a_plain = plain_acc[k][i]["test"]
        a_hwa = hwa_acc[k][k][i]
        frac, outcome = gradient_diagnostics.gap_recovered(acc_clean_te, a_plain, a_hwa, cfg.rules)
        a_ctrl = hwa_acc["none"][k][i] if cfg.control else float("nan")
        frac_ctrl = (
            gradient_diagnostics.gap_recovered(acc_clean_te, a_plain, a_ctrl, cfg.rules)[0]
            if cfg.control
            else float("nan")
        )
        trained = outcome == "closes" if outcome != "no gap" else None
        rows.append(
            {
                "class": k,
                "label": pc.label,
                "strength": s,
                "strength_label": pc.fmt(s),
                "cos_ste": d["cos_ste"],
                "relvar_ste": d["relvar_ste"],
                "sens_weights": d["sens_weights"],
                "sens_outputs": d["sens_outputs"],
                "diagnostics_compensable": ok,
                "diagnostics_reasons": why,
                "acc_clean": acc_clean_te,
                "acc_plain": a_plain,
                "acc_hwa": a_hwa,
                "acc_control": a_ctrl,
                "acc_hwa_clean": hwa_acc[k]["clean"][0],
                "gap": acc_clean_te - a_plain,
                "recovered": frac,
                "recovered_control": frac_ctrl,
                "outcome": outcome,
                "agree": None if trained is None else (trained == ok),
            }
        )
    return rows


def train_plain(cfg: StudyConfig) -> tuple[Recipe, nn.Module, nn.Module]:
    """The user's model: plain (floating-point) training, and a partly trained copy
    (``cfg.diag_epochs``); returns (recipe, trained model, partly trained model)."""
    plain_recipe = replace(RECIPES[f"{cfg.arch}-plain"], epochs=cfg.plain_epochs, seed=cfg.seed)
    plain = train(plain_recipe, progress=cfg.progress, desc=f"{cfg.arch}-plain", max_steps=cfg.max_steps).model
    early = train(
        replace(plain_recipe, epochs=cfg.diag_epochs),
        progress=cfg.progress,
        desc=f"{cfg.arch}-plain {cfg.diag_epochs} ep",
        max_steps=cfg.max_steps,
    ).model
    return plain_recipe, plain, early


def hwa_per_class(
    cfg: StudyConfig, data: StudyData, plain: nn.Module, train_strength: dict[str, float]
) -> tuple[dict[str, dict], dict[str, float]]:
    """HWA under each class alone (and the control: the same recipe on an ideal chip); returns
    the accuracies and the wall-clock seconds (s) of each run."""
    from tqdm.auto import tqdm

    runs = [(k, CLASSES[k], train_strength[k]) for k in cfg.classes]
    if cfg.control:
        runs.append(("none", CONTROL, 0.0))
    hwa_acc: dict[str, dict] = {}
    hwa_seconds: dict[str, float] = {}
    for key, pc, s in tqdm(runs, desc="HWA per class", disable=not cfg.progress):
        t_run = time.perf_counter()
        hwa_acc[key] = hwa_run(cfg, data, plain, key, pc, s)
        hwa_seconds[key] = time.perf_counter() - t_run
    return hwa_acc, hwa_seconds


def config_json(cfg: StudyConfig) -> dict:
    d = asdict(cfg)
    d["classes"] = list(cfg.classes)
    d["strengths"] = {k: list(v) for k, v in cfg.strengths.items()}
    return d
