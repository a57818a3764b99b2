"""Train a zoo model, plainly or hardware-aware (DESIGN §7).

    python -m models.train cnn              # plain training (floating point)
    python -m models.train cnn --hwa        # HWA: fine-tune the plain model on the emulated chip
    python -m models.train cnn-hwa --out /tmp/zoo   # a zoo recipe by name, exported into /tmp/zoo
    python -m models.train cnn-hwa --replace        # ... over the committed models/zoo/cnn-hwa.*

The trained model is always exported (ONNX + eval set): into a new folder runs/train/<time>/ unless
``--out`` or ``--replace`` says otherwise (:mod:`models.outputs`).

Plain recipes train from scratch with Adam, cosine learning rate and ±1 px shifts. HWA recipes
(Rasch et al., Nat. Commun. 14:5282 (2023), "Methods: hardware-aware training") start from the
plain model, inject the chip's noise in the forward pass (:mod:`models.hwa`, extended STE),
ramp the noise up over the first epochs, clip weights per channel after every step, learn the
DAC input ranges, and distil from the floating-point model (the teacher) so the student keeps
the teacher's function while becoming robust. Seeds are fixed: the same command gives the same
weights on the same machine (torch CPU kernels are deterministic for these ops).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import outputs
from models.data import load_split, random_shift
from models.hwa import (
    YEAR_S,
    ChipSchedule,
    HwaConfig,
    HwaContext,
    analog_layers,
    attach,
    calibrate_input_ranges,
    clip_weights,
    input_ranges,
    range_decay_loss,
    set_learn_ranges,
)
from models.torch_chip import GradientMode
from models.zoo_models import build

ZOO_DIR = outputs.REPO / "models" / "zoo"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a trained model. Recorded in the ONNX metadata."""

    arch: str
    hwa: bool = False
    epochs: int = 60
    #: AdamW learning rate (the peak of the cosine schedule); recorded as "lr" in the recipe JSON.
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True
    # HWA only ------------------------------------------------------------------------------
    noise: HwaConfig = field(default_factory=HwaConfig)
    #: Start from the plain recipe's trained weights (and use them as the distillation teacher).
    init_from_plain: bool = True
    #: Weight of the distillation term: loss = (1−a)·CE + a·T²·KL(teacher_T ‖ student_T).
    distill: float = 0.5
    distill_temperature: float = 2.0
    #: Epochs over which the noise strength ramps linearly from 0 to 1.
    ramp_epochs: int = 5
    #: Per-channel weight clipping at ±n·std after every step (0 = off).
    clip_sigma: float = 2.5
    learn_ranges: bool = True
    range_decay: float = 1e-3

    def to_json(self) -> dict:
        d = asdict(self)
        d["recipe"] = "hwa" if self.hwa else "plain"
        if not self.hwa:
            for k in (
                "noise",
                "init_from_plain",
                "distill",
                "distill_temperature",
                "ramp_epochs",
                "clip_sigma",
                "learn_ranges",
                "range_decay",
            ):
                d.pop(k)
        return d


#: The zoo's recipes. HWA noise is trained somewhat stronger than the chip (noise_scale 1.5,
#: 10× fault rate): Rasch et al. (2023) report that a margin over the target noise transfers
#: better; the chip itself is always evaluated at scale 1.
RECIPES: dict[str, Recipe] = {
    "mlp-plain": Recipe("mlp", epochs=80, lr=3e-3),
    "mlp-hwa": Recipe("mlp", hwa=True, epochs=80, lr=1e-3, noise=HwaConfig(noise_scale=1.5, fault_scale=10.0)),
    "cnn-plain": Recipe("cnn", epochs=60, lr=3e-3),
    "cnn-hwa": Recipe("cnn", hwa=True, epochs=120, lr=1e-3, noise=HwaConfig(noise_scale=1.5, fault_scale=10.0)),
    "transformer-plain": Recipe("transformer", epochs=150, lr=3e-3),
    "transformer-hwa": Recipe(
        "transformer", hwa=True, epochs=120, lr=1e-3, noise=HwaConfig(noise_scale=1.5, fault_scale=10.0)
    ),
}


def plain_name(name: str) -> str:
    return name.rsplit("-", 1)[0] + "-plain"


@dataclass
class TrainResult:
    model: nn.Module
    recipe: Recipe
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Floating-point accuracy (clean forward, no chip)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    model.train(was)
    return float((pred == y).float().mean())


