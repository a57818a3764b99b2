"""Give freed heap memory back to the operating system (glibc's ``malloc_trim``).

Parsing and compiling a model frees hundreds of megabytes of protobuf and numpy temporaries in
pieces below glibc's mmap threshold; glibc keeps them mapped (resident) for later allocations.
Trimming after such a phase lets the resident size fall back, so the next phase's peak is its own
(an 8M-weight MLP: 8 of the 14 bytes per weight left resident after compiling). Elsewhere (musl,
macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def trim() -> bool:
    """Return free heap pages to the OS; True if glibc did (some memory was released)."""
    lib = _libc()
    return bool(lib.malloc_trim(0)) if lib is not None else False
