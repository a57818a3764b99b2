"""The read-out cache: LRU bounds, single flight, retry after a failed build (chipsim.readout_cache)."""

import threading
from dataclasses import dataclass

import pytest

from chipsim.readout_cache import ReadoutCache


@dataclass
class Value:
    name: str
    nbytes: int = 10


def test_lru_evicts_the_least_recently_used_beyond_the_entry_bound():
    cache = ReadoutCache(max_bytes=1000, max_entries=2)
    cache.get("a", lambda: Value("a"))
    cache.get("b", lambda: Value("b"))
    cache.get("a", lambda: pytest.fail("a is cached"))  # a is now the newest
    cache.get("c", lambda: Value("c"))  # evicts b, the least recently used
    assert cache.find(lambda k: k == "b") is None and cache.find(lambda k: k == "a") is not None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions, cache.stats.entries) == (1, 3, 1, 2)
    assert cache.stats.bytes == 20


def test_byte_bound_keeps_at_least_the_newest_entry():
    cache = ReadoutCache(max_bytes=15, max_entries=10)
    cache.get(1, lambda: Value("one"))
    cache.get(2, lambda: Value("two"))  # 20 bytes > 15: the older goes
    assert cache.stats.entries == 1 and cache.find(lambda k: k == 2) is not None
    cache.get(3, lambda: Value("huge", nbytes=100))  # larger than the bound alone: still kept
    assert cache.stats.entries == 1 and cache.stats.bytes == 100


def test_find_counts_nothing_and_keeps_the_order():
    cache = ReadoutCache(max_bytes=1000, max_entries=2)
    cache.get("a", lambda: Value("a"))
    cache.get("b", lambda: Value("b"))
    assert cache.find(lambda k: k == "a").name == "a"  # does not make "a" the newest
    cache.get("c", lambda: Value("c"))
    assert cache.find(lambda k: k == "a") is None
    assert cache.stats.hits == 0


def test_concurrent_misses_build_once_and_waiters_find_the_value():
    cache = ReadoutCache(max_bytes=1000, max_entries=4)
    started, release = threading.Event(), threading.Event()
    builds = []

    def build():
        builds.append(1)
        started.set()
        release.wait(5)
        return Value("x")

    results = []
    first = threading.Thread(target=lambda: results.append(cache.get("k", build)))
    first.start()
    assert started.wait(5)
    waiters = [threading.Thread(target=lambda: results.append(cache.get("k", build))) for _ in range(5)]
    for t in waiters:
        t.start()
    release.set()
    for t in [first, *waiters]:
        t.join(5)
    assert len(builds) == 1 and len(results) == 6 and all(r is results[0] for r in results)
    assert cache.stats.misses == 1 and cache.stats.hits == 5


def test_a_failed_build_is_not_cached_and_the_next_caller_builds_again():
    cache = ReadoutCache(max_bytes=1000, max_entries=4)

    def fail():
        raise RuntimeError("read-out failed")

    with pytest.raises(RuntimeError, match="read-out failed"):
        cache.get("k", fail)
    assert cache.get("k", lambda: Value("ok")).name == "ok"
    assert cache.stats.misses == 2 and cache.stats.entries == 1
