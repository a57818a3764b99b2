"""Throughput of the compiled analog model vs the original model in plain onnxruntime.

    python -m bench.runtime [--threads 2] [--seconds 2]

For each zoo model (or a digits-sized CNN exported on the fly when the zoo is absent): samples/s
at batch 1 and 64 for the digital model and for the chip at a fixed, cached age, with the full
``pcm`` periphery and with weight effects only (drift, programming and read noise, faults; ideal
DAC/ADC, no IR drop, no per-MVM noise). Also the cost of the first request at a new age
(read-out + binding). Same onnxruntime thread settings for both. Results: bench/results/runtime.{json,md}.

The "4-product ceiling" column runs the original model with every analog layer doing the four
matrix products the DESIGN §3.3 periphery needs per tile and nothing else (a free periphery): no
exact compilation into standard ONNX ops can beat it, so it says how far a target is reachable.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import machine, write
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.runtime import ChipRuntime

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
TARGETS = {"pcm": 0.5, "weights-only": 0.8}  # analog/digital at batch 64 (issue 8)


def weights_only_profile():
    return get_profile("pcm", ir_drop=0.0, w_noise=0.0, out_noise=0.0, in_clip=False, in_levels=0,
                       out_levels=0, out_bound=0.0)


def _models() -> list[tuple[str, bytes, np.ndarray]]:
    out = []
    for name in ("mlp-hwa", "cnn-hwa", "transformer-hwa"):
        path = ZOO / f"{name}.onnx"
        if path.exists():
            x = np.load(ZOO / f"{name}.eval.npz")["x"].astype(np.float32)
            out.append((name, path.read_bytes(), x))
    if not out:  # no zoo yet: a digits-sized CNN with random weights
        import torch

        from tests.onnx_models import export

        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32 * 16, 64),
            torch.nn.ReLU(), torch.nn.Linear(64, 10))
        x = np.random.default_rng(0).uniform(0, 1, (256, 1, 8, 8)).astype(np.float32)
        out.append(("random-cnn", export(net, torch.from_numpy(x[:2])), x))
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
                m.graph.initializer.append(numpy_helper.from_array((w * (1 + 1e-3 * i)).astype(w.dtype), extra.input[1]))
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
        consts = [numpy_helper.from_array(np.array([v], np.int64), f"{out}/ceiling_{i}") for i, v in
                  enumerate((0, n, axis))]
        m.graph.initializer.extend(consts)
        nodes.append(helper.make_node("Slice", [wide, *(c.name for c in consts)], [out]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m.SerializeToString()


def _ceiling_ratio(model: bytes, opts, in_name: str, x: np.ndarray, digital_sps: float, seconds: float) -> float:
    """Best speed of the two :func:`product_ceiling` forms relative to the digital model."""
    best = 0.0
    for form in ("wide", "separate"):
        sess = ort.InferenceSession(product_ceiling(model, form=form), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs() if "/ceiling_" not in o.name]
        best = max(best, _rate(lambda s=sess, n=names: s.run(n, {in_name: x}), x.shape[0], seconds) / digital_sps)
    return best


def _rate(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    rows = []
    for name, model, data in _models():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        digital = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        in_name = digital.get_inputs()[0].name
        ceiling_rate = {}
        for pname, profile in (("pcm", get_profile("pcm")), ("weights-only", weights_only_profile())):
          chip = program_onnx(model, profile, seed=0, calibration=data)
          for binding in ChipRuntime.BINDINGS:
            rt = ChipRuntime(chip, threads=args.threads, binding=binding)
            for batch in (1, 64):
                x = np.ascontiguousarray(np.resize(data, (batch, *data.shape[1:])))
                d = _rate(lambda: digital.run(None, {in_name: x}), batch, args.seconds)
                if batch not in ceiling_rate:
                    ceiling_rate[batch] = _ceiling_ratio(model, opts, in_name, x, d, args.seconds)
                a = _rate(lambda: rt.run(x, age_s=86400.0), batch, args.seconds)
                first = []
                for i in range(5):  # a new age each time: read-out + binding + one inference
                    t0 = time.perf_counter()
                    rt.run(x, age_s=1000.0 + i + 10 * batch)
                    first.append(time.perf_counter() - t0)
                rows.append(dict(model=name, profile=pname, binding=binding, batch=batch, digital_sps=d, analog_sps=a,
                                 ratio=a / d, ceiling=ceiling_rate[batch], first_request_ms=1e3 * float(np.median(first)),
                                 weights=chip.n_weights))
                print(f"{name:16s} {pname:13s} {binding:12s} b={batch:3d} digital {d:10.0f}/s analog {a:10.0f}/s "
                      f"ratio {a / d:5.2f} ceiling {ceiling_rate[batch]:4.2f} first@new age {rows[-1]['first_request_ms']:.1f} ms")
    info = machine()
    lines = [
        "# Runtime throughput: chip vs plain onnxruntime", "",
        f"`python -m bench.runtime --threads {args.threads} --seconds {args.seconds}` · {info['date']} · "
        f"{info['cpus']} CPUs · onnxruntime {info['onnxruntime']}", "",
        "| model | weights | profile | binding | batch | digital samples/s | analog samples/s | analog/digital | target (b=64) "
        "| 4-product ceiling | first request at a new age (ms) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tgt = f"≥ {TARGETS[r['profile']]}" + (" ✅" if r["ratio"] >= TARGETS[r["profile"]] else " ❌") if r["batch"] == 64 else ""
        lines.append(f"| {r['model']} | {r['weights']} | {r['profile']} | {r['binding']} | {r['batch']} | {r['digital_sps']:.0f} | "
                     f"{r['analog_sps']:.0f} | {r['ratio']:.2f} | {tgt} | {r['ceiling']:.2f} | {r['first_request_ms']:.1f} |")
    write("runtime", {"machine": info, "threads": args.threads, "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
