"""The store's file access. Bounded reads: whatever is on disk, a read returns bytes or raises
:class:`UnreadableFile`, never an OS error, a hang or a recursion error (issue #15 finding 6).
Durable writes: a file or a folder entry is fsynced before the store relies on it.

A chip folder may have been altered by anything: a file replaced by a folder, a pipe (whose read
would block forever), a symbolic link, a sparse file of many GiB, an unreadable file, or JSON
nested so deep that the decoder recurses out of the stack. The store turns these into a corrupt
chip and lists the others.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np

# The store's logger: these messages are the chip store's, whichever module writes them.
log = logging.getLogger("chipsim.store")

# A manifest holds per layer its tile list (~20 bytes a tile) and a few hundred bytes of fields;
# 64 MiB is several million tiles, far beyond any chip this project programs, yet small enough
# to read into memory at start-up without a second thought.
MAX_MANIFEST_BYTES = 64 << 20
# A manifest nests 5 levels (manifest → layers → layer → tiles → tile); chip and layer ``meta``
# add what the service stores there (a few levels). 64 leaves room and stays far below the
# decoder's recursion limit (~1000 on CPython).
MAX_JSON_DEPTH = 64


class UnreadableFile(Exception):
    """``reason`` says why; ``absent`` when the path is not a regular file the store could have
    written (missing, a folder, a pipe, a link): it then holds no data at all."""

    def __init__(self, reason: str, absent: bool = False):
        super().__init__(reason)
        self.reason, self.absent = reason, absent


def read_regular_file(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (not following a final symbolic link), at most
    ``max_bytes`` long."""
    try:
        # O_NONBLOCK: opening a pipe for reading must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnreadableFile("missing", absent=True) from None
    except OSError as err:
        if os.path.islink(path):
            raise UnreadableFile("is a symbolic link, not a file the store wrote", absent=True) from None
        raise UnreadableFile(f"cannot be read ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UnreadableFile("is a folder, not a file", absent=True)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile("is not a regular file (a pipe, socket or device)", absent=True)
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnreadableFile(f"is {st.st_size} bytes, more than the {max_bytes} a manifest may have")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:  # grew while being read
                raise UnreadableFile(f"is more than the {max_bytes} bytes a manifest may have")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise UnreadableFile(f"cannot be read ({err.strerror or err})") from None
    finally:
        os.close(fd)


# A JSON string, unrolled so a long string matches in one linear pass.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth(text: str) -> int:
    """How deep ``[``/``{`` nest in ``text`` outside of strings (over-counts only malformed JSON)."""
    code = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8"), dtype=np.uint8)
    step = np.isin(code, (ord("["), ord("{"))).astype(np.int64) - np.isin(code, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def loads_bounded(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of UTF-8 bytes that refuses (ValueError) nesting deeper than ``max_depth``
    before decoding, so the decoder never recurses out of the stack."""
    text = data.decode("utf-8")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep, more than {max_depth}")
    return json.loads(text)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (durable before the store publishes it)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 for what cannot be read)."""
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.lstat().st_size
        except OSError:
            pass
    return total


def remove_entry(entry: Path) -> None:
    """Remove a file or a folder, ignoring what cannot be removed (it is garbage either way)."""
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove %s: %s", entry, err)
