"""On-chip recalibration: retrain an aged chip's last analog layer in place (issue 7).

A user with a few hundred labelled samples trains the final classifier layer *on the analog
hardware*: the features entering that layer come from the aged chip itself (the compiled graph
run at the age), the layer's forward is the analog MVM of :mod:`chipsim.reference` with the
current device weights, the gradient is straight-through (``∂loss/∂w = x'ᵀ·δ·r·s_col``), and
every update is written by pulses through a device response function (:mod:`chipsim.pulsed`)
with analog SGD or residual learning (:mod:`chipsim.analog_training`).

The result is a **new chip** (the parent stays immutable and servable):

- the recalibrated layer holds the trained conductances (``G± = g_max·max(±w̄, 0)`` in the
  parent's normalisation), its drift restarts (ν resampled from the new conductances: PCM
  drift restarts when a device is re-written), and new GDC baselines are read;
  stuck devices keep their stuck value (pulses cannot move them);
- every other layer is carried over unchanged with ``age_offset_s`` = its age at
  recalibration, so the new chip at age 0 is the parent at the recalibration age;
- the state records the parent, the algorithm, its parameters and the pulses used.

For residual learning the chip stores the effective weights ``W̄ = W + γ·P`` as one
differential pair per weight (the two arrays are folded into one for serving; documented
simplification).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chipsim import faults
from chipsim.analog_training import AnalogSGD, ResidualConfig, ResidualLearning, ResidualLearningV2
from chipsim.compiler.plan import load_plans
from chipsim.mapping import column_scales, normalise, pair_targets_us, pair_weight
from chipsim.modes import GdcMode, LayerKind, RecalibrationAlgorithm, WeightBinding
from chipsim.periphery import dac
from chipsim.programming import gdc_baselines, sample_nu
from chipsim.pulsed import ExpStep, LinearStep, PulsedDevice, SoftBounds
from chipsim.readout import LayerReadout, read_layer
from chipsim.reference import analog_matmul
from chipsim.rng import Stream, check_seed, stream
from chipsim.runtime import ChipRuntime
from chipsim.state import ChipState, LayerState, check_chip_id

ALGORITHMS: tuple[str, ...] = tuple(a.value for a in RecalibrationAlgorithm)
#: Bounds of a configuration, checked by RecalibrationConfig (one place for every front end).
MIN_STEPS, MAX_STEPS = 1, 100_000
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 1, 4096
#: lr and dw_min lie in (0, MAX_STEP_SIZE], normalised-weight units.
MAX_STEP_SIZE = 1.0
#: Response-function presets by name (chipsim.pulsed); parameters documented there.
RESPONSES: dict[str, Callable[[], Any]] = {
    "linear": lambda: LinearStep(),
    "linear-asym": lambda: LinearStep(up_down=0.3),
    "soft-bounds": lambda: SoftBounds(tau_max=1.0, tau_min=1.0),
    "exp": lambda: ExpStep(),
}
#: Outputs of the recalibrated layer may pass through these ops to the model output (the
#: loss is computed on the layer's logits; none of these changes the argmax).
_TRANSPARENT_OPS = {"Add", "Identity", "Softmax", "LogSoftmax", "Flatten", "Reshape", "Squeeze"}


class RecalibrationError(ValueError):
    """Input the recalibration cannot use; ``field`` names the culprit."""

    def __init__(self, message: str, field: str = "recalibration"):
        super().__init__(message)
        self.field = field


class RecalibrationCancelled(Exception):
    """Raised when ``should_cancel`` returned True; no chip was produced."""


@dataclass(frozen=True)
class RecalibrationConfig:
    """What to train and how. Units: weights normalised to [−1, 1] per column (as on the tile)."""

    algorithm: RecalibrationAlgorithm | str = RecalibrationAlgorithm.RESIDUAL_V2.value
    #: Layer to retrain (a MatMul/Gemm whose output is the model output); None = the last one.
    layer: str | None = None
    steps: int = 300
    batch_size: int = 32
    #: Learning rate of the gradient step, normalised-weight units per loss unit.
    lr: float = 0.05
    #: Device response preset (see RESPONSES) and its granularity Δw_min (normalised units):
    #: 0.002 ≈ 1000 states over [−1, 1], typical of the devices in Gokmen & Haensch (2020).
    response: str = "soft-bounds"
    dw_min: float = 0.002
    dw_min_std: float = 0.3
    #: Residual learning: γ, transfer period, v1 transfer rate, v2 buffer rate, read noise of P.
    gamma: float = 0.5
    transfer_every: int = 2
    transfer_lr: float = 0.1
    beta: float = 0.1
    read_noise_std: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise RecalibrationError(f"algorithm: expected one of {ALGORITHMS}, got {self.algorithm!r}", "algorithm")
        if self.response not in RESPONSES:
            raise RecalibrationError(
                f"response: expected one of {sorted(RESPONSES)}, got {self.response!r}", "response"
            )
        if not MIN_STEPS <= self.steps <= MAX_STEPS:
            raise RecalibrationError(f"steps: must be in [{MIN_STEPS}, {MAX_STEPS}]", "steps")
        if not MIN_BATCH_SIZE <= self.batch_size <= MAX_BATCH_SIZE:
            raise RecalibrationError(f"batch_size: must be in [{MIN_BATCH_SIZE}, {MAX_BATCH_SIZE}]", "batch_size")
        for name in ("lr", "dw_min"):
            if not (np.isfinite(getattr(self, name)) and 0 < getattr(self, name) <= MAX_STEP_SIZE):
                raise RecalibrationError(f"{name}: must be in (0, {MAX_STEP_SIZE:g}]", name)
        check_seed(self.seed)


@dataclass
class RecalibrationResult:
    chip: ChipState
    layer: str
    pulses: int
    steps: int
    accuracy_before: float  # whole parent chip at the age, GDC on, on the held-out samples
    accuracy_before_no_gdc: float  # the same with GDC off
    accuracy_after: float  # whole new chip at age 0 (= the recalibration age), GDC on
    history: list[dict[str, float]] = field(default_factory=list)


def find_layer(chip: ChipState, name: str | None) -> tuple[int, str]:
    """Index of the layer to recalibrate (``name``, or the last analog layer when None) and the
    tensor entering it; raises :class:`RecalibrationError` (field ``layer``) unless it is a
    MatMul/Gemm whose output reaches the model output through argmax-preserving ops only."""
    import onnx

    plans = load_plans(chip)
    if name is None:
        idx = len(plans) - 1
    else:
        matches = [i for i, p in enumerate(plans) if p.name == name]
        if not matches:
            raise RecalibrationError(f"layer: chip has no layer {name!r}; layers: {[p.name for p in plans]}", "layer")
        idx = matches[0]
    plan = plans[idx]
    if plan.kind not in (LayerKind.MATMUL, LayerKind.GEMM):
        raise RecalibrationError(
            f"layer: {plan.name!r} is a {plan.kind}; only a final MatMul/Gemm layer can be recalibrated", "layer"
        )
    model = onnx.load_from_string(chip.attachments["model.onnx"])
    node = next(n for n in model.graph.node if (n.name or n.op_type) == plan.node)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0):
        raise RecalibrationError(f"layer: {plan.name!r} uses transA; not supported", "layer")
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    frontier = [node.output[0]]
    while frontier:
        t = frontier.pop()
        if t in outputs:
            continue
        nxt = consumers.get(t, [])
        if not nxt or any(n.op_type not in _TRANSPARENT_OPS for n in nxt):
            raise RecalibrationError(
                f"layer: {plan.name!r} is not the model's last layer (its output goes through "
                f"{sorted({n.op_type for n in nxt})}); only the final classifier can be "
                "recalibrated",
                "layer",
            )
        frontier.extend(o for n in nxt for o in n.output)
    return idx, node.input[0]


def _device(cfg: RecalibrationConfig) -> PulsedDevice:
    return PulsedDevice(response=RESPONSES[cfg.response](), dw_min=cfg.dw_min, dw_min_std=cfg.dw_min_std)


def _optimizer(cfg: RecalibrationConfig, w0: np.ndarray):
    algorithm = RecalibrationAlgorithm(cfg.algorithm)
    if algorithm is RecalibrationAlgorithm.ANALOG_SGD:
        return AnalogSGD(_device(cfg), w0, cfg.lr)
    rc = ResidualConfig(
        lr=cfg.lr,
        gamma=cfg.gamma,
        transfer_every=cfg.transfer_every,
        transfer_lr=cfg.transfer_lr,
        beta=cfg.beta,
        read_noise_std=cfg.read_noise_std,
    )
    cls = ResidualLearning if algorithm is RecalibrationAlgorithm.RESIDUAL else ResidualLearningV2
    return cls(_device(cfg), _device(cfg), w0, rc)


def _logits(
    feats: np.ndarray, layer: LayerState, w: np.ndarray, n_tiles: int, chip: ChipState, rng: np.random.Generator
) -> np.ndarray:
    """The analog layer with device weights ``w`` (no GDC: training compensates in place)."""
    layer_readout = LayerReadout(
        w_norm=w.astype(np.float32),
        alpha_global=np.ones(n_tiles, np.float32),
        alpha_column=np.ones((n_tiles, w.shape[1]), np.float32),
        alpha_exact=np.ones(n_tiles, np.float32),
    )
    return analog_matmul(feats, layer, layer_readout, chip.profile, gdc=GdcMode.OFF, rng=rng)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def _check_label_count(y: np.ndarray, n_samples: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_samples or len(y) < 8:
        raise RecalibrationError("labels: need one integer label per sample and at least 8 samples", "labels")
    return y


def _cross_entropy_grad(logits: np.ndarray, labels: np.ndarray, x_dac: np.ndarray, out_scale: np.ndarray) -> np.ndarray:
    """Gradient of the mean softmax cross-entropy w.r.t. the normalised weights, straight-through the
    periphery: ``x_dac`` are the batch's DAC inputs, ``out_scale`` the per-column output scale."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return x_dac.T @ (p / len(labels) * out_scale)


