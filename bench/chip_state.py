"""Chip-state benchmark: program, read-out at a new age, bytes on disk, load, for 4M weights.

    python -m bench.chip_state [--rows 2048] [--cols 2048] [--repeats 3] [--profile]

Programs one 2048×2048 layer (4,194,304 weights, 8,388,608 devices) on a ``pcm`` chip and
measures, on this machine:

- program: ``chipsim.program`` (sampling G_prog, ν, faults, GDC baselines), ns per weight;
- read-out at a new age: ``chipsim.read`` at ages never read before (no cache exists in chipsim;
  every read is a full read-out), median over several ages, ns per weight;
- bytes per weight on disk: the chip's own files (``ChipStore.disk_bytes``) and, separately,
  including the shared content-addressed blobs (target weights) the chip refers to;
- load: ``ChipStore.load`` with checksum verification, s (the files are in the page cache
  after saving: this is the restart-from-warm-disk time, not a cold-disk read).

Results go to ``chip_state.json`` and ``chip_state.md`` in a new folder ``runs/chip_state/<time>/``;
``--replace`` writes the committed ``bench/results/`` instead (see :mod:`models.outputs`).
Targets (from the issue): program ≤ 200 ns/weight, read-out ≤ 100 ns/weight, load ≤ 0.5 s,
≤ 8 bytes per weight for the two devices on disk.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from chipsim import ChipState, ChipStore, LayerSpec, get_profile, program, read
from models import outputs

RESULTS = Path(__file__).resolve().parent / "results"
FILES = ("chip_state.json", "chip_state.md")
TARGETS = {"program_ns_per_weight": 200.0, "read_ns_per_weight": 100.0, "load_s": 0.5, "device_bytes_per_weight": 8.0}
AGES_S = [3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0, 365 * 86400.0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_CPU: dict[int, float] = {}


def _timed(fn, *args, **kwargs):
    """(result, wall s); the process CPU time of the call is recorded in ``_CPU[id(result)]``."""
    c, t = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    wall = time.perf_counter() - t
    _CPU[id(out)] = time.process_time() - c
    return out, wall


def _profile(fn, *args, top: int = 12) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn(*args)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def _store_costs(out: Path, chip: ChipState, repeats: int) -> tuple[float, int, int, int, list[float]]:
    """Save ``chip`` into a scratch store under ``out/tmp`` and load it ``repeats`` times; returns
    the save time (s), the chip's own disk bytes, its per-device array bytes, the shared blob
    bytes and the load times (s). The scratch store is removed."""
    store_root = out / "tmp" / f"store-{os.getpid()}"
    shutil.rmtree(store_root, ignore_errors=True)
    store = ChipStore(store_root)
    try:
        _, save_s = _timed(store.save, chip)
        own = store.disk_bytes("bench")
        manifest = store.read_manifest("bench")
        # Payload of the per-device arrays (G_prog deviation and ν, both devices of each pair).
        device_bytes = sum(
            int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize
            for key, e in manifest["arrays"].items()
            if key.rsplit("/", 1)[1] in ("dg_us", "nu")
        )
        shared = sum(p.stat().st_size for p in store.blobs_dir.iterdir())
        load_times = []
        for _ in range(repeats):
            loaded, t = _timed(store.load, "bench")
            load_times.append(t)
        assert loaded.layers[0].dg_us.tobytes() == chip.layers[0].dg_us.tobytes()
    finally:
        shutil.rmtree(store_root, ignore_errors=True)
        try:
            (out / "tmp").rmdir()
        except OSError:
            pass
    return save_s, own, device_bytes, shared, load_times


def _machine(load_before: tuple[float, float, float]) -> dict:
    """The machine, with the load averages before the run and now."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "loadavg_1_5_15_before": [round(v, 2) for v in load_before],
        "loadavg_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5, help="programming and load repetitions (median)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of program and read")
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    args.out = outputs.output_dir("chip_state", RESULTS, args.out, args.replace, FILES)

    rows, cols = args.rows, args.cols
    n = rows * cols
    weight = np.clip(np.random.default_rng(0).standard_normal((rows, cols)), -2.5, 2.5).astype(np.float32)
    spec = [LayerSpec("fc", weight, input_range=1.0)]
    profile = get_profile("pcm")

    program([LayerSpec("warm", weight[:64, :64])], profile, seed=0)  # imports, allocator warm-up
    load_before = os.getloadavg()
    prog_times, prog_cpu, chip = [], [], None
    for rep in range(args.repeats):
        chip, t = _timed(program, spec, profile, seed=rep + 1, chip_id="bench")
        prog_times.append(t)
        prog_cpu.append(_CPU.pop(id(chip)))

    read_times, read_cpu = [], []
    for k, age in enumerate(AGES_S):
        r, t = _timed(read, chip, age, k)
        read_times.append(t)
        read_cpu.append(_CPU.pop(id(r)))
        del r

    save_s, own, device_bytes, shared, load_times = _store_costs(args.out, chip, args.repeats)

    result = {
        "benchmark": "chip_state",
        "command": "python -m bench.chip_state " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(load_before),
        "model": {
            "layers": 1,
            "rows": rows,
            "cols": cols,
            "weights": n,
            "devices": 2 * n,
            "tiles": len(chip.layers[0].tiles),
            "profile": "pcm",
        },
        "program_s": prog_times,
        "program_ns_per_weight": statistics.median(prog_times) / n * 1e9,
        "program_ns_per_weight_min": min(prog_times) / n * 1e9,
        "program_cpu_s": prog_cpu,
        "read_ages_s": AGES_S,
        "read_s": read_times,
        "read_ns_per_weight": statistics.median(read_times) / n * 1e9,
        "read_ns_per_weight_min": min(read_times) / n * 1e9,
        "read_cpu_s": read_cpu,
        "save_s": save_s,
        "save_ns_per_weight": save_s / n * 1e9,
        "device_bytes": device_bytes,
        "device_bytes_per_weight": device_bytes / n,
        "disk_bytes_chip": own,
        "disk_bytes_per_weight": own / n,
        "disk_bytes_shared_blobs": shared,
        "disk_bytes_per_weight_with_shared": (own + shared) / n,
        "load_s_all": load_times,
        "load_s": statistics.median(load_times),
        "targets": TARGETS,
    }
    result["pass"] = {k: result[k] <= v for k, v in TARGETS.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chip_state.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "chip_state.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / 'chip_state.json'} and chip_state.md")
    if args.profile:
        print("== program\n" + _profile(program, spec, profile, 99))
        print("== read\n" + _profile(read, chip, 12345.0, 99))
    return result


