"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747) from Debian's package.

``apt-get install dataset-fashion-mnist`` (or ``bash docker/ci/install-fmnist.sh``) puts Zalando's
four gzipped IDX files in ``/usr/share/datasets/fashion-mnist``; nothing is downloaded at run
time. ``AGEDCHIP_FMNIST_DIR`` points elsewhere (same four file names).

=========  =======  ===========================================================================
split      images   what it is for
=========  =======  ===========================================================================
``train``  55 000   training (the package's 60 000 training images minus ``val``)
``val``     5 000   every choice: epochs, widths, noise scale, learning rate (500 per class,
                    drawn from the training images with ``numpy.random.default_rng(VAL_SEED)``)
``test``   10 000   the package's test set; touched only by the report
=========  =======  ===========================================================================

Preprocessing (documented once, used everywhere): ``x = pixels / 255`` as float32 in [0, 1],
shape ``(N, 1, 28, 28)``; labels int64 in 0…9 (:data:`CLASSES`). The first analog layer's DAC
range is therefore 1 without calibration, as for the digits models.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET = "fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "AGEDCHIP_FMNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: Sizes documented by the dataset's authors (README of zalandoresearch/fashion-mnist).
N_TRAIN_FILE, N_TEST = 60_000, 10_000
NUM_CLASSES = 10
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INPUT_SHAPE = (1, 28, 28)
PIXEL_MAX = 255.0
VAL_PER_CLASS = 500
VAL_SEED = 0
N_VAL = VAL_PER_CLASS * NUM_CLASSES
SPLITS = ("train", "val", "test")

# IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): magic = two zero bytes, the type
# code (0x08 = unsigned byte), the number of dimensions; then one big-endian int32 per dimension.
_IDX_UBYTE = 0x08


class FashionMnistMissing(FileNotFoundError):
    """The dataset files are not installed; the message names the Debian package."""


class FashionMnistCorrupt(ValueError):
    """A dataset file is not the IDX array it should be."""


@dataclass(frozen=True)
class Split:
    """One part of the dataset: ``x`` float32 (N, 1, 28, 28) in [0, 1], ``y`` int64 (N,) in 0…9."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def data_dir() -> Path:
    """Where the four IDX files are: ``$AGEDCHIP_FMNIST_DIR`` or the Debian package's folder."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def missing_files(directory: Path | None = None) -> list[Path]:
    """The dataset files that are absent (empty list: installed)."""
    d = directory or data_dir()
    return [d / f for pair in FILES.values() for f in pair if not (d / f).is_file()]


def available() -> bool:
    return not missing_files()


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes with ``ndim`` dimensions as a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndim:
        raise FashionMnistCorrupt(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != (_IDX_UBYTE << 8 | ndim):
        raise FashionMnistCorrupt(f"{path}: IDX magic {magic:#010x}, expected {(_IDX_UBYTE << 8 | ndim):#010x}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise FashionMnistCorrupt(f"{path}: {body.size} bytes of data for dimensions {dims}")
    return body.reshape(dims)


@functools.lru_cache(maxsize=2)
def _raw(part: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (N, 28, 28), labels uint8 (N,)) of the package's ``train`` or ``test`` file pair."""
    d = Path(directory)
    missing = missing_files(d)
    if missing:
        raise FashionMnistMissing(
            f"Fashion-MNIST is not installed: missing {', '.join(str(p) for p in missing)}. Install Debian's "
            f"'{DEBIAN_PACKAGE}' package (as root: apt-get install -y {DEBIAN_PACKAGE}, or "
            f"bash docker/ci/install-fmnist.sh), or set {ENV_DIR} to a folder with the four IDX files."
        )
    img_file, lab_file = FILES[part]
    x, y = read_idx(d / img_file, 3), read_idx(d / lab_file, 1)
    expected = N_TRAIN_FILE if part == "train" else N_TEST
    if x.shape != (expected, 28, 28) or y.shape != (expected,) or int(y.max()) >= NUM_CLASSES:
        raise FashionMnistCorrupt(f"{d}: {part} files hold images {x.shape} and labels {y.shape}, expected {expected}")
    return x, y


def val_indices(labels: np.ndarray) -> np.ndarray:
    """Indices (sorted) into the training file of the validation split: ``VAL_PER_CLASS`` per
    class, each class's indices permuted by ``default_rng(VAL_SEED)`` and the first taken."""
    rng = np.random.default_rng(VAL_SEED)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:VAL_PER_CLASS] for c in range(NUM_CLASSES)]
    return np.sort(np.concatenate(picked))


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (N, 28, 28) → float32 (N, 1, 28, 28) in [0, 1]."""
    return (np.asarray(pixels, np.float32) / np.float32(PIXEL_MAX)).reshape(-1, *INPUT_SHAPE)


def load_split(name: str, limit: int | None = None) -> Split:
    """``train``, ``val`` or ``test`` (same arrays on every call). ``limit`` keeps the first
    ``limit`` images of the split (tests, smoke runs). Raises :class:`FashionMnistMissing`."""
    if name not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {name!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive number of images, got {limit}")
    d = str(data_dir())
    if name == "test":
        x, y = _raw("test", d)
        idx = np.arange(len(y))
    else:
        x, y = _raw("train", d)
        val = val_indices(y)
        idx = val if name == "val" else np.setdiff1d(np.arange(len(y)), val, assume_unique=True)
    idx = idx[:limit]
    return Split(preprocess(x[idx]), y[idx].astype(np.int64))


def split_description() -> str:
    """The split as text, for ONNX metadata and reports."""
    return (
        f"Fashion-MNIST from Debian's {DEBIAN_PACKAGE} ({DEFAULT_DIR}); val = {VAL_PER_CLASS} images per class "
        f"of the 60000 training images (numpy default_rng({VAL_SEED}) permutation per class, {N_VAL} in all), "
        f"train = the other {N_TRAIN_FILE - N_VAL}, test = the package's {N_TEST} test images; "
        f"preprocessing x = pixels/{PIXEL_MAX:g} as float32, shape (N, 1, 28, 28)"
    )


def augment(x, generator, max_shift: int = 2):
    """Training augmentation on a torch batch (N, 1, 28, 28): a random shift of up to
    ``max_shift`` px per axis (zero fill, i.e. pad-and-crop) and a horizontal flip with
    probability ½, both drawn from ``generator``. Garments are left-right symmetric classes,
    so a mirrored image keeps its label (the standard Fashion-MNIST/CIFAR augmentation)."""
    import torch

    from models.data import random_shift

    out = random_shift(x, generator, max_shift)
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
