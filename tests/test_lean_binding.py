"""A large chip's runtime binds its read-out weights as graph inputs (``initializers_max_bytes``)
and decodes its devices per read-out: the same outputs as an ``inputs`` runtime, nothing cached
on the layers, and the embedded path's outputs within float32 rounding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.readout import read
from chipsim.runtime import INITIALIZERS_MAX_BYTES, ChipRuntime
from tests import onnx_models as om

DAY = 86400.0


def _chip(op: str):
    kw = {"cin": 64, "k": 3, "hw": 5} if op == "conv" else {}
    model, _, _ = om.single_layer(op, 1100 if op == "matmul" else 0, 24, seed=3, **kw)
    chip = program_onnx(model, get_profile("pcm"), seed=11, calibration=None)
    shape = (3, 64, 5, 5) if op == "conv" else (4, 1100)
    return chip, np.random.default_rng(5).uniform(-1.2, 1.2, shape).astype(np.float32)


@pytest.mark.parametrize("op", ["matmul", "conv"])
def test_initializers_above_the_threshold_bind_as_inputs_with_the_inputs_outputs(op):
    chip, x = _chip(op)
    lean = ChipRuntime(chip, threads=1, initializers_max_bytes=0)
    assert lean.requested_binding == "initializers" and lean.binding == "inputs" and lean.session is not None
    # 4 float32 products per weight on 'pcm' (w, r, a, v): computed here from the layer's shape
    assert lean.weight_bytes == 4 * 4 * chip.layers[0].weight.size
    got = lean.run(x, DAY, read_seed=2, seed=7)[0]
    entry = lean._cache.find(lambda key: True)
    assert entry.session is None and entry.weights  # fed with every run, no session per age
    assert chip.layers[0]._decoded == {}  # decoded per read-out, not kept (24 B/weight)
    plain = ChipRuntime(chip, threads=1, binding="inputs")
    np.testing.assert_array_equal(got, plain.run(x, DAY, read_seed=2, seed=7)[0])
    # the read-out kept nothing and changed nothing: the same weights as a caching read
    np.testing.assert_array_equal(entry.readout.layers[0].w_norm, read(chip, DAY, 2).layers[0].w_norm)
    embedded = ChipRuntime(chip, threads=1)
    assert embedded.binding == "initializers" and embedded.weight_bytes < INITIALIZERS_MAX_BYTES
    want = embedded.run(x, DAY, read_seed=2, seed=7)[0]
    # Same read-out, same noise; onnxruntime's kernels for constant weights (prepacked MatMul,
    # NCHWc Conv) sum in another order: float32 rounding, ~1e-7 relative per output, can move an
    # output across an ADC step (one step × α·r·s_col, see test_runtime's bound) — rarely.
    close = np.isclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert close.mean() >= 0.99
    if op == "matmul":  # MLAS multiplies a prepacked and a fed B alike: bit-identical here
        np.testing.assert_array_equal(got, want)


def test_an_embedded_entry_drops_its_weight_arrays_and_run_tensor_packs_them_again():
    chip, x = _chip("matmul")
    rt = ChipRuntime(chip, threads=1)
    rt.run(x, DAY, seed=1)
    entry = rt._cache.find(lambda key: True)
    assert entry.session is not None and entry.weights == {}
    assert entry.weight_bytes == rt.weight_bytes == 4 * 4 * chip.layers[0].weight.size
    plain = ChipRuntime(chip, threads=1, binding="inputs")
    w = plain.plans[0].input_names(0)["w"]
    tensor = next(n.output[0] for n in onnx.load_from_string(rt.graph).graph.node if w in n.input)
    np.testing.assert_array_equal(rt.run_tensor(x, tensor, DAY, seed=3), plain.run_tensor(x, tensor, DAY, seed=3))


def test_an_initializers_runtime_never_builds_the_inputs_session():
    chip, x = _chip("matmul")
    rt = ChipRuntime(chip, threads=1)
    rt.run(x, DAY, seed=1)
    rt.run(x, 2 * DAY, seed=1)
    assert rt._session is None  # one session per cached age, none for the graph with weight inputs
    lean = ChipRuntime(chip, threads=1, initializers_max_bytes=0)
    assert lean._session is None  # built on first use, not with the runtime
    lean.run(x, DAY, seed=1)
    assert lean._session is not None and lean.session is lean._session


@pytest.mark.parametrize("keep", [False, True])
def test_a_read_out_in_row_blocks_equals_the_whole_layer_formula(monkeypatch, keep):
    from chipsim import readout
    from chipsim.mapping import pair_weight
    from chipsim.readout import conductances_at, read_stream, read_weights

    chip, _ = _chip("matmul")
    layer, profile = chip.layers[0], chip.profile
    monkeypatch.setattr(readout, "READ_CHUNK", 5000)  # blocks of 104 rows of 24 columns, the last partial
    got = read_weights(layer, profile, DAY, read_stream(chip.seed, 3, 0, DAY), keep_decoded=keep)
    assert (layer._decoded != {}) == keep
    whole = conductances_at(layer, profile, DAY, read_stream(chip.seed, 3, 0, DAY))  # decodes and caches
    np.testing.assert_array_equal(got, pair_weight(whole, profile.device_model.g_max_us))
    np.testing.assert_array_equal(
        read_weights(layer, profile, 0.0, None),
        pair_weight(conductances_at(layer, profile, 0.0, None), profile.device_model.g_max_us),
    )
