"""The chip store's on-disk format (DESIGN §4): the versioned manifest, its checksums, and the
conversion of a :class:`~chipsim.state.ChipState` to and from it. No file access: the store
(:mod:`chipsim.store`) reads and writes the bytes; this module says what they must hold.

A manifest names every array of every layer with its shape and dtype: the chip's own arrays
(``CHIP_ARRAYS``, one ``.npy`` file each in the chip's folder, with their sha256) and the model's
(``SHARED_ARRAYS``, content-addressed blobs shared by chips). Its own sha256 covers every other
field, so an altered seed or profile value is corruption, not a silently different chip.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from chipsim.profiles import ProfileError, profile_from_dict
from chipsim.state import ChipState, LayerState
from chipsim.store_errors import ChipCorruptError, ChipVersionError

FORMAT = "agedchip-chip"
FORMAT_VERSION = 1

# Arrays that belong to the chip (written per chip) and to the model (shared blobs).
CHIP_ARRAYS = ("dg_us", "nu", "gdc_baseline", "gdc_baseline_col", "gdc_baseline_exact")
SHARED_ARRAYS = ("weight", "bias")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum field: a changed seed
    or profile value would silently change every read-out, so the manifest is checked too."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def npy_bytes(arr: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (C order, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def layer_entry(layer: LayerState) -> dict[str, Any]:
    """A layer's fields of the manifest other than its arrays."""
    return {
        "name": layer.name,
        "input_range": layer.input_range,
        "tiles": [list(t) for t in layer.tiles],
        "meta": layer.meta,
    }


def build_manifest(
    chip: ChipState, layers: list[dict[str, Any]], arrays: dict[str, dict[str, Any]], attachments: dict[str, str]
) -> dict[str, Any]:
    """The manifest of a chip whose arrays and attachments (name → blob digest) are written, signed."""
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "chip_id": chip.chip_id,
        "profile": chip.profile.model_dump(mode="json"),
        "seed": chip.seed,
        "programmed_at": chip.programmed_at,
        "meta": chip.meta,
        "layers": layers,
        "arrays": arrays,
        "attachments": attachments,
        "n_weights": chip.n_weights,
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return manifest


def check_manifest(manifest: Any, chip_id: str, rel: str) -> dict[str, Any]:
    """``manifest`` (decoded JSON, read from ``rel``) if it is a chip manifest of this version
    with a valid checksum; else ChipCorruptError or ChipVersionError."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ChipCorruptError(chip_id, rel, "not an agedchip chip manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ChipVersionError(
            chip_id,
            rel,
            f"format version {manifest.get('version')!r}, this build reads version {FORMAT_VERSION}",
        )
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise ChipCorruptError(chip_id, rel, "manifest checksum mismatch (altered)")
    return manifest


def decode_array(data: bytes, entry: dict[str, Any], chip_id: str, rel: str) -> np.ndarray:
    """The array of ``.npy`` bytes read from ``rel``, checked against its manifest ``entry``."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # any decoding failure is corruption
        raise ChipCorruptError(chip_id, rel, f"unreadable array ({err})") from None
    if list(arr.shape) != list(entry["shape"]) or str(arr.dtype) != entry["dtype"]:
        raise ChipCorruptError(chip_id, rel, f"shape/dtype {arr.shape}/{arr.dtype} differ from the manifest")
    return arr


def chip_from_manifest(
    manifest: dict[str, Any],
    chip_id: str,
    load_array: Callable[[dict[str, Any]], np.ndarray],
    get_blob: Callable[[str], bytes],
) -> ChipState:
    """The chip a checked manifest describes; ``load_array`` reads an array entry, ``get_blob``
    an attachment's digest. Any inconsistency is ChipCorruptError."""
    mrel = f"chips/{chip_id}/manifest.json"
    try:
        profile = profile_from_dict(manifest["profile"])
        arrays = manifest["arrays"]
        layers = []
        for i, lmeta in enumerate(manifest["layers"]):
            get = {name: load_array(arrays[f"layers/{i}/{name}"]) for name in CHIP_ARRAYS}
            weight = load_array(arrays[f"layers/{i}/weight"])
            bias_entry = arrays.get(f"layers/{i}/bias")
            layers.append(
                LayerState(
                    name=lmeta["name"],
                    weight=weight,
                    input_range=float(lmeta["input_range"]),
                    tiles=[(int(a), int(b)) for a, b in lmeta["tiles"]],
                    bias=None if bias_entry is None else load_array(bias_entry),
                    meta=lmeta.get("meta", {}),
                    **get,
                )
            )
        attachments = {name: get_blob(digest) for name, digest in manifest["attachments"].items()}
        chip = ChipState(
            chip_id=manifest["chip_id"],
            profile=profile,
            seed=int(manifest["seed"]),
            programmed_at=float(manifest["programmed_at"]),
            layers=layers,
            meta=manifest.get("meta", {}),
            attachments=attachments,
        )
    except ChipCorruptError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ProfileError) as err:
        raise ChipCorruptError(chip_id, mrel, f"inconsistent manifest ({type(err).__name__}: {err})") from None
    if chip.chip_id != chip_id:
        raise ChipCorruptError(chip_id, mrel, f"manifest names chip {chip.chip_id!r}")
    return chip
