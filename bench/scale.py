"""Scale (issue 13 "Scale", issue 20 findings 7-8): programming time and peak memory, first request
at a new age, and analog/digital throughput, for resnet18 and a large MLP.

    python -m bench.scale [--mlp-widths 1118 3536] [--rounds 5] [--max-peak-gb 18] [--replace]

Each model runs in its own fresh process (its peak RSS is its own), reading the ONNX file the
parent wrote (torch is never imported there):

- programming on 'pcm': seconds per weight (target <= 200 ns/weight) and the process's peak RSS
  (``VmHWM``) during programming next to the chip's size on disk, saved with ``ChipStore`` into a
  temporary folder (target: peak <= 3x the chip's own files; the whole store, with the model's
  blobs, is reported too);
- the first request at a new age (1 day; batch 1): building the serving runtime and the first
  inference, then a second new age (1 year) on the built runtime, and the peak RSS of that step
  (``VmHWM`` reset through ``/proc/self/clear_refs`` after programming), in bytes per analog
  weight over the RSS before programming (target <= 40 B/weight), and over the RSS just before
  the read-out (the chip programmed: what ``service.memory.BYTES_PER_WEIGHT`` estimates), with the weight binding the
  runtime chose (``initializers`` up to ``chipsim.runtime.INITIALIZERS_MAX_BYTES``, else ``inputs``);
- throughput at batch 1 and 8, 1 thread each: the chip on 'pcm' at a fixed age (fresh per-MVM noise,
  read-out cached: the runtime's cache is made large enough for one read-out whatever the model)
  vs onnxruntime on the original model, interleaved A,B,A,B in one
  process over ``--rounds`` rounds; median and range of samples/s.

The MLP (8 MatMul+Relu layers of width×width, random weights: 10.0M and 100.0M weights by default)
runs at growing widths; a width whose
peak RSS, extrapolated linearly in weights from the smaller ones, would exceed ``--max-peak-gb`` is
not run and the extrapolation is reported instead. Models above ``--first-age-only-above``
weights (default 200M) stop after the first new age: the second age and the digital
throughput session would hold a second copy of the weights, which a 24 GB host cannot give
a 500M-weight model; their guard extrapolates the first-age peak, not the process peak.

An MLP above ``--archive-above`` weights (default 300M) is saved with its weights as external
data in a ``.tar`` and read as the service reads such an upload
(:func:`chipsim.compiler.archive.model_from_archive`), its unpacking timed and its peak RSS
reported before programming's.

Results: bench/results/scale.{json,md} (with ``--replace``; else a new folder under runs/scale/);
``--merge`` keeps the rows already there for models this run does not measure (each row says
which command measured it and when), e.g. ``--replace --merge --mlp-widths`` reruns resnet18 alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import machine, output_dir, proc_status_bytes, write
from bench.scale_models import MLP_LAYERS, mlp, mlp_archive, resnet18
from bench.scale_report import TARGET_NS_PER_WEIGHT, TARGET_PEAK_OVER_DISK, markdown, merged_models
from models import outputs

NAME = "scale"
DAY_S = 86400.0
YEAR_S = 365.25 * DAY_S


def _hwm_bytes() -> int:
    return proc_status_bytes("VmHWM")


def _rss_bytes() -> int:
    return proc_status_bytes("VmRSS")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _rate(fn, batch: int, min_s: float) -> float:
    """Samples per second of ``fn`` (called at least once, until ``min_s`` elapsed)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= min_s:
            return n * batch / el


def _throughput(rt, model: bytes, shape: list[int], rng: np.random.Generator, rounds: int, min_s: float) -> dict:
    """Samples/s of the chip (``rt``, at 1 year) and of the digital model under onnxruntime, at
    batch 1 and 8, interleaved over ``rounds``; the ratios with their median and range."""
    import onnxruntime as ort

    from chipsim.ort_session import session_options

    digital = ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])
    name = digital.get_inputs()[0].name
    ratios: dict[str, dict] = {}
    for batch in (1, 8):
        x = rng.standard_normal([batch, *shape]).astype(np.float32)
        rt.run(x, YEAR_S)  # warm-up: shapes of this batch
        digital.run(None, {name: x})
        analog, dig = [], []
        for _ in range(rounds):
            analog.append(_rate(lambda x=x: rt.run(x, YEAR_S), batch, min_s))
            dig.append(_rate(lambda x=x: digital.run(None, {name: x}), batch, min_s))
        r = [a / d for a, d in zip(analog, dig, strict=True)]
        ratios[str(batch)] = {
            "analog_samples_per_s": analog,
            "digital_samples_per_s": dig,
            "ratio": r,
            "ratio_median": statistics.median(r),
            "ratio_range": [min(r), max(r)],
        }
    return ratios