def emulated_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: HwaContext, n_chips: int, age_s: float | None = None
) -> tuple[float, float]:
    """(mean, std) accuracy over ``n_chips`` chip instances drawn by ``ctx`` (at ``age_s`` if given,
    else at the context's own age), emulated in torch by the HWA noise model: a training-time
    monitor and the studies' torch evaluation (the accuracy study uses the chipsim runtime on the
    exported ONNX)."""
    accs = []
    was = model.training
    attach(model, ctx)
    model.train()  # analog layers run their noisy path in training mode (no dropout/BN in the zoo)
    try:
        with torch.no_grad():
            for _ in range(n_chips):
                ctx.new_batch(1.0, age_s)
                accs.append(float((model(x).argmax(1) == y).float().mean()))
    finally:
        attach(model, None)
        model.train(was)
    return float(np.mean(accs)), float(np.std(accs))


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) distillation: T²·KL(softmax(t/T) ‖ softmax(s/T))."""
    t = temperature
    return (
        F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="batchmean")
        * t
        * t
    )


def _prepare(
    recipe: Recipe, x_tr: torch.Tensor, init: dict | None, teacher: nn.Module | None, chip: ChipSchedule | None
) -> tuple[nn.Module, HwaContext | None]:
    """The model to train (from ``init`` if given) and, for HWA, its context with the DAC ranges
    calibrated on ``x_tr`` and the weights clipped; freezes the teacher."""
    model = build(recipe.arch, recipe.seed)
    if init is not None:
        model.load_state_dict(init)
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    ctx = None
    if recipe.hwa:
        calibrate_input_ranges(model, x_tr)  # start the learned ranges from the data
        set_learn_ranges(model, recipe.learn_ranges)
        ctx = HwaContext(recipe.noise, torch.Generator().manual_seed(recipe.seed + 1), schedule=chip)
        attach(model, ctx)
        if recipe.clip_sigma > 0:
            clip_weights(model, recipe.clip_sigma)
    return model, ctx


def _optimizer(model: nn.Module, recipe: Recipe, total: int):
    """(AdamW, cosine schedule over ``total`` steps, the learnable DAC ranges: no weight decay)."""
    ranges = [p for n, p in model.named_parameters() if n.endswith("input_range") and p.requires_grad]
    others = [p for n, p in model.named_parameters() if not n.endswith("input_range")]
    groups = [{"params": others, "weight_decay": recipe.weight_decay}]
    if ranges:
        groups.append({"params": ranges, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return opt, sched, ranges


def _step(
    model: nn.Module,
    teacher: nn.Module | None,
    recipe: Recipe,
    ctx: HwaContext | None,
    opt,
    sched,
    ranges: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
) -> float:
    """One optimiser step on the batch (x, y) (the HWA chip already drawn); returns the loss."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    if teacher is not None and recipe.distill > 0:
        with torch.no_grad():
            t_logits = teacher(x)
        loss = (1 - recipe.distill) * loss + recipe.distill * _kd_loss(logits, t_logits, recipe.distill_temperature)
    if ctx is not None:
        loss = loss + range_decay_loss(model, recipe.range_decay)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if ctx is not None:
        if recipe.clip_sigma > 0:
            clip_weights(model, recipe.clip_sigma)
        with torch.no_grad():  # a DAC range must stay positive
            for p in ranges:
                p.clamp_(min=1e-3)
    return float(loss.detach())


def _finish(model: nn.Module, recipe: Recipe, x_tr: torch.Tensor) -> None:
    """Detach HWA, unfreeze the weights, freeze the ranges; plain models get their DAC ranges
    calibrated from training data (they have no learned ones)."""
    attach(model, None)
    for p in model.parameters():
        p.requires_grad_(True)
    for _, m in analog_layers(model):
        m.input_range.requires_grad_(False)
    if not recipe.hwa:
        calibrate_input_ranges(model, x_tr)
    model.eval()


