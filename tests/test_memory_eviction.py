"""Read-out caches charged with their measured cost and evictable across chips (issue #15,
finding 3): ``ReadoutCache.evict``, ``ChipRuntime.evict_readouts``, the session charge, and the
service's memory relief evicting every chip's cached read-outs but the newest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi.testclient import TestClient

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.compiler.weight_packing import weight_inputs
from chipsim.readout_cache import ReadoutCache
from chipsim.runtime import SESSION_CHARGE, ChipRuntime
from service.app import create_app
from tests.service_helpers import make_settings, tiny_model, x_batch


@dataclass
class Blob:
    nbytes: int


def test_evict_drops_oldest_first_and_reports_bytes():
    cache: ReadoutCache[int, Blob] = ReadoutCache(max_bytes=1 << 20, max_entries=10)
    for k in range(4):
        cache.get(k, lambda k=k: Blob(10 * (k + 1)))
    cache.get(0, lambda: Blob(999))  # a hit: 0 becomes the newest
    assert cache.evict(keep=2) == 20 + 30  # entries 1 and 2 were the oldest
    assert cache.stats.entries == 2 and cache.stats.bytes == 10 + 40 and cache.stats.evictions == 2
    assert cache.find(lambda k: k == 1) is None and cache.find(lambda k: k == 0) is not None
    assert cache.evict() == 50 and cache.stats.entries == 0


def test_an_entry_with_a_session_is_charged_the_measured_ratio():
    chip = program_onnx(tiny_model(), get_profile("pcm"), 0)
    x = np.asarray(x_batch(2), np.float32)
    for binding, has_session in (("inputs", False), ("initializers", True)):
        rt = ChipRuntime(chip, threads=1, binding=binding)
        rt.run(x, 3600.0, seed=1)
        entry = rt._cache.find(lambda key: True)
        # the packed weights, packed again here: an entry with a session no longer holds them
        packed = weight_inputs(rt.plans, chip.layers, entry.readout, chip.profile, rt.gdc_mode(True))
        weights = sum(a.nbytes for a in packed.values())
        arrays = entry.readout.nbytes + weights
        assert (len(entry.weights) == 0) == has_session
        expected = int(SESSION_CHARGE * (arrays + weights)) if has_session else arrays
        assert (entry.session is not None) == has_session
        assert rt.stats.bytes == expected > 0
        assert rt.evict_readouts() == expected and rt.stats.entries == 0 and rt.stats.bytes == 0


def test_memory_relief_evicts_cached_readouts_of_every_chip_but_the_newest(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path, zoo))) as c:
        registry = c.app.state.registry
        for age in ("1h", "1d", "1w"):
            assert c.post("/infer", json={"chip_id": "default", "inputs": x_batch(2), "age": age}).status_code == 200
        chip = registry.get("default")
        assert chip.runtime.stats.entries == 3
        registry.relieve_memory()
        assert chip.runtime.stats.entries == 1
        # the newest age is still cached: served without a new read-out
        misses = chip.runtime.stats.misses
        assert c.post("/infer", json={"chip_id": "default", "inputs": x_batch(2), "age": "1w"}).status_code == 200
        assert chip.runtime.stats.misses == misses
