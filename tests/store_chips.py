"""Small programmed chips for the store tests (test support code, not a test module)."""

from __future__ import annotations

import numpy as np

from chipsim import LayerSpec, get_profile, program


def clipped_normal(shape, seed):
    return np.clip(np.random.default_rng(seed).standard_normal(shape), -2.5, 2.5).astype(np.float32)


def make_chip(chip_id="chip-a", seed=9, profile="pcm-faulty"):
    layers = [
        LayerSpec("conv", clipped_normal((600, 40), 1), input_range=2.5, meta={"kind": "conv", "k": [3, 3]}),
        LayerSpec("fc", clipped_normal((40, 10), 2), bias=np.arange(10, dtype=np.float32)),
    ]
    return program(
        layers,
        get_profile(profile),
        seed=seed,
        chip_id=chip_id,
        meta={"model_digest": "abc", "time_scale": 1.0},
        attachments={"model.onnx": b"\x08\x07onnx"},
    )


def fresh_chip(chip_id: str, k: int):
    """A chip from a model of its own: every shared blob of it is new to the store."""
    layers = [
        LayerSpec("conv", clipped_normal((60, 40), 100 + k), input_range=2.5),
        LayerSpec("fc", clipped_normal((40, 10), 200 + k), bias=np.full(10, k, np.float32)),
    ]
    return program(layers, get_profile("pcm"), seed=k, chip_id=chip_id, attachments={"model.onnx": b"model %d" % k})


def chip_file(store, chip_id, name):
    return store.chips_dir / chip_id / name