def _run_fresh(chip: ChipState, x: np.ndarray, read_seed: int, seed: int, threads: int | None) -> np.ndarray:
    """Logits of a just-derived chip at age 0 (s), through a runtime of its own."""
    runtime = ChipRuntime(chip, binding=WeightBinding.INPUTS, threads=threads)
    return runtime.run(x, 0.0, read_seed=read_seed, seed=seed)[0]


def recalibrate(
    chip: ChipState,
    age_s: float,
    x: np.ndarray,
    y: np.ndarray,
    config: RecalibrationConfig,
    new_chip_id: str,
    *,
    holdout: float = 0.25,
    read_seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> RecalibrationResult:
    """Train the last layer of ``chip`` at ``age_s`` on (x, y); returns the new chip and a report.

    ``holdout`` of the samples (stratification-free, seeded) is kept for the before/after accuracy.
    ``progress(step, steps)`` is called every few steps; ``should_cancel()`` aborts cleanly.
    ``threads``: onnxruntime intra-op threads of the runtimes used (None: onnxruntime's default).
    The accuracies are also recorded in the new chip's ``meta["recalibration"]``.
    """
    check_chip_id(new_chip_id)
    y = _check_label_count(y, len(x))
    idx, tensor = find_layer(chip, config.layer)
    layer = chip.layers[idx]
    n_classes = layer.shape[1]
    if y.min() < 0 or y.max() >= n_classes or not np.issubdtype(y.dtype, np.integer):
        raise RecalibrationError(f"labels: must be integers in [0, {n_classes - 1}]", "labels")
    rt = ChipRuntime(chip, binding=WeightBinding.INPUTS, threads=threads)
    feats = np.asarray(rt.run_tensor(x, tensor, age_s, read_seed=read_seed, seed=config.seed), dtype=np.float64)
    feats = feats.reshape(len(x), -1)
    rng = stream(config.seed, Stream.MVM, 7919)  # training noise, independent of inference streams
    order = rng.permutation(len(x))
    n_hold = max(1, int(round(holdout * len(x))))
    hold, train = order[:n_hold], order[n_hold:]
    parent_readout = read_layer(layer, chip.profile, chip.seed, idx, age_s, read_seed)
    n_tiles = len(layer.tiles)
    # End-to-end accuracies on the held-out samples, through the whole chip.
    before = _accuracy(rt.run(x[hold], age_s, read_seed=read_seed, seed=config.seed)[0], y[hold])
    before_off = _accuracy(rt.run(x[hold], age_s, read_seed=read_seed, gdc=False, seed=config.seed)[0], y[hold])
    w0 = np.clip(parent_readout.w_norm.astype(np.float64), -1.0, 1.0)
    opt = _optimizer(config, w0)
    r = layer.input_range
    out_scale = r * layer.col_scale.astype(np.float64)
    x_dac_all = dac(feats, r, chip.profile.in_levels, chip.profile.in_clip)
    history = []
    for step in range(config.steps):
        if should_cancel is not None and should_cancel():
            raise RecalibrationCancelled(f"recalibration cancelled at step {step}")
        b = rng.choice(train, size=min(config.batch_size, len(train)), replace=False)
        w = np.clip(opt.weights(), -1.0, 1.0)
        logits = _logits(feats[b], layer, w, n_tiles, chip, rng)
        opt.step(_cross_entropy_grad(logits, y[b], x_dac_all[b], out_scale), rng)
        if progress is not None and (step % 10 == 0 or step == config.steps - 1):
            progress(step + 1, config.steps)
        if step % max(1, config.steps // 10) == 0 or step == config.steps - 1:
            acc = _accuracy(_logits(feats[hold], layer, np.clip(opt.weights(), -1, 1), n_tiles, chip, rng), y[hold])
            history.append({"step": step + 1, "holdout_accuracy": acc, "pulses": int(opt.pulses_used)})
    w_bar = np.clip(opt.weights(), -1.0, 1.0).astype(np.float32)
    new = _derive_chip(chip, idx, w_bar, age_s, config, new_chip_id, int(opt.pulses_used))
    after = _accuracy(_run_fresh(new, x[hold], read_seed, config.seed, threads), y[hold])
    new.meta["recalibration"].update(
        accuracy_before=before, accuracy_before_no_gdc=before_off, accuracy_after=after, holdout_samples=int(n_hold)
    )
    return RecalibrationResult(
        chip=new,
        layer=layer.name,
        pulses=int(opt.pulses_used),
        steps=config.steps,
        accuracy_before=before,
        accuracy_before_no_gdc=before_off,
        accuracy_after=after,
        history=history,
    )


def _derive_chip(
    parent: ChipState, idx: int, w_bar: np.ndarray, age_s: float, cfg: RecalibrationConfig, chip_id: str, pulses: int
) -> ChipState:
    """The new chip: layer ``idx`` re-written to ``w_bar`` (parent normalisation), others aged."""
    profile = parent.profile
    g_max = profile.device_model.g_max_us
    old = parent.layers[idx]
    weight = (w_bar * old.col_scale).astype(np.float32)  # digital equivalent of the device state
    actual = pair_targets_us(w_bar, g_max)  # what the pulses left on the devices, µS
    codes = faults.decode_faults(old.nu)
    actual[codes == faults.STUCK_RESET] = 0.0
    actual[codes == faults.STUCK_SET] = g_max
    target = pair_targets_us(normalise(weight, column_scales(weight)), g_max)
    nu = faults.encode_nu(sample_nu(actual, profile, cfg.seed, idx), codes)
    layer = LayerState(
        name=old.name,
        weight=weight,
        input_range=old.input_range,
        tiles=list(old.tiles),
        dg_us=(actual - target).astype(np.float16),
        nu=nu.astype(np.float16),
        gdc_baseline=np.zeros(len(old.tiles), np.float32),
        gdc_baseline_col=np.zeros((len(old.tiles), weight.shape[1]), np.float32),
        gdc_baseline_exact=np.zeros(len(old.tiles), np.float32),
        bias=None if old.bias is None else old.bias.copy(),
        meta={**old.meta, "age_offset_s": 0.0, "recalibrated": True},
    )
    gdc_baselines(layer, pair_weight(layer.g_prog_us(g_max), g_max), profile, cfg.seed, idx)
    layers = []
    for i, lay in enumerate(parent.layers):
        if i == idx:
            layers.append(layer)
            continue
        meta = {**lay.meta, "age_offset_s": float(lay.meta.get("age_offset_s", 0.0)) + float(age_s)}
        layers.append(
            LayerState(
                name=lay.name,
                weight=lay.weight,
                input_range=lay.input_range,
                tiles=list(lay.tiles),
                dg_us=lay.dg_us,
                nu=lay.nu,
                gdc_baseline=lay.gdc_baseline,
                gdc_baseline_col=lay.gdc_baseline_col,
                gdc_baseline_exact=lay.gdc_baseline_exact,
                bias=lay.bias,
                meta=meta,
            )
        )
    meta = {
        **parent.meta,
        "parent": parent.chip_id,
        "recalibration": {**asdict(cfg), "age_s": float(age_s), "layer": old.name, "pulses": pulses},
    }
    # Read-out streams are keyed by the chip seed: keep the parent's so carried-over layers read
    # exactly as in the parent; the re-written layer's randomness used cfg.seed above.
    return ChipState(
        chip_id=chip_id,
        profile=profile,
        seed=parent.seed,
        programmed_at=time.time(),
        layers=layers,
        meta=meta,
        attachments=dict(parent.attachments),
    )
