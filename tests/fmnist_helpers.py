"""Shared pieces of the Fashion-MNIST study tests."""

from __future__ import annotations


def lstm_page_meta(n_images: int, chips: int, **extra) -> dict:
    """The ``meta`` of a rendered study page over LSTM models on ``chips`` complete chips, ages
    1 d and the curve's 10 y; ``extra`` adds or replaces fields."""
    return {
        "command": "x",
        "demonstration": None,
        "seconds": 1,
        "machine": "m",
        "profile": "pcm",
        "n_images": n_images,
        "chips": {"lstm": chips},
        "chips_used": {"lstm": list(range(chips))},
        "ages": ["1 d"],
        "cells_computed": 0,
        "cells_left": 0,
        "curve": {"ages": ["10 y"], "arm": "max", "archs": ["lstm"]},
        **extra,
    }
