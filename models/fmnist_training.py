"""The training loop of :mod:`models.train_fmnist`: a recipe trained into a run folder (per epoch a
checkpoint and a history line, resumable), chip-in-the-loop modes through :mod:`models.hwa`, and
the emulated-chip accuracy it monitors."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import fmnist_data as D
from models import fmnist_models as FM
from models import hwa as H
from models.fmnist_recipe import FmnistRecipe, Optimizer, TrainMode, model_name
from models.train import _kd_loss as kd_loss
from models.train import accuracy

#: Images the DAC input ranges are calibrated on (the first of the training split). The layer
#: with the fewest inputs per image is the head (64), so its 0.9999 quantile is taken over
#: 65 536 values (≈ 7 above it); all 55 000 images would hold gigabytes of conv activations.
CALIBRATION_IMAGES = 1024
#: Emulated validation: images of the validation split run through the emulated chip each
#: epoch (HWA modes), at this age, in batches of EMU_BATCH (each batch is one chip instance).
EMU_AGE_S = H.YEAR_S
EMU_BATCH = 250


@dataclass
class Run:
    """Where a training run writes, and what it has done so far (for ``--resume``)."""

    out: Path
    history: list[dict] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    def end_epoch(self, rec: dict, state: dict) -> None:
        """Record an epoch: checkpoint first (written whole, then renamed), then the log line,
        so a run killed in between resumes at the epoch its log ends with or redoes it."""
        self.history.append(rec)
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save({**state, "history": self.history}, tmp)
        os.replace(tmp, self.checkpoint)
        with open(self.out / "history.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


# --------------------------------------------------------------------------- evaluation
def emulated_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    profile: str,
    age_s: float = EMU_AGE_S,
    seed: int = 0,
    batch: int = EMU_BATCH,
) -> float:
    """Accuracy on the chip emulated in torch (:mod:`models.hwa`, the deployed chip: noise and
    fault scale 1, GDC on) at ``age_s``; each batch of ``batch`` images is one chip instance.
    A training-time monitor; the report runs the exported ONNX on the chipsim runtime."""
    ctx = H.HwaContext(H.HwaConfig(profile=profile), torch.Generator().manual_seed(seed))
    was = model.training
    H.attach(model, ctx)
    FM.set_emulation_mode(model)
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                ctx.new_batch(1.0, age_s)
                correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    finally:
        H.attach(model, None)
        model.train(was)
    return correct / len(x)


def _optimizer(model: nn.Module, recipe: FmnistRecipe) -> torch.optim.Optimizer:
    ranges = [p for n, p in model.named_parameters() if n.endswith("input_range") and p.requires_grad]
    # no weight decay on ranges, BatchNorm/LayerNorm and biases (1-D parameters)
    decay = [p for n, p in model.named_parameters() if not n.endswith("input_range") and p.ndim > 1]
    flat = [p for n, p in model.named_parameters() if not n.endswith("input_range") and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": flat, "weight_decay": 0.0}]
    if ranges:
        groups.append({"params": ranges, "weight_decay": 0.0})
    if recipe.optimizer is Optimizer.SGD:
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


def noise_strength(mode: TrainMode, step: int, ramp_steps: int) -> float:
    """Strength of the emulated chip's noise at optimiser step ``step`` (from 0): HWA ramps it
    linearly up to 1 over ``ramp_steps``; the recipe control keeps it at 0 (no noise, no
    drift, no faults; the DAC/ADC, remapping and IR drop remain)."""
    if mode is TrainMode.RECIPE:
        return 0.0
    return min(1.0, (step + 1) / max(1, ramp_steps))


def train(
    recipe: FmnistRecipe,
    run: Run,
    *,
    teacher: nn.Module | None = None,
    arch_kwargs: dict | None = None,
    limit_train: int | None = None,
    limit_val: int | None = None,
    emu_val: int = 1000,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Train by ``recipe`` into ``run.out``; returns the model (eval mode). ``teacher``: the
    plain model to start from and distil from (chip-in-the-loop modes). ``limit_*`` keep the
    first images of a split, ``max_steps`` stops early (tests, timing)."""
    from tqdm.auto import tqdm

    if recipe.mode.chip_in_loop and teacher is None:
        raise ValueError(f"mode {recipe.mode}: needs the plain model as teacher (--teacher RUN_DIR)")
    tr, va = D.load_split("train", limit_train), D.load_split("val", limit_val)
    x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    x_va, y_va = torch.from_numpy(va.x), torch.from_numpy(va.y)
    arch_kwargs = arch_kwargs or {}
    model = FM.build(recipe.arch, recipe.seed, **arch_kwargs)
    gen = torch.Generator().manual_seed(recipe.seed)
    ctx = _start_from_teacher(model, teacher, recipe, x_tr) if recipe.mode.chip_in_loop else None
    opt = _optimizer(model, recipe)
    ranges = [p for n, p in model.named_parameters() if n.endswith("input_range") and p.requires_grad]
    steps_per_epoch = math.ceil(len(x_tr) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    step, first_epoch = 0, 0
    if resume and run.checkpoint.is_file():
        step, first_epoch = _restore_checkpoint(run, model, opt, sched, gen, ctx)
    limit = total if max_steps is None else min(total, max_steps)
    H.attach(model, ctx)
    name = model_name(recipe)
    model.train()
    for epoch in range(first_epoch, recipe.epochs):
        if step >= limit:
            break
        t0 = time.perf_counter()
        perm = torch.randperm(len(x_tr), generator=gen)
        losses = []
        bar = tqdm(
            total=min(steps_per_epoch, limit - step),
            desc=f"{name} {epoch + 1}/{recipe.epochs}",
            disable=not progress,
            unit="step",
            leave=False,
        )
        for i in range(0, len(x_tr), recipe.batch_size):
            if step >= limit:
                break
            idx = perm[i : i + recipe.batch_size]
            x, y = x_tr[idx], y_tr[idx]
            if recipe.augment:
                x = D.augment(x, gen)
            if ctx is not None:
                ctx.new_batch(noise_strength(recipe.mode, step, round(recipe.ramp_epochs * steps_per_epoch)))
            loss = _batch_loss(model, teacher, recipe, ctx, x, y)
            _optimiser_step(model, recipe, opt, sched, loss)
            if ctx is not None:
                _project_onto_chip(model, recipe, ranges)
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.close()
        H.attach(model, None)
        rec = _epoch_record(model, recipe, ctx, x_va, y_va, emu_val, epoch, step, losses, t0)
        H.attach(model, ctx)
        model.train()
        run.end_epoch(rec, _checkpoint_state(model, opt, sched, gen, ctx, step, epoch))
        _print_record(rec, progress)
    H.attach(model, None)
    _finish(model, recipe, arch_kwargs, x_tr, run)
    return model


def _start_from_teacher(model: nn.Module, teacher: nn.Module, recipe: FmnistRecipe, x_tr: torch.Tensor) -> H.HwaContext:
    """Chip-in-the-loop start: copy and freeze the teacher, set the DAC ranges, clip; returns the noise context."""
    model.load_state_dict(teacher.state_dict())
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    H.calibrate_input_ranges(model, x_tr[:CALIBRATION_IMAGES])
    H.set_learn_ranges(model, recipe.learn_ranges)
    ctx = H.HwaContext(recipe.noise, torch.Generator().manual_seed(recipe.seed + 1))
    if recipe.clip_sigma > 0:
        H.clip_weights(model, recipe.clip_sigma)
    return ctx


def _restore_checkpoint(
    run: Run,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    ctx: H.HwaContext | None,
) -> tuple[int, int]:
    """Load ``run``'s checkpoint into the training state (and ``run.history``); returns (step, first epoch)."""
    ck = torch.load(run.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    gen.set_state(ck["gen"])
    if ctx is not None:
        ctx.generator.set_state(ck["ctx_gen"])
    run.history = ck["history"]
    return ck["step"], ck["epoch"]


def _batch_loss(
    model: nn.Module,
    teacher: nn.Module | None,
    recipe: FmnistRecipe,
    ctx: H.HwaContext | None,
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy, blended with distillation from ``teacher`` and the DAC range decay when they apply."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    if teacher is not None and recipe.distill > 0:
        with torch.no_grad():
            t_logits = teacher(x)
        loss = (1 - recipe.distill) * loss + recipe.distill * kd_loss(logits, t_logits, recipe.distill_temperature)
    if ctx is not None:
        loss = loss + H.range_decay_loss(model, recipe.range_decay)
    return loss


def _optimiser_step(
    model: nn.Module,
    recipe: FmnistRecipe,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    opt.step()
    sched.step()


def _checkpoint_state(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    ctx: H.HwaContext | None,
    step: int,
    epoch: int,
) -> dict:
    """What :func:`_restore_checkpoint` reads back after ``epoch`` (0-based) ended at ``step``."""
    return {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "gen": gen.get_state(),
        "ctx_gen": ctx.generator.get_state() if ctx else None,
        "step": step,
        "epoch": epoch + 1,
    }


def _project_onto_chip(model: nn.Module, recipe: FmnistRecipe, ranges: list[nn.Parameter]) -> None:
    """After a chip-in-the-loop step: clip the weights and keep the learned DAC ranges positive."""
    if recipe.clip_sigma > 0:
        H.clip_weights(model, recipe.clip_sigma)
    with torch.no_grad():  # a DAC range must stay positive
        for p in ranges:
            p.clamp_(min=1e-3)


def _epoch_record(
    model: nn.Module,
    recipe: FmnistRecipe,
    ctx: H.HwaContext | None,
    x_va: torch.Tensor,
    y_va: torch.Tensor,
    emu_val: int,
    epoch: int,
    step: int,
    losses: list[float],
    t0: float,
) -> dict:
    """The history row of a finished epoch; ``t0`` is its start (``time.perf_counter``, s)."""
    train_s = time.perf_counter() - t0
    rec = {
        "epoch": epoch + 1,
        "steps": step,
        "loss": float(np.mean(losses)),
        "train_seconds": round(train_s, 2),
        "seconds_per_step": round(train_s / len(losses), 4),
        "val_fp": accuracy(model, x_va, y_va),
    }
    if ctx is not None and emu_val > 0:
        rec[f"val_emu_{recipe.noise.profile}_1y"] = emulated_accuracy(
            model, x_va[:emu_val], y_va[:emu_val], recipe.noise.profile
        )
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def _print_record(rec: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    msg = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items())
    if progress:
        tqdm.write(msg)
    else:
        print(msg, flush=True)


def _finish(model: nn.Module, recipe: FmnistRecipe, arch_kwargs: dict, x_tr: torch.Tensor, run: Run) -> None:
    """Unfreeze the weights, freeze the DAC ranges (calibrated here for plain models), save ``model.pt``."""
    for p in model.parameters():
        p.requires_grad_(True)
    for _, m in H.analog_layers(model):
        m.input_range.requires_grad_(False)
    if not recipe.mode.chip_in_loop:
        # plain models have no learned ranges: calibrate the chip's DAC from training data
        H.calibrate_input_ranges(model, x_tr[:CALIBRATION_IMAGES])
    model.eval()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "recipe": json.dumps(recipe.to_json()),
            "arch_kwargs": json.dumps(arch_kwargs),
        },
        run.out / "model.pt",
    )
