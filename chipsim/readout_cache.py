"""A bounded LRU of read-outs with single flight (DESIGN §3.7).

A read-out at a new age costs milliseconds to tens of milliseconds (numpy read-out, and in the
``initializers`` binding an onnxruntime session build), so a runtime keeps the recent ones.
The cache is bounded by entry count and by bytes (the values' ``nbytes``) and always keeps the
newest entry. Single flight: when several threads miss the same key at once, one builds the
value and the others wait for it instead of repeating the work; if the build fails, a waiting
thread tries again. The value is in the cache before the waiters wake.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Sized)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class ReadoutCache(Generic[K, V]):
    """LRU of at most ``max_entries`` values and ``max_bytes`` bytes. Thread-safe."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[K, threading.Event] = {}

    def get(self, key: K, build: Callable[[], V]) -> V:
        """The cached value of ``key``, built by ``build()`` on a miss (once across threads)."""
        while True:
            with self._lock:
                value = self._entries.get(key)
                if value is not None:
                    self._entries.move_to_end(key)
                    self.stats.hits += 1
                    return value
                pending = self._inflight.get(key)
                if pending is None:
                    self.stats.misses += 1
                    pending = self._inflight[key] = threading.Event()
                    break
            pending.wait()  # another thread builds it; then look again (it may have failed)
        try:
            value = build()
        except BaseException:
            with self._lock:
                del self._inflight[key]
            pending.set()
            raise
        with self._lock:
            # Insert before waking the waiters, so that they find the value rather than build it again.
            del self._inflight[key]
            self._insert(key, value)
        pending.set()
        return value

    def _insert(self, key: K, value: V) -> None:
        """Add ``key`` as the newest entry and evict the oldest beyond the bounds (lock held)."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        total = sum(v.nbytes for v in self._entries.values())
        while len(self._entries) > 1 and (total > self.max_bytes or len(self._entries) > self.max_entries):
            _, old = self._entries.popitem(last=False)
            total -= old.nbytes
            self.stats.evictions += 1
        self.stats.entries, self.stats.bytes = len(self._entries), total

    def evict(self, keep: int = 0) -> int:
        """Drop the oldest entries until at most ``keep`` remain (a process-wide memory budget
        evicting across caches); returns the bytes dropped, as the entries charge them.
        Threads that hold a dropped value keep using it."""
        with self._lock:
            dropped = 0
            while len(self._entries) > max(0, keep):
                _, old = self._entries.popitem(last=False)
                dropped += old.nbytes
                self.stats.evictions += 1
            self.stats.entries = len(self._entries)
            self.stats.bytes = sum(v.nbytes for v in self._entries.values())
        return dropped

    def find(self, match: Callable[[K], bool]) -> V | None:
        """The first cached value whose key matches, without counting a hit or changing LRU order."""
        with self._lock:
            return next((v for k, v in self._entries.items() if match(k)), None)
