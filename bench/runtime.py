"""Throughput of the compiled analog model vs the original model in plain onnxruntime.

    python -m bench.runtime [--threads 2] [--seconds 2]

For each zoo model (or a digits-sized CNN exported on the fly when the zoo is absent): samples/s
at batch 1 and 64 for the digital model and for the chip at a fixed, cached age, with the full
``pcm`` periphery and with weight effects only (drift, programming and read noise, faults; ideal
DAC/ADC, no IR drop, no per-MVM noise). Also the cost of the first request at a new age
(read-out + binding). Same onnxruntime thread settings for both. Results: runtime.{json,md} in a new folder
runs/runtime/<time>/ (``--replace``: the committed bench/results/; models.outputs).

The "4-product ceiling" column runs the original model with every analog layer doing the four
matrix products the DESIGN §3.3 periphery needs per tile and nothing else (a free periphery): no
exact compilation into standard ONNX ops can beat it, so it says how far a target is reachable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import RESULTS, machine, output_dir, write
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.runtime import ChipRuntime
from models import outputs

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
TARGETS = {"pcm": 0.5, "weights-only": 0.8}  # analog/digital at batch 64 (issue 8)


def weights_only_profile():
    return get_profile(
        "pcm", ir_drop=0.0, w_noise=0.0, out_noise=0.0, in_clip=False, in_levels=0, out_levels=0, out_bound=0.0
    )


def _models() -> list[tuple[str, bytes, np.ndarray]]:
    out = []
    for name in ("mlp-hwa", "cnn-hwa", "transformer-hwa"):
        path = ZOO / f"{name}.onnx"
        if path.exists():
            x = np.load(ZOO / f"{name}.eval.npz")["x"].astype(np.float32)
            out.append((name, path.read_bytes(), x))
    if not out:  # no zoo yet: a digits-sized CNN with random weights
        import torch

        from models.export import export_onnx

        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 16, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )
        x = np.random.default_rng(0).uniform(0, 1, (256, 1, 8, 8)).astype(np.float32)
        out.append(("random-cnn", export_onnx(net, torch.from_numpy(x[:2])).SerializeToString(), x))
    return out


#: Matrix products per analog tile that the DESIGN §3.3 periphery needs, each as large as the
#: digital layer's one: x'@W, x'@(ramp⊙W) (IR drop), |x'|@|W| (IR drop a_i), x'²@|W| (noise σ).
PRODUCTS_PER_TILE = 4


def product_ceiling(model: bytes, k: int = PRODUCTS_PER_TILE, form: str = "wide") -> bytes:
    """The original model with every weight-bearing layer computing ``k`` products instead of one
    and nothing else: the cost of an analog model whose periphery were free. Its speed relative to
    the digital model bounds what any exact compilation of the periphery into standard ops can
    reach. Two forms, the bench keeps the faster: ``wide`` (the weights repeated k times along the
    outputs, one product of k·N columns, the first N kept by a Slice) and ``separate`` (k−1 extra
    nodes with their own weights, whose outputs are extra graph outputs that onnxruntime computes
    but the caller does not fetch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if form not in ("wide", "separate"):
        raise ValueError(f"form: expected 'wide' or 'separate', got {form!r}")
    m = onnx.load_from_string(model)
    inits = {t.name: t for t in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2 or node.input[1] not in inits:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(inits[node.input[1]])
        if form == "separate" or attrs.get("group", 1) > 1:  # repeating a grouped Conv's outputs regroups them
            nodes.append(node)
            for i in range(1, k):  # distinct weights, so no common-subexpression elimination
                extra = onnx.NodeProto()
                extra.CopyFrom(node)
                extra.name = f"{node.name}/ceiling_{i}"
                extra.input[1] = f"{node.input[1]}/ceiling_{i}"
                extra.output[0] = f"{node.output[0]}/ceiling_{i}"
                m.graph.initializer.append(
                    numpy_helper.from_array((w * (1 + 1e-3 * i)).astype(w.dtype), extra.input[1])
                )
                m.graph.output.append(helper.make_tensor_value_info(extra.output[0], TensorProto.FLOAT, None))
                nodes.append(extra)
            continue
        out_axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and attrs.get("transB", 0)) else 1
        n = w.shape[out_axis]
        # New initializers (never edit shared ones: exporters de-duplicate equal tensors).
        node.input[1] = f"{node.output[0]}/ceiling_w"
        m.graph.initializer.append(numpy_helper.from_array(np.concatenate([w] * k, axis=out_axis), node.input[1]))
        if len(node.input) > 2 and node.input[2] in inits:  # bias (Gemm C, Conv B)
            b = numpy_helper.to_array(inits[node.input[2]])
            if b.ndim >= 1 and b.shape[-1] == n:
                node.input[2] = f"{node.output[0]}/ceiling_b"
                m.graph.initializer.append(numpy_helper.from_array(np.concatenate([b] * k, axis=-1), node.input[2]))
        wide = node.output[0] + "/ceiling_wide"
        out = node.output[0]
        node.output[0] = wide
        nodes.append(node)
        axis = 1 if node.op_type == "Conv" else -1
        consts = [
            numpy_helper.from_array(np.array([v], np.int64), f"{out}/ceiling_{i}") for i, v in enumerate((0, n, axis))
        ]
        m.graph.initializer.extend(consts)
        nodes.append(helper.make_node("Slice", [wide, *(c.name for c in consts)], [out]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m.SerializeToString()


def _rate(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


BATCHES = (1, 64)


def _session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return opts


def _job(job: dict) -> list[dict]:
    """One measurement, run in its own process with no other onnxruntime session alive: sessions
    of earlier measurements (their thread pools) were seen to halve a rate at random on this
    2-core machine. Kinds: ``digital`` (the original model), ``ceiling`` (a
    :func:`product_ceiling` form) and ``chip`` (a profile and binding; also the cost of the first
    request at a new age). Rates at batch 1 and 64."""
    name, model, data = next(m for m in _models() if m[0] == job["model"])
    opts = _session_options(job["threads"])
    rows = []
    if job["kind"] in ("digital", "ceiling"):
        graph = model if job["kind"] == "digital" else product_ceiling(model, form=job["form"])
        sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        names = [o.name for o in sess.get_outputs() if "/ceiling_" not in o.name]
        for batch in BATCHES:
            x = np.ascontiguousarray(np.resize(data, (batch, *data.shape[1:])))
            _rate(lambda: sess.run(names, {in_name: x}), batch, 0.3)  # warm-up: arena and caches settle
            rows.append({"batch": batch, "sps": _rate(lambda: sess.run(names, {in_name: x}), batch, job["seconds"])})
        return rows
    profile = get_profile("pcm") if job["profile"] == "pcm" else weights_only_profile()
    chip = program_onnx(model, profile, seed=0, calibration=data)
    rt = ChipRuntime(chip, threads=job["threads"], binding=job["binding"])
    for batch in BATCHES:
        x = np.ascontiguousarray(np.resize(data, (batch, *data.shape[1:])))
        _rate(lambda: rt.run(x, age_s=86400.0), batch, 0.3)
        sps = _rate(lambda: rt.run(x, age_s=86400.0), batch, job["seconds"])
        first = []
        for i in range(5):  # a new age each time: read-out + binding + one inference
            t0 = time.perf_counter()
            rt.run(x, age_s=1000.0 + i + 10 * batch)
            first.append(time.perf_counter() - t0)
        rows.append(
            {"batch": batch, "sps": sps, "first_request_ms": 1e3 * float(np.median(first)), "weights": chip.n_weights}
        )
    return rows


def _run_job(job: dict) -> dict[int, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.runtime", "--job", json.dumps(job)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return {r["batch"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])}


def _best(runs: list[dict[int, dict]]) -> dict[int, dict]:
    """Per batch: the best rate of a job's runs, the median first-request cost, and the spread."""
    best = {}
    for batch in runs[0]:
        rates = [r[batch]["sps"] for r in runs]
        best[batch] = {**runs[0][batch], "sps": max(rates), "spread": (max(rates) - min(rates)) / max(rates)}
        if "first_request_ms" in runs[0][batch]:
            best[batch]["first_request_ms"] = float(np.median([r[batch]["first_request_ms"] for r in runs]))
    return best


def _jobs(threads: int, seconds: float) -> dict[tuple, dict]:
    """Every measurement, by key: digital, the two ceiling forms, and the chip per profile and binding."""
    jobs = {}
    for name, _, _ in _models():
        base = {"model": name, "threads": threads, "seconds": seconds}
        jobs[(name, "digital")] = {**base, "kind": "digital"}
        for form in ("wide", "separate"):
            jobs[(name, "ceiling", form)] = {**base, "kind": "ceiling", "form": form}
        for pname in ("pcm", "weights-only"):
            for binding in ChipRuntime.BINDINGS:
                jobs[(name, pname, binding)] = {**base, "kind": "chip", "profile": pname, "binding": binding}
    return jobs


def _rows(res: dict[tuple, dict]) -> list[dict]:
    """One table row per model, profile, binding and batch from the best rates ``res``; printed as made."""
    rows = []
    for name, _, _ in _models():
        digital = res[(name, "digital")]
        for pname in ("pcm", "weights-only"):
            for binding in ChipRuntime.BINDINGS:
                for batch in BATCHES:
                    d, a = digital[batch], res[(name, pname, binding)][batch]
                    ceiling = max(res[(name, "ceiling", form)][batch]["sps"] for form in ("wide", "separate"))
                    r = dict(
                        model=name,
                        profile=pname,
                        binding=binding,
                        batch=batch,
                        digital_sps=d["sps"],
                        analog_sps=a["sps"],
                        ratio=a["sps"] / d["sps"],
                        ceiling=ceiling / d["sps"],
                        digital_spread=d["spread"],
                        analog_spread=a["spread"],
                        first_request_ms=a["first_request_ms"],
                        weights=a["weights"],
                    )
                    rows.append(r)
                    print(
                        f"{name:16s} {pname:13s} {binding:12s} b={batch:3d} digital {d['sps']:10.0f}/s analog "
                        f"{a['sps']:10.0f}/s ratio {r['ratio']:5.2f} ceiling {r['ceiling']:4.2f} first@new age "
                        f"{r['first_request_ms']:.1f} ms (spread over runs: digital {100 * d['spread']:.0f} %, "
                        f"analog {100 * a['spread']:.0f} %)"
                    )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement (best rate kept)")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: one measurement, JSON rows on stdout
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.job:
        print(json.dumps(_job(json.loads(args.job))))
        return
    jobs = _jobs(args.threads, args.seconds)
    # Round robin over all jobs, `repeat` times, each in a fresh process; the best rate of a job is
    # kept. This machine shares its host: a slow spell lasts tens of seconds and halves every rate
    # measured in it, so a job's repeats are spread over the whole run.
    runs: dict[tuple, list] = {key: [] for key in jobs}
    for rep in range(args.repeat):
        for key, job in jobs.items():
            runs[key].append(_run_job(job))
        print(f"round {rep + 1}/{args.repeat} done", flush=True)
    rows = _rows({key: _best(r) for key, r in runs.items()})
    info = machine()
    lines = [
        "# Runtime throughput: chip vs plain onnxruntime",
        "",
        f"`python -m bench.runtime --threads {args.threads} --seconds {args.seconds} --repeat {args.repeat}` · "
        f"{info['date']} · "
        f"{info['cpus']} CPUs · onnxruntime {info['onnxruntime']} · each rate: the best of {args.repeat} fresh "
        "processes run round-robin over all configurations, each measured alone (this machine shares its host: "
        "the same measurement differs by up to 2× between runs)",
        "",
        "| model | weights | profile | binding | batch | digital samples/s | analog samples/s | analog/digital | target (b=64) "
        "| 4-product ceiling | first request at a new age (ms) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tgt = (
            f"≥ {TARGETS[r['profile']]}" + (" ✅" if r["ratio"] >= TARGETS[r["profile"]] else " ❌")
            if r["batch"] == 64
            else ""
        )
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['profile']} | {r['binding']} | {r['batch']} | {r['digital_sps']:.0f} | "
            f"{r['analog_sps']:.0f} | {r['ratio']:.2f} | {tgt} | {r['ceiling']:.2f} | {r['first_request_ms']:.1f} |"
        )
    for p in write(
        "runtime",
        {"machine": info, "threads": args.threads, "rows": rows},
        "\n".join(lines) + "\n",
        output_dir("runtime", args),
    ):
        print("wrote", p)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
