"""How the registry describes the chips of its store: the entries of GET /chips (ready and
corrupt), a chip's bytes on disk (its own files, and the content-addressed blobs it may share with
other chips), and the signature by which a read-only replica's relist sees that a chip changed."""

from __future__ import annotations

from typing import Any

from chipsim import ChipStore
from chipsim.store import ChipListing
from service.served_chip import ServedChip


def ready_entry(c: ServedChip) -> dict[str, Any]:
    """A ready chip's entry of GET /chips (its age from the wall clock, seconds)."""
    return {
        "chip_id": c.chip_id,
        "state": "ready",
        "model": c.model_name,
        "profile": c.preset,
        "seed": c.chip.seed,
        "programmed_at": c.chip.programmed_at,
        "time_scale": c.time_scale,
        "age_s": c.wall_age(),
        "error": None,
    }


def corrupt_entry(chip_id: str, error: str) -> dict[str, Any]:
    """A corrupt chip's entry of GET /chips: only its id and why it cannot serve."""
    return {
        "chip_id": chip_id,
        "state": "corrupt",
        "model": None,
        "profile": None,
        "seed": None,
        "programmed_at": None,
        "time_scale": None,
        "age_s": None,
        "error": error,
    }


def shared_bytes(store: ChipStore, manifest: dict[str, Any]) -> int:
    """Bytes of the blobs (arrays and attachments) a chip's manifest names; other chips may share them."""
    total = 0
    for entry in manifest.get("arrays", {}).values():
        if isinstance(entry, dict) and "blob" in entry:
            p = store.blobs_dir / f"{entry['blob']}.npy"
            total += p.stat().st_size if p.is_file() else 0
    for digest in manifest.get("attachments", {}).values():
        p = store.blobs_dir / f"{digest}.bin"
        total += p.stat().st_size if p.is_file() else 0
    return total


def chip_sizes(store: ChipStore, chip_id: str) -> tuple[int, int]:
    """(bytes of the chip's own files, bytes of the blobs it names); (0, 0) when unreadable."""
    try:
        return store.disk_bytes(chip_id), shared_bytes(store, store.read_manifest(chip_id))
    except Exception:  # sizes are informative only
        return 0, 0


def listing_signature(listing: ChipListing) -> str:
    """What a chip was loaded from: its manifest's checksum, or the listing's error for a corrupt one."""
    if listing.status == "ready" and listing.manifest is not None:
        return "sha256:" + str(listing.manifest.get("manifest_sha256"))
    return "corrupt:" + str(listing.error)
