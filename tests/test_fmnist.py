"""Fashion-MNIST groundwork (issue #12): the loader, the four architectures on the chip's
compiler, the no-skip twin (issue #18) and the training command, on tiny models and a few
hundred images. Tests that need the Debian package skip loudly when it is absent
(``bash docker/ci/install-fmnist.sh`` installs it; ``make test`` runs that script)."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import onnx
import pytest
import torch

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.runtime import ChipRuntime
from models import fmnist_data as D
from models import fmnist_models as FM
from models import hwa as H
from models import train_fmnist as T
from models.export import ANALOG_OPS, PREFIX, build_onnx, metadata, onnx_logits
from models.fmnist_recipe import TrainMode, default_recipe
from models.fmnist_training import lr_factor, noise_strength

torch.set_num_threads(1)
# ONNX vs torch and ideal chip vs onnxruntime, float32: the bound. Measured on these
# models: ≤ 7.2e-7 (ViT: LayerNorm and softmax accumulate in another order in onnxruntime).
TOL = 1e-5
TINY_RESNET = {"widths": [4, 8, 8], "blocks": 1}


def need_data() -> None:
    if not D.available():
        reason = (
            f"Fashion-MNIST not installed ({D.data_dir()}): run `bash docker/ci/install-fmnist.sh` "
            f"(apt-get install {D.DEBIAN_PACKAGE}, needs root)"
        )
        print(f"\n*** SKIPPED: {reason}\n", file=sys.stderr)
        pytest.skip(reason)


# ----------------------------------------------------------------------------------- data
def test_loader_returns_the_documented_splits():
    need_data()
    splits = {s: D.load_split(s) for s in D.SPLITS}
    # sizes and per-class counts: 60 000 training images, 6 000 per class, and 10 000 test
    # images, 1 000 per class (Xiao et al. 2017); val takes 500 per class out of training
    for name, n, per_class in (("train", 55_000, 5_500), ("val", 5_000, 500), ("test", 10_000, 1_000)):
        s = splits[name]
        assert s.x.shape == (n, 1, 28, 28) and s.x.dtype == np.float32
        assert s.y.shape == (n,) and s.y.dtype == np.int64
        assert s.x.min() == 0.0 and s.x.max() == 1.0
        np.testing.assert_array_equal(np.bincount(s.y, minlength=10), [per_class] * 10)
    # the first labels of each file, as every Fashion-MNIST tutorial prints them (the first
    # training image is an ankle boot): the IDX parser reads the files in order
    x_raw, y_raw = D._raw("train", str(D.data_dir()))
    np.testing.assert_array_equal(y_raw[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    np.testing.assert_array_equal(splits["test"].y[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
    # val is carved from training: disjoint from train, together all 60 000 images
    val = D.val_indices(y_raw)
    np.testing.assert_array_equal(splits["val"].x, x_raw[val, None].astype(np.float32) / 255)
    train_idx = np.setdiff1d(np.arange(60_000), val)
    np.testing.assert_array_equal(splits["train"].y, y_raw[train_idx])
    assert len(val) + len(train_idx) == 60_000
    np.testing.assert_array_equal(D.val_indices(y_raw), val)  # seeded: the same on every call
    np.testing.assert_array_equal(D.load_split("val", limit=7).y, splits["val"].y[:7])


def test_missing_package_raises_an_error_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(D.ENV_DIR, str(tmp_path))
    with pytest.raises(D.FashionMnistMissing, match=D.DEBIAN_PACKAGE):
        D.load_split("train")
    with pytest.raises(SystemExit, match=D.DEBIAN_PACKAGE):  # the training command says it too
        T.main(["--arch", "lstm", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def _idx(path, magic: int, dims: list[int], body: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + body))


def test_read_idx_parses_the_format_and_rejects_other_files(tmp_path):
    # IDX: 0x00000803 = unsigned bytes, 3 dimensions; sizes big-endian
    _idx(tmp_path / "ok.gz", 0x803, [2, 2, 3], bytes(range(12)))
    np.testing.assert_array_equal(D.read_idx(tmp_path / "ok.gz", 3), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    _idx(tmp_path / "float.gz", 0xD03, [2, 2, 3], bytes(48))  # 0x0D = float32
    with pytest.raises(D.FashionMnistCorrupt, match="magic"):
        D.read_idx(tmp_path / "float.gz", 3)
    _idx(tmp_path / "short.gz", 0x803, [2, 2, 3], bytes(11))
    with pytest.raises(D.FashionMnistCorrupt, match="11 bytes"):
        D.read_idx(tmp_path / "short.gz", 3)


# ---------------------------------------------------------------------------- architectures
def _images(n: int = 8) -> torch.Tensor:
    # Fashion-MNIST-like inputs without the package: sparse non-negative pixels in [0, 1]
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, *D.INPUT_SHAPE, generator=g) * (torch.rand(n, *D.INPUT_SHAPE, generator=g) < 0.5)).float()


def _trained_like(arch: str) -> torch.nn.Module:
    """A full-size model whose BatchNorms hold non-trivial statistics and affine parameters, so
    folding them into the convs is exercised, with input ranges calibrated on the images."""
    m = FM.build(arch, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
        m.train()
        m(_images(32))  # running statistics from data
    H.calibrate_input_ranges(m, _images(32))
    return m.eval()


@pytest.fixture(scope="module", params=sorted(FM.ARCHS))
def exported(request):
    m = _trained_like(request.param)
    model_bytes, names = build_onnx(FM.export_copy(m), example=torch.zeros(2, *D.INPUT_SHAPE))
    return request.param, m, model_bytes, names


def test_export_equals_torch_and_the_ideal_chip_equals_onnxruntime(exported):
    arch, m, model_bytes, _ = exported
    x = _images()
    with torch.no_grad():
        ref = m(x).numpy()
    ort = onnx_logits(model_bytes, x.numpy())
    assert ort.shape == (8, 10)
    np.testing.assert_allclose(ort, ref, rtol=0, atol=TOL)
    rt = ChipRuntime(program_onnx(model_bytes, get_profile("ideal"), seed=0), threads=1)
    np.testing.assert_allclose(rt.run(x.numpy(), 0.0, seed=0)[0], ort, rtol=0, atol=TOL)


def test_every_analog_layer_is_mapped_on_a_pcm_chip(exported):
    arch, m, model_bytes, names = exported
    om = onnx.load_from_string(model_bytes)
    inits = {t.name for t in om.graph.initializer}
    analog = [n for n in om.graph.node if n.op_type in ANALOG_OPS and len(n.input) > 1 and n.input[1] in inits]
    assert not any(n.op_type in ("LSTM", "BatchNormalization") for n in om.graph.node)
    assert set(json.loads(metadata(om)[PREFIX + "input_ranges"])) == set(names)
    state = program_onnx(model_bytes, get_profile("pcm"), seed=0)
    plans = state.meta["plans"]
    # one crossbar layer per weight, read by every analog node that uses it; none left digital
    assert len(plans) == len({n.input[1] for n in analog})
    assert sum(1 + len(p["reads"]) for p in plans) == len(analog)
    layers = dict(H.analog_layers(m))
    assert len(plans) == len(layers)
    # the LSTM's recurrent weight is one torch layer used at 27 steps (step 0 has h = 0)
    assert len(analog) == len(layers) + (26 if arch == "lstm" else 0)
    if arch.startswith("resnet"):
        wide = [p for p in plans if p["kind"] == "conv" and p["conv_shape"][1] == 64]
        assert len(wide) == 5  # 64 input channels × 3×3 = 576 rows: two tiles of 32 channels
        assert all([list(t) for t in p["tiles"]] == [[0, 288], [288, 576]] for p in wide)
    y = ChipRuntime(state, threads=1).run(_images(4).numpy(), 86400.0, seed=0)[0]
    assert y.shape == (4, 10) and np.isfinite(y).all()


def test_resnet_has_resnet20_weights_and_the_noskip_twin_the_same_shapes():
    # ResNet-20 (He et al. 2016, §4.2) on one input channel: a 3×3 stem 1→16, three stages of
    # six 3×3 convs (16, 32, 64 channels; the first of stages 2 and 3 takes half the channels),
    # a 64→10 head; option-A shortcuts have no weights
    convs = 1 * 16 + 6 * 16 * 16 + (16 * 32 + 5 * 32 * 32) + (32 * 64 + 5 * 64 * 64)
    assert FM.n_weights(FM.build("resnet", 0)) == 9 * convs + 64 * 10 == 268_048
    a, b = FM.build("resnet", 0), FM.build("resnet-noskip", 0)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    for k, v in a.state_dict().items():  # same seed, same initial weights
        assert torch.equal(v, b.state_dict()[k]), k
    x = _images(4)
    with torch.no_grad():
        a.eval(), b.eval()
        assert not torch.allclose(a(x), b(x))  # the twin really computes without shortcuts
        for blk in a.blocks:
            blk.skip = False
        assert torch.equal(a(x), b(x))  # and that is the only difference


def test_fold_batchnorm_keeps_the_function_and_removes_every_batchnorm():
    m = _trained_like("resnet")
    folded = FM.export_copy(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in folded.modules())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # the original is untouched
    with torch.no_grad():
        np.testing.assert_allclose(folded(_images()).numpy(), m(_images()).numpy(), rtol=0, atol=TOL)
    assert H.input_ranges(folded) == H.input_ranges(m)


def test_model_sizes_match_the_documented_ones():
    assert FM.n_weights(FM.build("vit", 0)) == 49 * 128 + 4 * (128 * 384 + 128 * 128 + 2 * 128 * 256) + 128 * 10
    assert FM.n_weights(FM.build("lstm", 0)) == 28 * 512 + 128 * 512 + 128 * 10


# -------------------------------------------------------------------------------- training
def test_noise_strength_ramps_for_hwa_and_stays_zero_for_the_recipe_control():
    assert [noise_strength(TrainMode.HWA, s, 4) for s in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
    assert all(noise_strength(TrainMode.RECIPE, s, 4) == 0.0 for s in (0, 3, 10))


def test_the_recipe_control_chip_is_deterministic_and_the_hwa_chip_is_not():
    # strength 0 keeps the chip's deterministic parts (remapping, DAC/ADC, IR drop) and nothing
    # random: two different chip draws give the same output, at full strength they differ
    m = FM.build("resnet", 0, widths=(4, 8, 8), blocks=1)
    H.calibrate_input_ranges(m, _images(16))
    FM.set_emulation_mode(m)
    outs = {}
    for strength in (0.0, 1.0):
        for seed in (1, 2):
            ctx = H.HwaContext(default_recipe("resnet", TrainMode.HWA).noise, torch.Generator().manual_seed(seed))
            ctx.new_batch(strength, age_s=86400.0)
            H.attach(m, ctx)
            with torch.no_grad():
                outs[strength, seed] = m(_images(16))
    H.attach(m, None)
    assert torch.equal(outs[0.0, 1], outs[0.0, 2])
    assert not torch.allclose(outs[1.0, 1], outs[1.0, 2])
    with torch.no_grad():
        m.eval()
        assert not torch.equal(outs[0.0, 1], m(_images(16)))  # quantised: not the float model


def test_learning_rate_warms_up_linearly_then_decays_as_a_cosine():
    f = [lr_factor(s, total=100, warmup=10) for s in range(101)]
    np.testing.assert_allclose(f[:10], np.arange(1, 11) / 10)
    assert f[10] == 1.0 and f[100] == 0.0
    assert f[55] == pytest.approx(0.5)  # halfway through the 90 cosine steps: cos(π/2) = 0
    assert lr_factor(0, total=100, warmup=0) == 1.0


def _cli(tmp_path, name: str, *extra: str) -> list[str]:
    return [
        "--arch",
        "resnet",
        "--arch-kwargs",
        json.dumps(TINY_RESNET),
        "--limit-train",
        "256",
        "--limit-val",
        "128",
        "--batch-size",
        "64",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / name),
        *extra,
    ]


@pytest.mark.slow  # trains, exports and emulates two models through the CLI
def test_cli_trains_plain_then_hwa_into_new_folders(tmp_path, capsys):
    need_data()
    T.main(_cli(tmp_path, "plain"))
    out = tmp_path / "plain"
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and hist[0]["steps"] == 4 and 0.0 <= hist[0]["val_fp"] <= 1.0
    assert json.loads((out / "recipe.json").read_text())["mode"] == "plain"
    # the ONNX records its validation accuracy, recomputed here from the file and the split
    model_bytes = (out / "resnet-fmnist-plain.onnx").read_bytes()
    va = D.load_split("val", 128)
    acc = float((onnx_logits(model_bytes, va.x).argmax(1) == va.y).mean())
    assert float(metadata(model_bytes)[PREFIX + "val_accuracy"]) == pytest.approx(acc, abs=1e-6)
    assert "test" not in metadata(model_bytes)[PREFIX + "recipe"]
    T.main(_cli(tmp_path, "hwa", "--mode", "hwa", "--teacher", str(out), "--emu-val", "64"))
    rec = json.loads((tmp_path / "hwa" / "history.jsonl").read_text())
    assert 0.0 <= rec["val_emu_pcm_1y"] <= 1.0 and rec["steps"] == 4
    model, recipe, kwargs = T.load_model(tmp_path / "hwa")
    teacher, _, _ = T.load_model(out)
    assert recipe.mode is TrainMode.HWA and kwargs == TINY_RESNET
    # both start from ranges calibrated on the same images; HWA learns all but the first
    learned, calibrated = list(H.input_ranges(model).values()), list(H.input_ranges(teacher).values())
    assert learned[0] == calibrated[0] and learned[1:] != calibrated[1:]


def test_cli_refuses_to_overwrite_and_needs_a_teacher_for_hwa(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("committed")
    with pytest.raises(SystemExit, match="--overwrite"):
        T.main(_cli(tmp_path, "taken"))
    assert (tmp_path / "taken" / "keep.txt").read_text() == "committed"
    with pytest.raises(SystemExit, match="--teacher"):
        T.main(_cli(tmp_path, "hwa", "--mode", "hwa"))


@pytest.mark.slow  # three training runs through the CLI
def test_resume_continues_to_the_same_weights(tmp_path):
    need_data()
    two = ["--epochs", "2", "--no-export"]
    T.main(_cli(tmp_path, "whole", *two))
    T.main(_cli(tmp_path, "cut", *two, "--max-steps", "4"))  # stopped after the first epoch
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 1
    T.main(_cli(tmp_path, "cut", *two, "--resume"))
    a, _, _ = T.load_model(tmp_path / "whole")
    b, _, _ = T.load_model(tmp_path / "cut")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert (tmp_path / "whole" / "history.jsonl").read_text().count("\n") == 2
