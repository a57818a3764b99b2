"""Store housekeeping benchmark: bytes reclaimed by deletes, and what collection costs.

    python -m bench.store_collect

Programs six chips of six distinct 2048×1024 models (an 8 MiB float32 weight blob and a 4 MiB
model file each, 16 MiB of device arrays per chip), deletes them all and reports the bytes on
disk before and after and what each delete reclaimed (the issue's disk-budget attack: program/
delete cycles of distinct models). Then, with 200 chips of one shared model on disk, times
``collect()`` and ``delete()`` (which collects after the rename), median and range of 20 each.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from chipsim import ChipStore, LayerSpec, get_profile, program


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    root = Path(tempfile.mkdtemp()) / "state"
    rng = np.random.default_rng(0)
    try:
        with ChipStore(root) as store:
            for i in range(6):
                w = np.clip(rng.standard_normal((2048, 1024)), -2.5, 2.5).astype(np.float32)
                store.save(
                    program(
                        [LayerSpec("fc", w)],
                        get_profile("pcm"),
                        seed=i,
                        chip_id=f"m{i}",
                        attachments={"model.onnx": w.tobytes()[: 4 << 20]},
                    )
                )
            before = du(root)
            reports = [store.delete(f"m{i}") for i in range(6)]
            after = du(root)
            print(
                f"6 chips of distinct models: {before / 2**20:.1f} MiB on disk, "
                f"{after / 2**20:.2f} MiB after deleting all"
            )
            print(
                "per delete, MiB: chip files",
                [round(r.chip_bytes / 2**20, 2) for r in reports],
                "shared blobs",
                [round(r.blob_bytes / 2**20, 2) for r in reports],
            )
            w = np.clip(rng.standard_normal((64, 64)), -2.5, 2.5).astype(np.float32)
            for i in range(200):
                store.save(program([LayerSpec("fc", w)], get_profile("pcm"), seed=i, chip_id=f"s{i}"))
            for name, call in (("collect()", lambda i: store.collect()), ("delete()", lambda i: store.delete(f"s{i}"))):
                t = []
                for i in range(0, 200, 10):
                    t0 = time.perf_counter()
                    call(i)
                    t.append(time.perf_counter() - t0)
                print(
                    f"{name} with ~200 chips on disk: median {statistics.median(t) * 1e3:.1f} ms, "
                    f"range {min(t) * 1e3:.1f}-{max(t) * 1e3:.1f} ms (n={len(t)})"
                )
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
