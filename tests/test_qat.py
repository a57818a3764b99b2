"""QAT (models.qat), activation noise (models.activation_noise) and the hardening arms
(models.hardening_arms) of issue #18, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chipsim.periphery import dac
from chipsim.profiles import get_profile
from models import fmnist_data as D
from models import fmnist_models as FM
from models import hwa as H
from models import qat as Q
from models import train_fmnist as T
from models.activation_noise import ActivationNoise, noise_sites

TINY_RESNET = {"widths": [4, 8, 8], "blocks": 1}


def need_data() -> None:
    if not D.available():
        pytest.skip(f"Fashion-MNIST not installed ({D.data_dir()}): bash docker/ci/install-fmnist.sh")


def _tiny(seed: int = 0) -> torch.nn.Module:
    return FM.build("resnet", seed, **TINY_RESNET)


def _x(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _on_grid(v: torch.Tensor, scale: float, levels: int) -> None:
    """Every value is k·2s/levels with |k| ≤ levels/2 (the grid; integers to float precision)."""
    k = v.detach().double() / (2 * scale / levels)
    np.testing.assert_allclose(k.numpy(), np.round(k.numpy()), atol=1e-3)
    assert float(k.abs().max()) <= levels / 2 + 1e-6


def _capture(model: torch.nn.Module) -> dict:
    """What the first analog layer's forward received and returned (after the QAT hooks)."""
    layer = next(m for _, m in H.analog_layers(model))
    seen = {}
    layer.register_forward_hook(lambda m, a, y: seen.update(x=a[0], y=y))
    return seen


def test_levels_are_the_chip_profiles():
    p = get_profile("pcm")
    c = Q.QatConfig.from_profile("constant")
    assert (c.in_levels, c.weight_levels, c.out_levels) == (p.in_levels, p.in_levels, p.out_levels) == (254, 254, 254)


