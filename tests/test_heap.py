"""chipsim.heap calls glibc with the right arguments and does nothing without it."""

from __future__ import annotations

import sys

import pytest

from chipsim import heap


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1


def test_trim_and_limit_call_glibc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_libc", lambda: fake)
    assert heap.trim() and heap.limit_retention()
    # malloc.h: M_MMAP_THRESHOLD is -3; trim everything above a pad of 0
    assert fake.calls == [("malloc_trim", 0), ("mallopt", -3, 1 << 20)]


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.trim() is False and heap.limit_retention() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc on Linux")
def test_glibc_accepts_both():
    assert heap.limit_retention() is True  # mallopt returns 1 on success
    heap.trim()
