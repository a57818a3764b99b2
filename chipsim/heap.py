"""glibc's heap and large numpy arrays: what is freed should leave the resident set.

``trim`` gives freed heap pages back (``malloc_trim``): parsing and compiling a model frees
hundreds of megabytes of protobuf and numpy temporaries that glibc otherwise keeps for later.
``limit_retention`` fixes the mmap threshold (``mallopt``) so that large blocks are unmapped
when freed instead of being carved from a heap that only shrinks from its top. Elsewhere (musl,
macOS) both do nothing.
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


#: glibc's ``mallopt`` parameter number of the mmap threshold (malloc.h: ``M_MMAP_THRESHOLD``).
M_MMAP_THRESHOLD = -3
#: Blocks from this size up are mapped on their own and unmapped when freed (glibc's default
#: threshold starts at 128 KiB but rises to the largest block freed, up to 32 MiB, after which a
#: layer's temporaries come from the heap and stay resident between the chip's long-lived arrays:
#: resnet18 kept 24 B/weight resident after programming for 12 B/weight of state, and peaked at
#: 24; with 1 MiB fixed, 15 and 19.5: RSS over the RSS before programming, one process each).
MMAP_THRESHOLD_BYTES = 1 << 20


def limit_retention(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (process-wide: the service and the scale benchmark call it once
    at start); True if set. Costs a page fault per 4 KiB of each new large block."""
    lib = _libc()
    return bool(lib.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes))) if lib is not None else False
