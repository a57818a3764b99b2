"""Collection of shared blobs no chip uses (DESIGN §4, issue #15 finding 10): mark and sweep.

Mark: every blob digest named by any manifest under ``chips/``, plus the blobs that saves in
progress in this process have pinned. Sweep: remove the other ``blobs/<sha256>.<ext>`` files.
It runs under the writer lock (so no other process writes), holding the process's collection
mutex (so no save of this process pins or publishes meanwhile), after every delete and at open.

Why a crash at any moment never removes a blob that a published chip references:

- A save writes (or finds, after pinning it) every blob *before* it renames the chip into
  ``chips/``; a chip is published only with its blobs on disk.
- A blob is removed only if, while the mutex is held, no manifest in ``chips/`` names it and no
  save of this process has it pinned. A save pins a digest under the same mutex *before* it
  checks whether the blob exists, and unpins it only after its chip is published (or failed).
  So a blob is either seen as used, or removed before the pin and then rewritten by the save.
- Deletion publishes first (the rename out of ``chips/`` is the commit) and collects after; a
  crash between the two only leaves unused blobs, which the next collection (at the next open)
  removes. A crash within the sweep leaves a subset of the unused blobs, likewise.
- Marking is conservative: digests are read from the raw manifest bytes (any 64-hex-digit
  token), so an altered or undecodable manifest still protects what it names; if a manifest
  cannot be read at all (permission, I/O error, oversize), nothing is collected this time.
- Only this process writes (the lock); read-only replicas never write, and a chip they load
  while it is deleted is reported as not found, not as corrupt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from chipsim.store_io import MAX_MANIFEST_BYTES, UnreadableFile, read_regular_file

BLOB_NAME = re.compile(r"([0-9a-f]{64})\.(npy|bin)")
_DIGEST = re.compile(rb"[0-9a-f]{64}")


@dataclass(frozen=True)
class CollectReport:
    """What a collection did: blobs removed and their bytes, blobs kept (in use), temporary
    entries removed (at open), and why it did nothing if it was skipped."""

    blobs_removed: int = 0
    blob_bytes: int = 0
    blobs_kept: int = 0
    tmp_removed: int = 0
    skipped: str | None = None


@dataclass(frozen=True)
class DeleteReport:
    """A delete's reclaimed space: the chip's own files, and the shared blobs it was the last
    user of (``collect`` says what the collection after it did)."""

    chip_id: str
    chip_bytes: int
    collect: CollectReport

    @property
    def blobs_removed(self) -> int:
        return self.collect.blobs_removed

    @property
    def blob_bytes(self) -> int:
        return self.collect.blob_bytes


class MarkBlocked(Exception):
    """A manifest could not be read, so what it references is unknown: collect nothing."""


def referenced_digests(chips_dir: Path) -> set[str]:
    """Every 64-hex-digit token in every manifest under ``chips_dir`` (a superset of the blobs
    the chips use: the chip's own array checksums are tokens too, and name no blob)."""
    used: set[str] = set()
    try:
        folders = sorted(chips_dir.iterdir())
    except FileNotFoundError:
        return used
    for folder in folders:
        if not folder.is_dir():
            continue
        try:
            data = read_regular_file(folder / "manifest.json", MAX_MANIFEST_BYTES)
        except UnreadableFile as err:
            if err.absent:  # no manifest at all: references nothing
                continue
            raise MarkBlocked(f"chips/{folder.name}/manifest.json {err.reason}") from None
        used.update(m.decode() for m in _DIGEST.findall(data))
    return used
