"""models.fmnist_rebuild: a trained model's torch module rebuilt from its ONNX file gives the same
network, and the same activation-noise sweep, as the model it was exported from."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models import fmnist_data as D  # noqa: E402
from models import fmnist_models as FM  # noqa: E402
from models import fmnist_rebuild as R  # noqa: E402
from models.export import build_onnx  # noqa: E402
from models.fmnist_recipe import FmnistRecipe  # noqa: E402

SIZES = {
    "resnet": {"widths": [4, 8, 8], "blocks": 1},
    "vit": {"dim": 16, "depth": 1, "heads": 2, "ff": 16},  # proj: a square 16×16 Linear
    "lstm": {"hidden": 8},
}


def _trained_like(arch: str, tmp_path):
    """A tiny model whose BatchNorm statistics and DAC ranges are far from their defaults (so an
    unfolded or mis-mapped parameter shows), exported as models.train_fmnist does."""
    net = FM.build(arch, 3, **SIZES[arch]).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buf in list(net.named_buffers()) + list(net.named_parameters()):
            if name.endswith("running_var") or name.endswith("input_range"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
            elif buf.is_floating_point() and buf.ndim >= 1:
                buf.add_(0.3 * torch.randn(buf.shape, generator=g))
    recipe = FmnistRecipe(arch=arch, seed=3).to_json()
    meta = {"agedchip.recipe": recipe, "agedchip.dataset": "Fashion-MNIST (test)"}
    data, _ = build_onnx(FM.export_copy(net), meta, example=torch.zeros(2, 1, 28, 28))
    path = tmp_path / f"{arch}.onnx"
    path.write_bytes(data)
    return net, path


@pytest.fixture(autouse=True)
def _data():
    if not D.available():
        pytest.skip(f"Fashion-MNIST not installed ({D.data_dir()}): bash docker/ci/install-fmnist.sh")


@pytest.mark.parametrize("arch", sorted(SIZES))
def test_the_rebuilt_model_is_the_exported_network(arch, tmp_path):
    from studies.activation_noise import torch_model_fn

    net, path = _trained_like(arch, tmp_path)
    rebuilt, recipe, check = R.torch_from_onnx(path, 64, SIZES[arch])
    assert recipe.arch == arch and check["max_rel_logit_diff"] <= R.MAX_REL_DIFF
    x = torch.from_numpy(D.load_split("val", 64).x)
    with torch.no_grad():
        want, got = FM.export_copy(net)(x), FM.export_copy(rebuilt)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the µ study's noise sweep: the same noise on the same layers, so the same answers
    val = D.load_split("val", 200)
    a = torch_model_fn(FM.export_copy(net), val.x, val.y)
    b = torch_model_fn(FM.export_copy(rebuilt), val.x, val.y)
    for sigma in (0.0, 0.3):
        # float32 summation order may flip an image on a near-tie: at most 1 of 200
        assert np.sum(a(sigma, 1) != b(sigma, 1)) <= 1


def test_a_square_weight_is_placed_by_its_consumer_not_its_shape(tmp_path, monkeypatch):
    """Shape alone cannot tell a square MatMul weight's orientation: with only the square ones left
    untransposed every shape fits, and the logit check against onnxruntime refuses the model."""
    import onnx
    from onnx import numpy_helper

    _, path = _trained_like("vit", tmp_path)
    shapes = {i.name: numpy_helper.to_array(i).shape for i in onnx.load(str(path)).graph.initializer}
    real = R._transposed_initializers
    monkeypatch.setattr(R, "_transposed_initializers", lambda m: {n for n in real(m) if len(set(shapes[n])) > 1})
    with pytest.raises(R.RebuildError, match="differs from the ONNX file"):
        R.torch_from_onnx(path, 64, SIZES["vit"])


def test_a_file_without_a_recipe_is_refused(tmp_path):
    import onnx

    _, path = _trained_like("resnet", tmp_path)
    m = onnx.load(str(path))
    del m.metadata_props[:]
    path.write_bytes(m.SerializeToString())
    with pytest.raises(R.RebuildError, match="agedchip.recipe"):
        R.torch_from_onnx(path, 64, SIZES["resnet"])


def test_a_written_folder_loads_as_a_training_run(tmp_path):
    from models.train_fmnist import load_model

    net, path = _trained_like("resnet", tmp_path)
    rec = R.rebuild(path, tmp_path / "run", 64, SIZES["resnet"])
    assert rec["check"]["max_rel_logit_diff"] <= R.MAX_REL_DIFF and "not the training run" in rec["how"]
    loaded, recipe, kwargs = load_model(tmp_path / "run")
    assert kwargs == SIZES["resnet"] and recipe.seed == 3
    x = torch.from_numpy(D.load_split("val", 16).x)
    with torch.no_grad():
        torch.testing.assert_close(FM.export_copy(loaded)(x), FM.export_copy(net)(x), rtol=1e-4, atol=1e-5)
