"""What decides a trained Fashion-MNIST model (:mod:`models.train_fmnist`): the training modes,
the recipe (recorded in ``model.pt`` and the ONNX metadata) and its defaults per architecture."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from models import fmnist_models as FM
from models import hwa as H
from models.hardening_arms import HardeningConfig
from models.qat import QatScaling
from models.torch_chip import GradientMode


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
            # runs saved before the QAT delay existed quantised from the first step
            d["hardening"] = HardeningConfig(**{"qat_delay_fraction": 0.0, **d["hardening"]})
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
#: The gradients a chip-in-the-loop run can train with (``--gradient``): the extended STE (the
#: default) and autograd through the noise model. ``THROUGH_CHIP`` is a diagnostic that gives the
#: learned DAC ranges no gradient, so it is no training option.
TRAINING_GRADIENTS: tuple[GradientMode, ...] = (GradientMode.STE, GradientMode.THROUGH_NOISE)
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
