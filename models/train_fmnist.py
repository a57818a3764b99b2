"""Train a Fashion-MNIST model plainly, hardware-aware, or with HWA's recipe but no noise.

    python -m models.train_fmnist --arch resnet --mode plain --seed 0 --epochs 30
    python -m models.train_fmnist --arch resnet --mode hwa --teacher runs/fmnist/resnet-fmnist-plain-s0-…
    python -m models.train_fmnist --arch resnet --mode recipe --teacher runs/fmnist/resnet-fmnist-plain-s0-…

Modes (:class:`TrainMode`):

``plain``   from scratch, floating point; the DAC input ranges are calibrated on training data
            at the end (as :mod:`models.train` does for the digits models).
``hwa``     hardware-aware training (Rasch et al., Nat. Commun. 14:5282 (2023)) through
            :mod:`models.hwa`, i.e. chipsim's own device and periphery formulas: start from the
            plain model (``--teacher``), draw a chip instance and an age (1 s … 10 y) per batch,
            ramp the noise up over the first epochs, clip weights per channel after every step,
            learn the DAC ranges, distil from the plain model.
``recipe``  the control that separates HWA's noise from its recipe (issue #12): everything ``hwa``
            does — same epochs, start, channelwise remapping, DAC/ADC quantisation, IR drop,
            clipping, learned ranges, distillation — with the noise strength pinned at 0, so no
            programming or read noise, no drift, no stuck devices.
``qat-constant``, ``qat-dynamic``, ``noisy``, ``noisy-then-qat``
            the hardening study's arms (issue #18, :mod:`models.hardening_arms`): from scratch
            on the plain recipe, with quantisation-aware training and/or activation noise.

Every choice is made on the validation split (:mod:`models.fmnist_data`); this command never
reads the test set. Each epoch appends a line to ``history.jsonl`` (loss, validation accuracy,
seconds) and saves ``checkpoint.pt`` (``--resume`` continues from it). At the end: ``model.pt``
(state dict + recipe), ``result.json`` and ``<name>.onnx`` (BatchNorm folded, ``agedchip.*``
metadata, validation accuracy of the ONNX file under onnxruntime). Output goes to a new folder
under ``runs/fmnist/`` at the repository root (git-ignored) unless ``--out`` names one; an existing
non-empty folder is refused
without ``--overwrite`` or ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import fmnist_data as D
from models import fmnist_models as FM
from models import hwa as H
from models.hardening_arms import Arm, HardeningConfig
from models.qat import QatScaling
from models.train import _kd_loss as kd_loss
from models.train import accuracy

#: Default home of training runs: ``runs/`` at the repository root (git-ignored).
RUNS_DIR = Path(__file__).resolve().parent.parent / "runs" / "fmnist"
#: Images the DAC input ranges are calibrated on (the first of the training split). The layer
#: with the fewest inputs per image is the head (64), so its 0.9999 quantile is taken over
#: 65 536 values (≈ 7 above it); all 55 000 images would hold gigabytes of conv activations.
CALIBRATION_IMAGES = 1024
#: Emulated validation: images of the validation split run through the emulated chip each
#: epoch (HWA modes), at this age, in batches of EMU_BATCH (each batch is one chip instance).
EMU_AGE_S = H.YEAR_S
EMU_BATCH = 250


class Optimizer(StrEnum):
    SGD = "sgd"  # Nesterov momentum 0.9
    ADAMW = "adamw"


class TrainMode(StrEnum):
    PLAIN = "plain"
    HWA = "hwa"
    RECIPE = "recipe"  # HWA's recipe without noise (the control)
    # the hardening arms (issue #18, models.hardening_arms): from scratch on the plain recipe
    QAT_CONSTANT = "qat-constant"
    QAT_DYNAMIC = "qat-dynamic"
    NOISY = "noisy"
    NOISY_THEN_QAT = "noisy-then-qat"

    @property
    def chip_in_loop(self) -> bool:
        return self in (TrainMode.HWA, TrainMode.RECIPE)

    @property
    def qat(self) -> QatScaling | None:
        """The QAT scaling this mode trains with (None: no QAT)."""
        if self is TrainMode.QAT_DYNAMIC:
            return QatScaling.DYNAMIC
        return QatScaling.CONSTANT if self in (TrainMode.QAT_CONSTANT, TrainMode.NOISY_THEN_QAT) else None

    @property
    def noisy(self) -> bool:
        return self in (TrainMode.NOISY, TrainMode.NOISY_THEN_QAT)

    @property
    def hardening(self) -> bool:
        return self.noisy or self.qat is not None


@dataclass(frozen=True)
class FmnistRecipe:
    """Everything that decides a trained model (recorded in ``model.pt`` and the ONNX metadata).

    The defaults per architecture (:data:`DEFAULTS`) are starting points; choose epochs and
    rates on the validation split.
    """

    arch: str
    mode: TrainMode = TrainMode.PLAIN
    seed: int = 0
    epochs: int = 30
    batch_size: int = 128
    optimizer: Optimizer = Optimizer.SGD
    lr: float = 0.1
    weight_decay: float = 5e-4
    #: Linear warm-up of the learning rate, then cosine decay to 0 at the last step.
    warmup_epochs: float = 0.0
    #: Clip the gradient's global norm (0 = off); the LSTM needs it.
    grad_clip: float = 0.0
    augment: bool = True
    # chip in the loop (hwa, recipe) ------------------------------------------------------------
    noise: H.HwaConfig = field(default_factory=lambda: H.HwaConfig(noise_scale=1.5, fault_scale=10.0))
    distill: float = 0.5
    distill_temperature: float = 2.0
    ramp_epochs: float = 2.0
    clip_sigma: float = 2.5
    learn_ranges: bool = True
    range_decay: float = 1e-3
    # hardening arms (qat-*, noisy*) ------------------------------------------------------------
    hardening: HardeningConfig = field(default_factory=HardeningConfig)

    def to_json(self) -> dict:
        d = asdict(self)
        d["mode"], d["optimizer"] = str(self.mode), str(self.optimizer)
        d["recipe"] = "hwa" if self.mode is TrainMode.HWA else str(self.mode)
        if not self.mode.chip_in_loop:
            for k in (
                "noise",
                "distill",
                "distill_temperature",
                "ramp_epochs",
                "clip_sigma",
                "learn_ranges",
                "range_decay",
            ):
                d.pop(k)
        if not self.mode.hardening:
            d.pop("hardening")
        return d

    @classmethod
    def from_json(cls, d: dict) -> FmnistRecipe:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["mode"], d["optimizer"] = TrainMode(d["mode"]), Optimizer(d["optimizer"])
        if "noise" in d:
            d["noise"] = H.HwaConfig(**d["noise"])
        if "hardening" in d:
            d["hardening"] = HardeningConfig(**d["hardening"])
        return cls(**d)


#: Plain-training starting points per architecture: SGD + Nesterov for the ResNets (He et al.
#: 2016's CIFAR recipe: lr 0.1, weight decay 5e-4 as in common ResNet-20 re-implementations),
#: AdamW with warm-up for the transformer, AdamW with gradient clipping for the LSTM.
DEFAULTS: dict[str, FmnistRecipe] = {
    "resnet": FmnistRecipe("resnet", epochs=30, optimizer=Optimizer.SGD, lr=0.1, weight_decay=5e-4),
    "resnet-noskip": FmnistRecipe("resnet-noskip", epochs=30, optimizer=Optimizer.SGD, lr=0.1, weight_decay=5e-4),
    "vit": FmnistRecipe("vit", epochs=40, optimizer=Optimizer.ADAMW, lr=1e-3, weight_decay=0.05, warmup_epochs=2),
    "lstm": FmnistRecipe("lstm", epochs=30, optimizer=Optimizer.ADAMW, lr=2e-3, weight_decay=1e-4, grad_clip=1.0),
}
#: HWA and its control fine-tune the plain model at a tenth of its rate for a third of its epochs.
CHIP_LR_FACTOR = 0.1
CHIP_EPOCH_FRACTION = 1 / 3


def default_recipe(arch: str, mode: TrainMode) -> FmnistRecipe:
    if arch not in DEFAULTS:
        raise ValueError(f"arch: expected one of {sorted(DEFAULTS)}, got {arch!r}")
    base = DEFAULTS[arch]
    if not mode.chip_in_loop:  # plain and the hardening arms: the plain recipe from scratch
        return replace(base, mode=mode)
    return replace(
        base,
        mode=mode,
        lr=round(base.lr * CHIP_LR_FACTOR, 12),
        warmup_epochs=0.0,
        epochs=max(1, round(base.epochs * CHIP_EPOCH_FRACTION)),
    )


def model_name(recipe: FmnistRecipe) -> str:
    return f"{FM.model_name(recipe.arch)}-{recipe.mode}"


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


# --------------------------------------------------------------------------- training
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


def prepare_out(out: Path | None, recipe: FmnistRecipe, overwrite: bool, resume: bool) -> Path:
    """The output folder: ``out`` or a new ``runs/fmnist/<name>-s<seed>-<time>``. Refuses an
    existing non-empty folder unless ``overwrite`` (cleared) or ``resume`` (kept)."""
    if out is None:
        out = RUNS_DIR / f"{model_name(recipe)}-s{recipe.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        if resume:
            return out
        if not overwrite:
            raise SystemExit(f"--out {out} exists and is not empty; pass --overwrite to replace it or --resume")
        for p in out.iterdir():
            if p.is_file():
                p.unlink()
    elif resume:
        raise SystemExit(f"--resume: {out} holds no run to resume")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_model(run_dir: Path) -> tuple[nn.Module, FmnistRecipe, dict]:
    """The trained model, its recipe and its architecture keyword arguments, from a finished
    run (``run_dir/model.pt``)."""
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: no trained model there (a finished run of python -m models.train_fmnist)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    recipe = FmnistRecipe.from_json(json.loads(saved["recipe"]))
    kwargs = json.loads(saved["arch_kwargs"])
    model = FM.build(recipe.arch, recipe.seed, **kwargs)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), recipe, kwargs


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
    arm = _hardening_arm(model, recipe, x_tr)
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
            if arm is not None:
                arm.before_step(step, total)
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
    if arm is not None:
        arm.finish()
    _finish(model, recipe, arch_kwargs, x_tr, run)
    return model


def _hardening_arm(model: nn.Module, recipe: FmnistRecipe, x_tr: torch.Tensor) -> Arm | None:
    """The QAT/noise of a hardening mode, attached to ``model`` before its optimiser and checkpoint."""
    if not recipe.mode.hardening:
        return None
    return Arm(model, recipe.hardening, recipe.mode.qat, recipe.mode.noisy, x_tr[:CALIBRATION_IMAGES], recipe.seed)


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


# --------------------------------------------------------------------------- export
def export(model: nn.Module, recipe: FmnistRecipe, out: Path, limit_val: int | None = None) -> dict:
    """Write ``<name>.onnx`` (BatchNorm folded, ``agedchip.*`` metadata) into ``out``; returns
    its name and validation accuracy under onnxruntime. The zoo's eval set and test accuracy
    are the zoo builder's job: this command does not read the test set."""
    import onnx

    from models.export import PREFIX, build_onnx, metadata, onnx_logits, set_metadata

    va = D.load_split("val", limit_val)
    name = model_name(recipe)
    meta = {
        PREFIX + "task": "classification",
        PREFIX + "num_classes": str(D.NUM_CLASSES),
        PREFIX + "dataset": "Fashion-MNIST (Xiao et al. 2017): 70000 grey-scale 28x28 images of 10 garment classes",
        PREFIX + "split": D.split_description(),
        PREFIX + "preprocessing": f"x = pixels/{D.PIXEL_MAX:g} (float32, [0, 1]), shape (N, 1, 28, 28)",
        PREFIX + "recipe": recipe.to_json(),
        PREFIX + "model_name": name,
    }
    model_bytes, _ = build_onnx(FM.export_copy(model), meta, example=torch.zeros(2, *D.INPUT_SHAPE))
    val = float((onnx_logits(model_bytes, va.x).argmax(1) == va.y).mean())
    om = onnx.load_from_string(model_bytes)
    set_metadata(om, {**metadata(om), PREFIX + "val_accuracy": f"{val:.6f}"})
    (out / f"{name}.onnx").write_bytes(om.SerializeToString())
    return {"onnx": f"{name}.onnx", "val_fp_onnx": val}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=sorted(DEFAULTS))
    ap.add_argument("--mode", default=TrainMode.PLAIN, type=TrainMode, choices=list(TrainMode))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the architecture's recipe")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--noise-scale", type=float, default=None, help="HWA: × the chip's noise (default 1.5)")
    ap.add_argument(
        "--train-sigma", type=float, default=None, help="noisy, noisy-then-qat: activation noise σ (default 0.1)"
    )
    ap.add_argument("--teacher", type=Path, default=None, help="hwa/recipe: folder of the finished plain run")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a new one under runs/fmnist/)")
    ap.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--emu-val",
        type=int,
        default=1000,
        help="hwa/recipe: validation images run on the emulated chip (1 y) each epoch; 0 = off",
    )
    ap.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (timing, tests)")
    ap.add_argument(
        "--arch-kwargs",
        type=json.loads,
        default=None,
        help='JSON keyword arguments of the architecture, e.g. \'{"widths": [4, 8, 8], "blocks": 1}\'',
    )
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _teacher(args: argparse.Namespace, recipe: FmnistRecipe) -> tuple[nn.Module, dict | None]:
    """The finished plain run ``--teacher`` and its architecture keywords, checked against ``recipe``."""
    if args.teacher is None:
        raise SystemExit(f"--mode {recipe.mode} fine-tunes a plain model: pass --teacher RUN_DIR of a plain run")
    teacher, t_recipe, t_kwargs = load_model(args.teacher)
    if t_recipe.arch != recipe.arch or t_recipe.mode is not TrainMode.PLAIN:
        raise SystemExit(
            f"--teacher {args.teacher}: a {t_recipe.arch} {t_recipe.mode} run, expected {recipe.arch} plain"
        )
    if args.arch_kwargs is not None and args.arch_kwargs != t_kwargs:
        raise SystemExit(f"--arch-kwargs {args.arch_kwargs} differ from the teacher's {t_kwargs}")
    return teacher, t_kwargs


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.resume and args.out is None:
        raise SystemExit("--resume needs --out (the run's folder)")
    recipe = default_recipe(args.arch, args.mode)
    overrides = {
        k: v
        for k, v in (("seed", args.seed), ("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size))
        if v is not None
    }
    if args.noise_scale is not None:
        overrides["noise"] = replace(recipe.noise, noise_scale=args.noise_scale)
    if args.train_sigma is not None:
        overrides["hardening"] = replace(recipe.hardening, train_sigma=args.train_sigma)
    recipe = replace(recipe, **overrides)
    teacher = None
    if recipe.mode.chip_in_loop:
        teacher, args.arch_kwargs = _teacher(args, recipe)
    try:
        D.load_split("val", 1)
    except D.FashionMnistMissing as err:
        raise SystemExit(str(err)) from None
    out = prepare_out(args.out, recipe, args.overwrite, args.resume)
    (out / "recipe.json").write_text(json.dumps(recipe.to_json(), indent=1) + "\n")
    run = Run(out)
    t0 = time.perf_counter()
    model = train(
        recipe,
        run,
        teacher=teacher,
        arch_kwargs=args.arch_kwargs,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
        emu_val=args.emu_val,
        max_steps=args.max_steps,
        resume=args.resume,
        progress=not args.no_progress,
    )
    result = {
        "model": model_name(recipe),
        "out": str(out),
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": args.threads,
        "n_weights": FM.n_weights(model),
        "history": run.history,
    }
    if not args.no_export:
        result.update(export(model, recipe, out, args.limit_val))
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