def test_constant_scale_quantises_to_the_levels_and_never_changes():
    model = _tiny()
    qs = Q.attach(model, Q.QatConfig(Q.QatScaling.CONSTANT, in_levels=6, weight_levels=8, out_levels=10))
    Q.calibrate(model, _x(32, 0))
    q, layer = qs[1], [m for _, m in H.analog_layers(model)][1]
    frozen = [float(q.in_scale), float(q.weight_scale), float(q.out_scale)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = {}
    layer.register_forward_pre_hook(lambda m, a: seen.update(raw=a[0]))
    layer.register_forward_hook(lambda m, a, y: seen.update(x=a[0], y=y))
    model.train()
    for i, scale in enumerate((1.0, 5.0, 0.1)):  # batches of very different magnitude, and updates
        model(_x(16, 10 + i, scale)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        assert [float(q.in_scale), float(q.weight_scale), float(q.out_scale)] == frozen
        # the raw input is a BatchNorm'd ReLU output; the layer sees it quantised with the constant scale
        _on_grid(seen["x"], frozen[0], 6)
        _on_grid(seen["y"], frozen[2], 10)
        _on_grid(layer.weight, frozen[1], 8)
        assert len(torch.unique(layer.weight)) <= 9 and len(torch.unique(seen["x"])) <= 7
    # the constant DAC quantiser is chipsim's DAC (an independent formula: clip, normalise, round)
    expect = dac(seen["raw"].detach().numpy().astype(np.float64), frozen[0], 6) * frozen[0]
    np.testing.assert_allclose(seen["x"].detach().numpy(), expect, rtol=0, atol=1e-6)


def test_dynamic_scale_follows_each_batch():
    model = _tiny()
    qs = Q.attach(model, Q.QatConfig(Q.QatScaling.DYNAMIC, in_levels=6, weight_levels=8, out_levels=10))
    seen = _capture(model)
    model.eval()
    scales = []
    for i, scale in enumerate((1.0, 0.25)):  # the first layer's input is the image: max|x| is known
        x = _x(8, 20 + i, scale)
        model(x)
        scales.append(float(qs[0].in_scale))
        assert scales[-1] == pytest.approx(float(x.abs().max()))
        _on_grid(seen["x"], scales[-1], 6)
        assert float(seen["x"].abs().max()) == pytest.approx(scales[-1])  # the batch max is a level
    assert scales[0] != pytest.approx(scales[1])


def test_straight_through_gradient_is_one_inside_and_zero_where_clipped():
    x = torch.tensor([-3.0, -0.33, 0.0, 0.41, 0.99, 2.5], requires_grad=True)
    y = Q.fake_quant(x, torch.tensor(1.0), 4)
    assert y.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.0]  # step 2/4 = 0.5, clipped to ±1
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_qat_composes_with_hwa_and_remove_bakes_the_quantised_weights():
    model = _tiny()
    Q.attach(model, Q.QatConfig.from_profile("constant"))
    Q.calibrate(model, _x(32, 0))
    layer = [m for _, m in H.analog_layers(model)][2]
    q = layer.qat
    assert torch.equal(
        layer.chip_weight(),
        Q.fake_quant(layer.parametrizations.weight.original, q.weight_scale, 254).reshape(len(layer.weight), -1).t(),
    )
    ctx = H.HwaContext(H.HwaConfig(), torch.Generator().manual_seed(0))
    H.attach(model, ctx)
    model.train()
    out = model(_x(4, 1))
    out.sum().backward()
    assert torch.isfinite(out).all() and layer.parametrizations.weight.original.grad.abs().sum() > 0
    H.attach(model, None)
    baked = layer.weight.detach().clone()
    Q.remove(model)
    assert not hasattr(layer, "qat") and "parametrizations.weight.original" not in dict(layer.state_dict())
    assert torch.equal(layer.weight, baked)
    assert set(model.state_dict()) == set(_tiny().state_dict())


def test_activation_noise_has_the_stated_sigma_and_is_off_in_eval():
    model = _tiny().eval()
    x = _x(64, 2)
    with torch.no_grad():
        clean = model(x)
        noise = ActivationNoise(model, 0.5, torch.Generator().manual_seed(0), training_only=False)
        site, seen = noise_sites(model)[0], {}
        assert isinstance(site, torch.nn.BatchNorm2d)  # the stem conv's BatchNorm: folded into it on the chip
        site.register_forward_hook(lambda m, a, y: seen.update(y=y))
        model(x)
        noisy_first = seen["y"]
        noise.sigma = 0.0
        model(x)
        diff = (noisy_first - seen["y"]).flatten()
        # 64·4·28·28 ≈ 2·10^5 draws: the sample std's relative error is ~1/sqrt(2n) ≈ 0.16 %; 2 % is > 10 σ
        assert float(diff.std()) == pytest.approx(0.5, rel=0.02) and abs(float(diff.mean())) < 0.01
        noise.remove()
        assert torch.equal(model(x), clean)
        ActivationNoise(model, 0.5, torch.Generator(), training_only=True)
        assert torch.equal(model(x), clean)  # eval mode: training noise is off


def test_training_noise_is_the_sweeps_noise_on_the_folded_model():
    # a second implementation: studies.activation_noise puts the noise on every weight layer of
    # the BatchNorm-folded export copy; with the same generator both must give the same logits
    from studies.activation_noise import noisy_logits

    model = _tiny().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 2.0)
    x = _x(8, 3)
    folded = noisy_logits(FM.export_copy(model), x, 0.3, torch.Generator().manual_seed(7))
    noise = ActivationNoise(model, 0.3, torch.Generator().manual_seed(7), training_only=False)
    with torch.no_grad():
        ours = model(x)
    noise.remove()
    torch.testing.assert_close(ours, folded, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(ours, model(x), atol=1e-2)  # the noise is really there


def test_removing_skips_keeps_every_activation_shape():
    shapes = {}
    for arch in ("resnet", "resnet-noskip"):
        model, seen = FM.build(arch, 0).eval(), []
        for m in model.modules():
            if len(list(m.children())) == 0:
                m.register_forward_hook(lambda m, a, y, seen=seen: seen.append((type(m).__name__, tuple(y.shape))))
        with torch.no_grad():
            model(_x(2, 0))
        shapes[arch] = seen
    # ResNet-20: 19 convs, each followed by a BatchNorm, and the linear head
    assert shapes["resnet"] == shapes["resnet-noskip"] and len(shapes["resnet"]) == 19 + 19 + 1


def test_recipe_json_round_trips_the_hardening_fields():
    r = T.default_recipe("resnet", T.TrainMode.NOISY_THEN_QAT)
    assert r.epochs == T.DEFAULTS["resnet"].epochs and r.lr == T.DEFAULTS["resnet"].lr  # same recipe as plain
    d = r.to_json()
    assert d["hardening"]["train_sigma"] == 0.1 and "noise" not in d
    assert T.FmnistRecipe.from_json(json.loads(json.dumps(d))) == r
    assert "hardening" not in T.default_recipe("resnet", T.TrainMode.PLAIN).to_json()
    assert [m.qat for m in (T.TrainMode.QAT_CONSTANT, T.TrainMode.QAT_DYNAMIC, T.TrainMode.NOISY)] == [
        Q.QatScaling.CONSTANT,
        Q.QatScaling.DYNAMIC,
        None,
    ]


def _cli(tmp_path, name: str, mode: str, *extra: str) -> list[str]:
    return [
        *("--arch", "resnet", "--arch-kwargs", json.dumps(TINY_RESNET), "--mode", mode),
        *("--limit-train", "256", "--limit-val", "64", "--batch-size", "64", "--epochs", "2"),
        *("--no-progress", "--no-export", "--out", str(tmp_path / name), *extra),
    ]


@pytest.mark.slow  # three training runs per mode
@pytest.mark.parametrize("mode", ["noisy-then-qat", "qat-dynamic"])
def test_a_hardening_run_resumes_to_the_same_weights(tmp_path, mode):
    # noisy-then-qat switches to QAT at step 4 of 8, exactly where the cut run stops: the resumed
    # run must calibrate at its first step, and the noise of the noisy half must be redrawn alike
    need_data()
    T.main(_cli(tmp_path, "whole", mode))
    T.main(_cli(tmp_path, "cut", mode, "--max-steps", "4"))
    T.main(_cli(tmp_path, "cut", mode, "--resume"))
    a, recipe, _ = T.load_model(tmp_path / "whole")
    b, _, _ = T.load_model(tmp_path / "cut")
    assert recipe.mode == mode
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert set(a.state_dict()) == set(_tiny().state_dict())  # a plain model: QAT baked in and removed


@pytest.mark.parametrize("scaling", [Q.QatScaling.CONSTANT, Q.QatScaling.DYNAMIC])
def test_qat_arms_start_after_a_float_delay_and_calibrate_there(scaling):
    # 8 steps at delay 0.25: steps 0–1 floating point, QAT from step 2; a constant scale is
    # calibrated at step 2 on the model as it is then (not on the initial one) and then frozen
    from models.hardening_arms import Arm, HardeningConfig

    model, x_cal = _tiny(), _x(32, 1)
    arm = Arm(model, HardeningConfig(qat_delay_fraction=0.25), scaling, False, x_cal, seed=0)
    assert arm.switch_step(8) == 2
    for step in (0, 1):
        arm.before_step(step, 8)
        assert not any(bool(q.enabled) for q in arm.quantizers)
    first = next(m for _, m in H.analog_layers(model)).parametrizations.weight.original
    with torch.no_grad():  # the model moves during the float phase: scales must follow it
        first.mul_(3.0)
    arm.before_step(2, 8)
    assert all(bool(q.enabled) for q in arm.quantizers)
    if scaling is Q.QatScaling.CONSTANT:
        assert float(arm.quantizers[0].weight_scale) == pytest.approx(float(first.detach().abs().max()), rel=1e-6)
        frozen = [q.state_dict() for q in arm.quantizers]
        arm.before_step(3, 8)
        model(x_cal[:4])
        for before, q in zip(frozen, arm.quantizers, strict=True):
            assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())


def test_recipes_saved_before_the_qat_delay_load_without_one():
    d = T.default_recipe("resnet", T.TrainMode.QAT_CONSTANT).to_json()
    assert T.FmnistRecipe.from_json(d).hardening.qat_delay_fraction == 0.25
    d["hardening"].pop("qat_delay_fraction")
    assert T.FmnistRecipe.from_json(d).hardening.qat_delay_fraction == 0.0
