"""Cost of the energy/latency estimate itself, per zoo model.

    python -m bench.cost_estimate

- full estimate: ``CostEstimator.estimate(batch=1)`` (ONNX shape inference + counting +
  pricing), what ``GET /chips/{id}`` would compute once per chip;
- cached request: ``CostEstimator.request(batch=8)`` after the first call, what every
  ``/infer`` would pay.

Median and range over 5 repeats, printed (not written to bench/results: it is a few lines).
"""

from __future__ import annotations

import statistics
import timeit
from pathlib import Path

from chipsim.compiler import program_onnx
from chipsim.cost import CostEstimator
from chipsim.profiles import get_profile

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"


def main() -> None:
    for name in ("mlp-hwa", "cnn-hwa", "transformer-hwa"):
        chip = program_onnx((ZOO / f"{name}.onnx").read_bytes(), get_profile("pcm"), seed=0)
        est = CostEstimator(chip)
        full = [t / 20 for t in timeit.repeat(lambda: est.estimate(1), number=20, repeat=5)]
        est.request(8)
        req = [t / 10000 for t in timeit.repeat(lambda: est.request(8), number=10000, repeat=5)]
        print(
            f"{name}: full estimate {statistics.median(full) * 1e3:.2f} ms "
            f"(range {min(full) * 1e3:.2f}-{max(full) * 1e3:.2f}); cached request "
            f"{statistics.median(req) * 1e6:.1f} µs (range {min(req) * 1e6:.1f}-{max(req) * 1e6:.1f})"
        )


if __name__ == "__main__":
    main()