def train(
    recipe: Recipe,
    *,
    init: dict | None = None,
    teacher: nn.Module | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    desc: str | None = None,
    train_split: str = "train",
    chip: ChipSchedule | None = None,
) -> TrainResult:
    """Train one model by ``recipe``. ``init`` is a state dict to start from, ``teacher`` the
    floating-point model to distil from (HWA). ``max_steps`` cuts training short (tests).
    ``chip`` replaces the HWA chip of ``recipe.noise`` (its preset and age range) by a schedule."""
    from tqdm.auto import tqdm

    data = load_split(train_split)
    val = load_split("val")
    x_tr, y_tr = torch.from_numpy(data.x), torch.from_numpy(data.y)
    x_va, y_va = torch.from_numpy(val.x), torch.from_numpy(val.y)
    gen = torch.Generator().manual_seed(recipe.seed)
    model, ctx = _prepare(recipe, x_tr, init, teacher, chip)
    steps_per_epoch = math.ceil(len(x_tr) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch if max_steps is None else min(max_steps, recipe.epochs * steps_per_epoch)
    opt, sched, ranges = _optimizer(model, recipe, total)

    result = TrainResult(model, recipe)
    step = 0
    t_start = time.perf_counter()
    bar = tqdm(
        total=total,
        desc=desc or f"{recipe.arch}-{'hwa' if recipe.hwa else 'plain'}",
        disable=not progress,
        unit="step",
        leave=False,
    )
    model.train()
    for epoch in range(recipe.epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        losses = []
        for i in range(0, len(x_tr), recipe.batch_size):
            if step >= total:
                break
            idx = perm[i : i + recipe.batch_size]
            x, y = x_tr[idx], y_tr[idx]
            if recipe.augment:
                x = random_shift(x, gen)
            if ctx is not None:
                ctx.new_batch(min(1.0, (step + 1) / max(1, recipe.ramp_epochs * steps_per_epoch)))  # noise ramp
            losses.append(_step(model, teacher, recipe, ctx, opt, sched, ranges, x, y))
            step += 1
            bar.update(1)
        if not losses:
            break
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if (epoch + 1) % 10 == 0 or epoch + 1 == recipe.epochs or step >= total:
            attach(model, None)
            rec["val_fp"] = accuracy(model, x_va, y_va)
            attach(model, ctx)
        result.history.append(rec)
        bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k != "epoch"})
        if step >= total:
            break
    bar.close()
    result.seconds = time.perf_counter() - t_start
    result.steps = step
    _finish(model, recipe, x_tr)
    return result


def train_zoo_model(
    name: str, progress: bool = True, plain: TrainResult | None = None, **overrides
) -> tuple[TrainResult, TrainResult | None]:
    """Train the zoo recipe ``name`` (its plain teacher first for HWA recipes, unless given).
    Returns (result, teacher result or None)."""
    if name not in RECIPES:
        raise ValueError(f"model: unknown zoo recipe {name!r}; known: {sorted(RECIPES)}")
    recipe = replace(RECIPES[name], **overrides) if overrides else RECIPES[name]
    if not recipe.hwa or not recipe.init_from_plain:
        return train(recipe, progress=progress, desc=name), None
    if plain is None:
        plain = train(RECIPES[plain_name(name)], progress=progress, desc=plain_name(name))
    teacher = plain.model
    res = train(
        recipe, init=teacher.state_dict(), teacher=teacher if recipe.distill > 0 else None, progress=progress, desc=name
    )
    return res, plain


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help=f"architecture (mlp, cnn, transformer) or zoo recipe {sorted(RECIPES)}")
    ap.add_argument("--hwa", action="store_true", help="hardware-aware training (NAME-hwa recipe)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--mode",
        choices=[GradientMode.STE.value, GradientMode.THROUGH_NOISE.value],
        default=None,
        help="HWA gradient: extended STE or through the noise model",
    )
    ap.add_argument("--noise-scale", type=float, default=None)
    outputs.add_arguments(ap, ZOO_DIR)  # the ONNX model and its eval set are always exported
    ap.add_argument("--eval-ages", action="store_true", help="print emulated pcm accuracy at 1 h, 1 y, 10 y")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.name
    if name in ("mlp", "cnn", "transformer"):
        name = f"{name}-{'hwa' if args.hwa else 'plain'}"
    elif args.hwa and not name.endswith("-hwa"):
        raise SystemExit(f"--hwa given with a plain recipe name {name!r}")
    overrides: dict = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.mode is not None or args.noise_scale is not None:
        noise = RECIPES[name].noise
        if args.mode is not None:
            noise = replace(noise, mode=args.mode)
        if args.noise_scale is not None:
            noise = replace(noise, noise_scale=args.noise_scale)
        overrides["noise"] = noise
    out_dir = outputs.output_dir("train", ZOO_DIR, args.out, args.replace, (f"{name}.onnx", f"{name}.eval.npz"))
    res, _ = train_zoo_model(name, **overrides)
    test = load_split("test")
    xt, yt = torch.from_numpy(test.x), torch.from_numpy(test.y)
    out = {
        "model": name,
        "seconds": round(res.seconds, 1),
        "steps": res.steps,
        "test_fp": accuracy(res.model, xt, yt),
        "input_ranges": {k: round(v, 4) for k, v in input_ranges(res.model).items()},
    }
    if args.eval_ages:
        for label, age in (("1h", 3600.0), ("1y", YEAR_S), ("10y", 10 * YEAR_S)):
            for g in (True, False):
                ctx = HwaContext(HwaConfig(gdc=g), torch.Generator().manual_seed(0))
                m, s = emulated_accuracy(res.model, xt, yt, ctx, n_chips=5, age_s=age)
                out[f"emu_{label}_{'gdc' if g else 'nogdc'}"] = f"{m:.4f}±{s:.4f}"
    from models.export import write_zoo_entry

    entry = write_zoo_entry(res.model, name, res.recipe, out_dir, description=f"{name} (python -m models.train)")
    out["onnx"] = str(out_dir / entry["file"])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
