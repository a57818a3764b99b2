"""What the compiler's op coverage costs: programming a depthwise CNN, and unrolled vs Scan
recurrences.

    python -m bench.compiler_ops mobilenet [--model m.onnx] [--threads 1] [--no-write]
    python -m bench.compiler_ops lstm [--steps 28] [--threads 1] [--repeats 15] [--no-write]

``mobilenet``: torchvision's MobileNetV2 architecture (plain torch, random weights, 224×224,
``bench/onnx_exports.mobilenet_v2``; or ``--model``) programmed on ``pcm``: analog layers, tiles,
devices, ``program_onnx`` time, runtime build and the first inference at 1 d. Runs on any
checkout with ``--model`` (for a before/after comparison: ``PYTHONPATH=<old checkout> python
bench/compiler_ops.py mobilenet --model m.onnx --no-write``).

``lstm``: a 28-step ``nn.LSTM(28, 128)`` + ``Linear(128, 10)`` at batch 64 (the row-by-row
MNIST shape), compiled unrolled and as a Scan, each on ``pcm`` (full periphery) and ``ideal``:
seconds per inference, interleaved A, B, A, B in one process; median and range.
Results: bench/results/compiler_ops.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from bench.common import RESULTS, machine, write


def mobilenet(args) -> dict:
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    if args.model:
        model = Path(args.model).read_bytes()
    else:
        import torch

        from bench import onnx_exports as om

        torch.set_num_threads(args.threads)
        model = om.export(om.mobilenet_v2(), torch.zeros(1, 3, 224, 224))
    t0 = time.perf_counter()
    chip = program_onnx(model, get_profile("pcm"), seed=0)
    t_program = time.perf_counter() - t0
    t0 = time.perf_counter()
    rt = ChipRuntime(chip, threads=args.threads)
    t_build = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    t0 = time.perf_counter()
    rt.run(x, age_s=86400.0, seed=0)
    t_first = time.perf_counter() - t0
    return {
        "model": "mobilenet_v2 (224×224, random weights)",
        "analog_layers": len(chip.layers),
        "tiles": sum(len(layer.tiles) for layer in chip.layers),
        "devices": chip.n_devices,
        "program_s": t_program,
        "runtime_build_s": t_build,
        "first_inference_1d_s": t_first,
    }


def lstm(args) -> dict:
    import torch

    from bench import onnx_exports as om
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from chipsim.compiler.rewriters import recurrent
    from chipsim.runtime import ChipRuntime

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    class RowLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(28, 128, batch_first=True)
            self.head = torch.nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    x = np.random.default_rng(0).standard_normal((64, args.steps, 28)).astype(np.float32)
    model = om.export(RowLSTM(), torch.from_numpy(x))
    out: dict = {"model": f"LSTM(28→128) + Linear(128→10), {args.steps} steps, batch 64", "threads": args.threads}
    for profile in ("pcm", "ideal"):
        runtimes = {}
        saved = recurrent.UNROLL_MAX_STEPS
        try:
            for form, limit in (("unrolled", 10**6), ("scan", 0)):
                recurrent.UNROLL_MAX_STEPS = limit
                chip = program_onnx(model, get_profile(profile), seed=0)
                runtimes[form] = ChipRuntime(chip, threads=args.threads)
        finally:
            recurrent.UNROLL_MAX_STEPS = saved
        times: dict[str, list[float]] = {k: [] for k in runtimes}
        first: dict[str, list[float]] = {k: [] for k in runtimes}
        nodes = {k: len(onnx.load_from_string(rt.graph).graph.node) for k, rt in runtimes.items()}
        for age in (1.0, 3600.0, 86400.0):  # a new age: read-out and (initializers binding) session build
            for form, rt in runtimes.items():
                t0 = time.perf_counter()
                rt.run(x, age_s=age, seed=0)
                first[form].append(time.perf_counter() - t0)
        for _ in range(args.repeats):
            for form, rt in runtimes.items():  # interleaved A, B, A, B
                t0 = time.perf_counter()
                rt.run(x, age_s=86400.0, seed=0)
                times[form].append(time.perf_counter() - t0)
        out[profile] = {
            form: {
                "median_s": statistics.median(v),
                "min_s": min(v),
                "max_s": max(v),
                "n": len(v),
                "new_age_median_s": statistics.median(first[form]),
                "graph_nodes": nodes[form],
            }
            for form, v in times.items()
        }
        # Paired ratios of the interleaved runs; 95 % CI of their median by bootstrap (fixed seed).
        ratios = np.array(times["scan"]) / np.array(times["unrolled"])
        boot = np.median(np.random.default_rng(0).choice(ratios, (2000, ratios.size)), axis=1)
        out[profile]["scan_over_unrolled"] = float(np.median(ratios))
        out[profile]["scan_over_unrolled_ci95"] = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
    return out


def markdown(results: dict) -> str:
    lines = ["# Compiler op coverage", "", f"Machine: {json.dumps(results['machine'])}", ""]
    if "mobilenet" in results:
        m = results["mobilenet"]
        lines += [
            "## MobileNetV2 on `pcm`",
            "",
            "| analog layers | tiles | devices | program_onnx (s) | runtime build (s) | first inference at 1 d (s) |",
            "|---|---|---|---|---|---|",
            f"| {m['analog_layers']} | {m['tiles']} | {m['devices']} | {m['program_s']:.2f} | "
            f"{m['runtime_build_s']:.2f} | {m['first_inference_1d_s']:.2f} |",
            "",
        ]
    for key in [k for k in results if k.startswith("lstm")]:
        r = results[key]
        lines += [
            f"## {r['model']}: time per inference, median [min, max] of {r['pcm']['scan']['n']} interleaved runs",
            "",
            "| profile | unrolled | Scan | Scan / unrolled, median of paired runs [95 % CI] "
            "| first request at a new age: unrolled, Scan "
            "| graph nodes: unrolled, Scan |",
            "|---|---|---|---|---|---|",
        ]
        for profile in ("pcm", "ideal"):
            p = r[profile]
            cell = lambda f: f"{p[f]['median_s'] * 1e3:.1f} ms [{p[f]['min_s'] * 1e3:.1f}, {p[f]['max_s'] * 1e3:.1f}]"  # noqa: E731
            ci = p["scan_over_unrolled_ci95"]
            lines.append(
                f"| {profile} | {cell('unrolled')} | {cell('scan')} | {p['scan_over_unrolled']:.3f} "
                f"[{ci[0]:.3f}, {ci[1]:.3f}] | "
                f"{p['unrolled']['new_age_median_s'] * 1e3:.0f} ms, {p['scan']['new_age_median_s'] * 1e3:.0f} ms "
                f"| {p['unrolled']['graph_nodes']}, {p['scan']['graph_nodes']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["mobilenet", "lstm"])
    ap.add_argument("--model", help="an ONNX file to program instead of the exported MobileNetV2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=28, help="lstm: sequence length")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    result = mobilenet(args) if args.what == "mobilenet" else lstm(args)
    print(json.dumps(result, indent=2))
    if args.no_write:
        return
    path = RESULTS / "compiler_ops.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.what if args.what == "mobilenet" or args.steps == 28 else f"lstm-{args.steps}"] = result
    results["machine"] = machine()
    write("compiler_ops", results, markdown(results))


if __name__ == "__main__":
    sys.exit(main())
