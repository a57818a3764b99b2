"""What the service's admission limits are calibrated on (issue 15): memory per new age, the cost
of tiles, and the refresher's CPU per chip.

    python -m bench.serving_costs [--rows 2000] [--ages 4] [--tiles 256 512 1024 2048] [--refreshes 10]

1. **Resident memory of a read-out at a new age** (``service.memory.BYTES_PER_WEIGHT``): a
   rows×rows MatMul on 'pcm', one fresh process per (binding, batch) so that the RSS is its own;
   after each of ``--ages`` new ages: RSS growth over the process's RSS before the first one
   (gc'd), per analog weight and age, next to what the runtime's cache accounts for.
2. **Session build vs tiles** (``AGEDCHIP_MAX_TILES``): a rows×8 MatMul programmed with
   ``tile_rows=1`` (tiles = rows): seconds to program, to build the serving runtime (its
   onnxruntime session), and for the first inference at a new age ('initializers' binding: a
   session per age).
3. **The refresher's CPU per chip** (``AGEDCHIP_REFRESH_MAX_CHIPS``): the zoo's ``cnn-hwa`` on
   'pcm' (the default chip) with the default settings: process CPU time of a chip's first refresh
   (which also evaluates the fixed schedule) and of later ones (each with a fresh evaluation
   runtime, as when its read-out was dropped: the worst case).

Results: bench/results/serving_costs.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from bench.common import machine, write


def matmul(rows: int, cols: int) -> bytes:
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])
    m = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "mm",
            [x],
            [y],
            initializer=[numpy_helper.from_array(w, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    return m.SerializeToString()


def memory_child(binding: str, batch: int, rows: int, ages: int) -> dict:
    """One configuration, in this (fresh) process."""
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime
    from service.memory import rss_bytes

    chip = program_onnx(matmul(rows, rows), get_profile("pcm"), 0)
    rt = ChipRuntime(chip, threads=1, binding=binding, cache_entries=64, cache_bytes=1 << 40)
    x = np.ones((batch, rows), np.float32)
    gc.collect()
    base = rss_bytes()
    out = []
    for i in range(ages):
        t0 = time.perf_counter()
        rt.run(x, 3600.0 * 2**i, seed=1)
        seconds = time.perf_counter() - t0
        gc.collect()
        grown = rss_bytes() - base
        out.append(
            {
                "ages": i + 1,
                "rss_growth_bytes": grown,
                "accounted_bytes": rt.stats.bytes,
                "bytes_per_weight_per_age": grown / (i + 1) / chip.n_weights,
                "seconds": seconds,
            }
        )
    return {"binding": binding, "batch": batch, "rows": rows, "weights": chip.n_weights, "steps": out}


def tiles_case(rows: int) -> dict:
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    t0 = time.perf_counter()
    chip = program_onnx(matmul(rows, 8), get_profile("pcm", tile_rows=1), 0)
    t1 = time.perf_counter()
    rt = ChipRuntime(chip, threads=1)
    t2 = time.perf_counter()
    rt.run(np.ones((1, rows), np.float32), 3600.0, seed=1)
    t3 = time.perf_counter()
    return {
        "tiles": sum(len(layer.tiles) for layer in chip.layers),
        "program_s": t1 - t0,
        "runtime_s": t2 - t1,
        "first_age_s": t3 - t2,
    }


def refresh_case(refreshes: int) -> dict:
    import tempfile
    from pathlib import Path

    from service.background import Refresher
    from service.default_chip import program_default_chip
    from service.registry import Registry
    from service.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "state")
        registry = Registry(settings)
        program_default_chip(registry, settings)
        chip = registry.get(settings.default_chip_id)
        refresher = Refresher(registry, settings)
        t0 = time.process_time()
        refresher.refresh_chip(chip)
        first = time.process_time() - t0
        later = []
        for _ in range(refreshes):
            chip.drop_eval_runtime()
            t0 = time.process_time()
            refresher.refresh_chip(chip)
            later.append(time.process_time() - t0)
    return {
        "model": settings.default_model,
        "first_cpu_s": first,
        "later_cpu_s": later,
        "eval_samples": settings.refresh_eval_samples,
        "schedule_readouts": settings.schedule_readouts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--ages", type=int, default=4)
    ap.add_argument("--tiles", type=int, nargs="*", default=[256, 512, 1024, 2048])
    ap.add_argument("--refreshes", type=int, default=10)
    ap.add_argument("--child", nargs=3, metavar=("BINDING", "BATCH", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(memory_child(args.child[0], int(args.child[1]), int(args.child[2]), args.ages)))
        return
    memory = []
    for binding, batch in (("initializers", 1), ("initializers", 1024), ("inputs", 1), ("inputs", 1024)):
        cmd = [
            sys.executable,
            "-m",
            "bench.serving_costs",
            "--ages",
            str(args.ages),
            "--child",
            binding,
            str(batch),
            str(args.rows),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        memory.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(memory[-1]["steps"][-1]), flush=True)
    tiles = []
    for rows in args.tiles:
        tiles.append(tiles_case(rows))
        print(json.dumps(tiles[-1]), flush=True)
    refresh = refresh_case(args.refreshes)
    print(json.dumps(refresh), flush=True)
    info = machine()
    info["command"] = "python -m bench.serving_costs " + " ".join(sys.argv[1:])
    lines = [
        "# Serving costs: memory per new age, time per tile\n",
        f"`{info['command']}` · {info['date']} · {info['cpus']} CPUs (shared with other processes) · "
        f"onnxruntime {info['onnxruntime']}\n",
        f"## Resident memory of read-outs at new ages ({args.rows}×{args.rows} MatMul, 'pcm', "
        f"{memory[0]['weights']} weights)\n",
        "| binding | batch | new ages | RSS growth (MiB) | runtime cache accounts (MiB) | bytes per weight per age |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in memory:
        for s in m["steps"]:
            lines.append(
                f"| {m['binding']} | {m['batch']} | {s['ages']} | {s['rss_growth_bytes'] / 2**20:.0f} | "
                f"{s['accounted_bytes'] / 2**20:.0f} | {s['bytes_per_weight_per_age']:.1f} |"
            )
    lines += [
        "",
        "## Tiles (tile_rows=1, rows×8 MatMul)\n",
        "| tiles | program (s) | runtime build (s) | first new age (s) |",
        "|---:|---:|---:|---:|",
    ]
    for t in tiles:
        lines.append(f"| {t['tiles']} | {t['program_s']:.2f} | {t['runtime_s']:.2f} | {t['first_age_s']:.2f} |")
    later = sorted(refresh["later_cpu_s"])
    lines += [
        "",
        f"## Refresher CPU per chip ({refresh['model']}, {refresh['eval_samples']} eval samples, "
        f"{refresh['schedule_readouts']} read-outs per scheduled age)\n",
        f"- first refresh (drift, current accuracy, the fixed schedule): {refresh['first_cpu_s']:.2f} s CPU",
        f"- later refreshes (fresh evaluation runtime), {len(later)} runs: median "
        f"{later[len(later) // 2] * 1e3:.0f} ms CPU, range {later[0] * 1e3:.0f}-{later[-1] * 1e3:.0f} ms",
    ]
    path = write(
        "serving_costs",
        {"machine": info, "memory": memory, "tiles": tiles, "refresh": refresh},
        "\n".join(lines) + "\n",
    )
    print(f"wrote {path[1]}")


if __name__ == "__main__":
    main()
