"""The data every zoo model is trained and evaluated on: scikit-learn's bundled digits.

``sklearn.datasets.load_digits`` ships inside the scikit-learn wheel (1797 grey-scale 8×8
images of handwritten digits, 10 classes, pixel values 0…16; UCI "Optical Recognition of
Handwritten Digits", test part), so nothing is downloaded at run time.

Preprocessing (documented once, used everywhere, and already applied to the shipped eval sets):
``x = pixels / 16`` as float32 in [0, 1], shape ``(N, 1, 8, 8)`` (one channel, rows, columns).

Split (fixed, stratified by class, ``SPLIT_SEED = 0``): first 25 % of all samples → ``test``
(450 images, the eval set shipped with every zoo model), then 20 % of the rest → ``val``
(270 images, for monitoring while training), the remaining 1077 → ``train``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASET = "sklearn.datasets.load_digits"
NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)
#: Pixel values in load_digits are integers 0…16; dividing by 16 maps them to [0, 1], so the
#: first analog layer's DAC range is exactly 1.
PIXEL_MAX = 16.0
SPLIT_SEED = 0
TEST_FRACTION = 0.25
VAL_FRACTION = 0.20  # of what remains after the test split
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One part of the dataset: ``x`` float32 (N, 1, 8, 8) in [0, 1], ``y`` int64 (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Raw digits pixels (N, 64) or (N, 8, 8), values 0…16 → float32 (N, 1, 8, 8) in [0, 1]."""
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, *INPUT_SHAPE)
    return x / np.float32(PIXEL_MAX)


def split_description() -> str:
    """The split as text, for the ONNX metadata and the report."""
    import sklearn

    return (
        f"{DATASET} (scikit-learn {sklearn.__version__}); stratified train_test_split with "
        f"random_state={SPLIT_SEED}: test = {TEST_FRACTION:.0%} of all 1797 samples (450), "
        f"val = {VAL_FRACTION:.0%} of the rest (270, random_state={SPLIT_SEED + 1}), train = the remaining 1077; "
        f"preprocessing x = pixels/{PIXEL_MAX:g} as float32, shape (N, 1, 8, 8)"
    )


def load_split(name: str) -> Split:
    """One of ``train``, ``val``, ``test`` (deterministic: same arrays on every call)."""
    if name not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {name!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = preprocess(digits.data)
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    if name == "test":
        return Split(x_test, y_test)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=VAL_FRACTION, random_state=SPLIT_SEED + 1, stratify=y_rest
    )
    return Split(x_train, y_train) if name == "train" else Split(x_val, y_val)


def random_shift(x, generator, max_shift: int = 1):
    """Data augmentation for training: shift each image by up to ``max_shift`` pixels in each
    direction (zero fill), drawn from ``generator`` (a ``torch.Generator``). ``x`` is a torch
    tensor (N, 1, 8, 8). Digits are centred by the dataset's preprocessing, so ±1 px is a
    realistic variation that the 1077 training images alone cover poorly."""
    import torch

    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    h, w = x.shape[-2:]
    rows = torch.arange(h)[None, :] + shifts[:, :1]  # (n, h)
    cols = torch.arange(w)[None, :] + shifts[:, 1:]  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    out = pad[idx_n, 0, rows[:, :, None], cols[:, None, :]]
    return out.unsqueeze(1)