def child(path: Path, shape: list[int], rounds: int, min_s: float, first_age_only: bool = False) -> dict:
    """Everything measured on one model, in this fresh process (``first_age_only``: stop after
    the first request at a new age)."""
    from chipsim import get_profile, heap
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime
    from chipsim.store import ChipStore

    heap.limit_retention()  # as the service does at start
    model, unpacked = _read_model(path)
    rss_before = _rss_bytes()
    t0, cpu0 = time.perf_counter(), time.process_time()
    chip = program_onnx(model, get_profile("pcm"), 0)
    program_s, program_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    peak_program = _hwm_bytes()
    weights = chip.n_weights
    with tempfile.TemporaryDirectory() as tmp:
        with ChipStore(tmp) as store:
            t0 = time.perf_counter()
            store.save(chip)
            save_s = time.perf_counter() - t0
            chip_bytes = store.disk_bytes(chip.chip_id)
        store_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    reset = _reset_hwm()
    rss_before_readout = _rss_bytes()  # what the service's memory guard sees as resident
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal([1, *shape]).astype(np.float32)
    t0 = time.perf_counter()
    # one cached read-out (the one being served), sized to fit it whatever the model
    rt = ChipRuntime(chip, threads=1, cache_entries=1, cache_bytes=1 << 40)
    runtime_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rt.run(x1, DAY_S)
    first_day_s = time.perf_counter() - t0
    peak_first_age = _hwm_bytes() if reset else None
    first = {
        "weights": weights,
        "onnx_bytes": len(model),
        **unpacked,
        "rss_before_program_bytes": rss_before,
        "program_s": program_s,
        "ns_per_weight": program_s / weights * 1e9,
        "cpu_ns_per_weight": program_cpu_s / weights * 1e9,
        "peak_rss_program_bytes": peak_program,
        "save_s": save_s,
        "chip_disk_bytes": chip_bytes,
        "store_disk_bytes": store_bytes,
        "peak_over_disk": peak_program / store_bytes,
        "peak_over_chip_files": peak_program / chip_bytes,
        "binding": rt.binding,
        "runtime_build_s": runtime_s,
        "first_request_new_age_s": first_day_s,
        "peak_rss_first_new_age_bytes": peak_first_age,
        "rss_before_first_new_age_bytes": rss_before_readout,
    }
    if first_age_only:
        return {**first, "first_age_only": True, "peak_rss_process_bytes": _hwm_bytes(), "throughput": {}}
    t0 = time.perf_counter()
    rt.run(x1, YEAR_S)
    first_year_s = time.perf_counter() - t0
    peak_first = _hwm_bytes() if reset else None
    t0 = time.perf_counter()
    rt.run(x1, YEAR_S)
    cached_s = time.perf_counter() - t0

    ratios = _throughput(rt, model, shape, rng, rounds, min_s)
    return {
        **first,
        "second_new_age_s": first_year_s,
        "cached_age_request_s": cached_s,
        "peak_rss_first_requests_bytes": peak_first,
        "peak_rss_process_bytes": _hwm_bytes() if not reset else max(peak_program, peak_first or 0),
        "throughput": ratios,
    }


def _read_model(path: Path) -> tuple[bytes, dict]:
    """The model's ONNX bytes, and for a ``.tar`` upload (external data) the seconds and peak RSS
    of :func:`~chipsim.compiler.archive.model_from_archive` (the service's path for it), after which
    the peak is reset so that programming's own is measured."""
    if path.suffix != ".tar":
        return path.read_bytes(), {}
    from chipsim.compiler import MAX_MODEL_BYTES
    from chipsim.compiler.archive import ArchiveLimits, model_from_archive

    data = path.read_bytes()
    t0 = time.perf_counter()
    model = model_from_archive(data, ArchiveLimits(max_bytes=MAX_MODEL_BYTES))
    archive_s = time.perf_counter() - t0
    out = {"archive_bytes": len(data), "archive_s": archive_s, "peak_rss_archive_bytes": _hwm_bytes()}
    del data
    _reset_hwm()
    return model, out