def markdown(r: dict) -> str:
    m = r["machine"]
    ok = {True: "pass", False: "**FAIL**"}
    lines = [
        "# Chip-state benchmark",
        "",
        f"Model: one {r['model']['rows']}×{r['model']['cols']} layer = {r['model']['weights']:,} weights "
        f"({r['model']['devices']:,} devices, {r['model']['tiles']} tiles), profile `pcm`.",
        "",
        "| metric | result | target | |",
        "|---|---:|---:|---|",
        f"| program (median; min {r['program_ns_per_weight_min']:.0f}) | {r['program_ns_per_weight']:.1f} ns/weight | ≤ {r['targets']['program_ns_per_weight']:.0f} | "
        f"{ok[r['pass']['program_ns_per_weight']]} |",
        f"| read-out at a new age (median of {len(r['read_s'])} ages; min {r['read_ns_per_weight_min']:.0f}) | "
        f"{r['read_ns_per_weight']:.1f} ns/weight | "
        f"≤ {r['targets']['read_ns_per_weight']:.0f} | {ok[r['pass']['read_ns_per_weight']]} |",
        f"| disk, the two devices (G deviation + ν, fp16) | {r['device_bytes_per_weight']:.4f} B/weight | "
        f"≤ {r['targets']['device_bytes_per_weight']:.0f} | {ok[r['pass']['device_bytes_per_weight']]} |",
        f"| disk, chip's own files (+ .npy headers, GDC baselines, manifest) | {r['disk_bytes_per_weight']:.4f} B/weight "
        f"| — | |",
        f"| disk, incl. shared target-weight blob | {r['disk_bytes_per_weight_with_shared']:.4f} B/weight | — | |",
        f"| load (verified, warm page cache) | {r['load_s']:.3f} s | ≤ {r['targets']['load_s']} | "
        f"{ok[r['pass']['load_s']]} |",
        f"| save (atomic, fsynced) | {r['save_s']:.3f} s ({r['save_ns_per_weight']:.0f} ns/weight) | — | |",
        "",
        "The disk budget (DESIGN §4) is 8 bytes per weight for the two devices of a pair; the chip's own",
        "files add .npy headers, per-tile GDC baselines and the manifest on top (the fraction above 8.0).",
        "The shared blob holds the float32 target weights once per model, however many chips use it.",
        "Timings are wall-clock on a shared machine; program/load are medians of the repeats, read-out",
        "the median over distinct ages (each a full read-out: chipsim has no read-out cache).",
        "",
        f"Raw times: program {', '.join(f'{t:.3f}' for t in r['program_s'])} s; "
        f"read {', '.join(f'{t:.3f}' for t in r['read_s'])} s; load {', '.join(f'{t:.3f}' for t in r['load_s_all'])} s. "
        f"Process CPU time: program {', '.join(f'{t:.3f}' for t in r['program_cpu_s'])} s; "
        f"read {', '.join(f'{t:.3f}' for t in r['read_cpu_s'])} s.",
        "",
        f"Command: `{r['command'].strip()}` · date {r['date']} · machine: nproc {m['nproc']}, {m['cpu']}, "
        f"Python {m['python']}, numpy {m['numpy']}, {m['platform']}; load average (1/5/15 min) "
        f"{m['loadavg_1_5_15_before']} before, {m['loadavg_1_5_15_after']} after (a shared machine: other "
        "jobs ran alongside).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
