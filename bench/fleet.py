"""Fleet evaluation on 1 vs 2 workers, local processes and Ray: speed-up and overhead per task.

    python -m bench.fleet                       # 32 chips × 7 ages of cnn-hwa, 1 read-out, 3 repeats
    python -m bench.fleet --chips 4 --repeat 1  # a quick look

A fleet of ``--chips`` chips of the largest zoo CNN (``cnn-hwa``; the issue asks for the
Fashion-MNIST ResNet, which the zoo does not have yet) is programmed into a temporary store,
then evaluated at the 7 standard ages (chipsim.ages: 1 s, 1 h, 1 d, 1 w, 30 d, 1 y, 10 y), GDC
on and off, one task per chip, by four executors that are started and warmed (a few untimed
tasks each) before timing: local(1), local(2), ray(1), ray(2) (one local Ray cluster with 2
CPUs; "1 worker" = one task in flight). Repeats are interleaved (A, B, C, D, A, B, …) so that
load from other processes on this shared machine hits every configuration alike; the report
gives the median and range over repeats. Per configuration:

- ``wall_s``: the map() call, from first submit to last row;
- ``busy_s``: Σ over tasks of the time inside :func:`evaluate_task` (load + evaluate);
- ``overhead_per_task_ms`` = (workers × wall_s − busy_s) / tasks: dispatch, pickling, waiting
  and idle tails, per task;
- ``speedup`` (per executor, paired per repeat) = wall(1 worker) / wall(2 workers).

Every configuration must return the very rows of the first one (checked). Writes
fleet.json and fleet.md into runs/fleet/<time>/ (``--replace``: bench/results/).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, machine, result_files, write
from chipsim import ChipStore
from chipsim.ages import STANDARD_AGES_S
from chipsim.fleet import FleetEvalSpec, FleetSpec, FleetStore, LocalProcessExecutor, make_tasks, program_fleet
from chipsim.fleet.ray_executor import RayExecutor, ray_available
from models import outputs

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
AGES_S = list(STANDARD_AGES_S.values())  # 1 s, 1 h, 1 d, 1 w, 30 d, 1 y, 10 y


def med_range(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _start_executors(tasks: list, no_ray: bool) -> tuple[dict, dict[str, float]]:
    """Local executors with 1 and 2 workers (and Ray's, unless ``no_ray``), each warmed up;
    returns them by name and their start-up seconds."""
    executors, startup = {}, {}
    for w in (1, 2):
        t = time.perf_counter()
        ex = LocalProcessExecutor(workers=w)
        ex.warm_up()
        ex.map(tasks[: 2 * w])  # warm: each worker's imports, noise table and first session
        startup[f"local({w})"] = time.perf_counter() - t
        executors[f"local({w})"] = ex
    if not no_ray and ray_available():
        t = time.perf_counter()
        ray2 = RayExecutor(address="local", workers=2)
        ray2.start()
        ray2.map(tasks[:2])  # warm: Ray starts its worker processes on first use
        startup["ray(2)"] = time.perf_counter() - t
        ray1 = RayExecutor(address="local", workers=1)
        ray1.start()  # joins the cluster ray2 started (ray.is_initialized)
        ray1.map(tasks[:2])
        executors["ray(1)"], executors["ray(2)"] = ray1, ray2
    elif not no_ray:
        print("ray is not installed: local executors only (pip install -r requirements/ray.txt)")
    return executors, startup


def _interleaved_runs(executors: dict, tasks: list, repeat: int) -> dict[str, list[dict]]:
    """Every executor maps all tasks, interleaved, ``repeat`` times; asserts identical rows."""
    runs: dict[str, list[dict]] = {name: [] for name in executors}
    reference = None
    for rep in range(repeat):
        for name, ex in executors.items():
            t = time.perf_counter()
            rows = ex.map(tasks)
            wall = time.perf_counter() - t
            if reference is None:
                reference = rows
            assert rows == reference, f"{name} returned different rows"
            busy = sum(r.load_s + r.eval_s for r in ex.last_results)
            workers = ex.workers
            runs[name].append(
                {
                    "wall_s": wall,
                    "busy_s": busy,
                    "overhead_per_task_ms": (workers * wall - busy) / len(tasks) * 1e3,
                    "workers_seen": len({r.worker for r in ex.last_results}),
                }
            )
            print(
                f"repeat {rep + 1}/{repeat} {name:9s} wall {wall:6.1f} s  busy {busy:6.1f} s  "
                f"overhead/task {runs[name][-1]['overhead_per_task_ms']:7.1f} ms"
            )
    return runs


def _summarise(runs: dict[str, list[dict]], startup: dict[str, float]) -> tuple[dict, dict]:
    """Median [range] per executor, and the 1 → 2 worker speed-up per executor kind (paired repeats)."""
    summary = {}
    for name, rs in runs.items():
        summary[name] = {k: med_range([r[k] for r in rs]) for k in ("wall_s", "busy_s", "overhead_per_task_ms")}
        summary[name]["startup_s"] = startup.get(name)
    speedup = {}
    for kind in ("local", "ray"):
        if f"{kind}(1)" in runs:
            pairs = zip(runs[f"{kind}(1)"], runs[f"{kind}(2)"])
            speedup[kind] = med_range([a["wall_s"] / b["wall_s"] for a, b in pairs])
    return summary, speedup


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn-hwa")
    ap.add_argument("--chips", type=int, default=32)
    ap.add_argument("--ages", type=int, default=7, help="the first n of the standard ages 1 s … 10 y")
    ap.add_argument("--readouts", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true")
    outputs.add_arguments(ap, RESULTS)
    return ap.parse_args()


def main() -> None:
    args = _parse_args()
    out = outputs.output_dir("fleet", RESULTS, args.out, args.replace, result_files("fleet"))

    tmp = tempfile.TemporaryDirectory(prefix="bench-fleet-")
    store = ChipStore(Path(tmp.name) / "state")
    fleets = FleetStore(store)
    t0 = time.perf_counter()
    fleet = program_fleet(
        store,
        FleetSpec(fleet_id="bench", model_name=args.model, n_chips=args.chips, seed=1),
        (ZOO / f"{args.model}.onnx").read_bytes(),
        (ZOO / f"{args.model}.eval.npz").read_bytes(),
        fleets=fleets,
    )
    program_s = time.perf_counter() - t0
    spec = FleetEvalSpec.parse(
        {
            "ages_s": AGES_S[: args.ages],
            "readouts": args.readouts,
            "slo": {"metric": "normalised_accuracy", "threshold": 0.9},
        }
    )
    tasks = make_tasks(fleet, store.root, spec)
    print(
        f"programmed {args.chips} × {args.model} in {program_s:.1f} s; {len(tasks)} tasks of "
        f"{args.ages} ages × {args.readouts} read-out(s) × GDC on/off on {fleet.eval_samples} samples"
    )

    executors, startup = _start_executors(tasks, args.no_ray)
    load0 = os.getloadavg()
    runs = _interleaved_runs(executors, tasks, args.repeat)
    load1 = os.getloadavg()
    for ex in executors.values():  # ray(2) started the local cluster, so its close() stops it
        ex.close()
    tmp.cleanup()

    summary, speedup = _summarise(runs, startup)
    data = {
        "machine": machine(),
        "model": args.model,
        "chips": args.chips,
        "ages_s": spec.ages_s,
        "readouts": args.readouts,
        "samples": fleet.eval_samples,
        "tasks": len(tasks),
        "repeat": args.repeat,
        "program_s": program_s,
        "loadavg_1m_before_after": [load0[0], load1[0]],
        "runs": runs,
        "summary": summary,
        "speedup_1_to_2_workers": speedup,
        "rows_identical_across_executors": True,
    }
    md = [
        f"# Fleet evaluation: {args.chips} × {args.model}, {len(spec.ages_s)} ages, {args.readouts} read-out(s)\n",
        f"`{' '.join(['python -m bench.fleet', *os.sys.argv[1:]])}` — {data['machine']['date']}, "
        f"{data['machine']['cpus']} CPUs shared with other processes (1-min load average "
        f"{load0[0]:.1f} before, {load1[0]:.1f} after). {len(tasks)} tasks (one per chip, "
        f"{2 * len(spec.ages_s) * args.readouts} inferences of {fleet.eval_samples} samples each). Median "
        f"[range] over {args.repeat} interleaved repeats; rows identical across executors.\n",
        "| executor | wall s | busy s (Σ in tasks) | overhead per task ms | start-up s |",
        "|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        f = lambda d, p=1: f"{d['median']:.{p}f} [{d['min']:.{p}f}–{d['max']:.{p}f}]"  # noqa: E731
        st = "" if s["startup_s"] is None else f"{s['startup_s']:.1f}"
        md.append(f"| {name} | {f(s['wall_s'])} | {f(s['busy_s'])} | {f(s['overhead_per_task_ms'], 0)} | {st} |")
    md.append("")
    for kind, s in speedup.items():
        md.append(f"- speed-up 1 → 2 workers, {kind}: {s['median']:.2f}× [{s['min']:.2f}–{s['max']:.2f}]")
    write("fleet", data, "\n".join(md) + "\n", out)
    print("\n".join(md))


if __name__ == "__main__":
    main()