def run_child(
    label: str, save: Callable[[Path], None], suffix: str, shape: list[int], args, first_age_only: bool = False
) -> dict:
    """Measure one model in a fresh process; ``save(path)`` writes it to a ``model{suffix}`` file
    (``.onnx``, or ``.tar`` for an archive with external data), so that the parent holds none of
    it while the child runs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{suffix}"
        save(path)
        cmd = [sys.executable, "-m", "bench.scale", "--rounds", str(args.rounds), "--min-s", str(args.min_s)]
        cmd += ["--first-age-only"] if first_age_only else []
        cmd += ["--child", str(path), *map(str, shape)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{label}: child failed ({res.returncode}):\n{res.stderr[-4000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["model"] = label
    print(json.dumps({k: v for k, v in out.items() if k != "throughput"}), flush=True)
    for b, t in out["throughput"].items():
        print(f"  batch {b}: analog/digital median {t['ratio_median']:.3f} range {t['ratio_range']}", flush=True)
    return out


def _writer(build: Callable[[], bytes]) -> Callable[[Path], None]:
    """Write the ONNX bytes ``build()`` returns to a path (dropped once written)."""
    return lambda path: path.write_bytes(build())


def _predict(done: list[dict], weights: int, key: str = "peak_rss_process_bytes") -> float:
    """Peak RSS (bytes) at ``weights``: the line through the last two runs (proportional with one)."""
    pts = [(d["weights"], d[key]) for d in done]
    if len(pts) == 1:
        return pts[0][1] * weights / pts[0][0]
    (w0, p0), (w1, p1) = pts[-2], pts[-1]
    return p1 + (p1 - p0) / (w1 - w0) * (weights - w1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlp-widths", type=int, nargs="*", default=[1118, 3536])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-s", type=float, default=0.5, help="seconds per throughput sample (at least 1 call)")
    ap.add_argument("--max-peak-gb", type=float, default=18.0)
    ap.add_argument("--no-resnet", action="store_true")
    ap.add_argument(
        "--first-age-only-above",
        type=float,
        default=200e6,
        help="weights above which a model stops after its first new age (no throughput)",
    )
    ap.add_argument(
        "--archive-above",
        type=float,
        default=300e6,
        help="weights above which an MLP is saved with external data in a .tar and read through the archive path",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the results already in the output folder for models this run does not measure",
    )
    ap.add_argument("--first-age-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    outputs.add_arguments(ap, Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    if args.child:
        shape = [int(s) for s in args.child[1:]]
        res = child(Path(args.child[0]), shape, args.rounds, args.min_s, args.first_age_only)
        print(json.dumps(res))
        return
    out = output_dir(NAME, args)
    models, not_run = [], []
    if not args.no_resnet:
        models.append(run_child("resnet18 (224×224)", _writer(resnet18), ".onnx", [3, 224, 224], args))
    mlps: list[dict] = []
    for width in sorted(args.mlp_widths):
        weights = MLP_LAYERS * width * width
        first_only = weights > args.first_age_only_above
        if mlps:
            key = "peak_rss_first_new_age_bytes" if first_only else "peak_rss_process_bytes"
            pred = _predict(mlps, weights, key)
            if pred > args.max_peak_gb * 1e9:
                not_run.append({"width": width, "weights": weights, "predicted_peak_bytes": pred})
                print(f"MLP width {width}: predicted peak {pred / 2**30:.1f} GiB, not run", flush=True)
                continue
        if weights > args.archive_above:
            label, save, suffix = f"MLP {MLP_LAYERS}×{width}² (archive)", lambda p, w=width: mlp_archive(w, p), ".tar"
        else:
            label, save, suffix = f"MLP {MLP_LAYERS}×{width}²", _writer(lambda w=width: mlp(w)), ".onnx"
        mlps.append(run_child(label, save, suffix, [width], args, first_only))
    models += mlps
    info = machine()
    info["command"] = "python -m bench.scale " + " ".join(sys.argv[1:])
    for m in models:
        m["measured"] = {"date": info["date"], "command": info["command"]}
    if args.merge:
        models = merged_models(out / f"{NAME}.json", models)
    data = {
        "machine": info,
        "rounds": args.rounds,
        "max_peak_gb": args.max_peak_gb,
        "first_age_only_above": args.first_age_only_above,
        "targets": {"ns_per_weight": TARGET_NS_PER_WEIGHT, "peak_over_disk": TARGET_PEAK_OVER_DISK},
        "models": models,
        "not_run": not_run,
    }
    if mlps:
        data["mlp_peak_extrapolation_bytes"] = {
            str(w): _predict(mlps, w) for w in (100_000_000, 500_000_000) if len(mlps) >= 1
        }
    for p in write(NAME, data, markdown(data), out):
        print(p)


if __name__ == "__main__":
    main()
