"""CPU time of the whole /infer handler (parse, check, run, answer) per sample, by batch size: how
far merging batch-1 requests can go (the choice of AGEDCHIP_BATCH_MAX_SIZE).

    python -m bench.infer_batch_cost [--model cnn-hwa] [--sizes 1 2 4 8 16 32 64] [--calls 200] [--rounds 3]

In one process, on a chip of the zoo model programmed into a temporary store; every round times
``--calls`` calls of each batch size, the sizes interleaved; the report gives per size the median
[min–max] over rounds of the thread CPU time per sample (wall time on a shared host is noisier).
Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from service.default_chip import program_default_chip
from service.registry import Registry
from service.routes.infer import infer_json
from service.settings import Settings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn-hwa")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "state", default_model=args.model, refresh_seconds=0)
        registry = Registry(settings)
        registry.load_all()
        program_default_chip(registry, settings)
        shape = registry.get("default").runtime.inputs[0]["shape"][1:]
        rng = np.random.default_rng(0)
        bodies = {
            b: json.dumps({"chip_id": "default", "inputs": rng.random((b, *shape)).tolist(), "age": "1d"}).encode()
            for b in args.sizes
        }
        per_sample: dict[int, list[float]] = {b: [] for b in args.sizes}
        for body in bodies.values():
            for _ in range(10):  # warm: the read-out, its session, the noise shapes
                infer_json(registry, body)
        for _ in range(args.rounds):
            for b, body in bodies.items():
                t0 = time.thread_time()
                for _ in range(args.calls):
                    infer_json(registry, body)
                per_sample[b].append((time.thread_time() - t0) / (args.calls * b))
        registry.close()
    one = np.median(per_sample[args.sizes[0]])
    print(f"| batch | CPU per sample (ms), median [min–max] of {args.rounds} rounds | vs batch {args.sizes[0]} |")
    print("|---:|---:|---:|")
    for b, v in per_sample.items():
        print(f"| {b} | {1e3 * np.median(v):.3f} [{1e3 * min(v):.3f}–{1e3 * max(v):.3f}] | {np.median(v) / one:.2f} |")


if __name__ == "__main__":
    main()
