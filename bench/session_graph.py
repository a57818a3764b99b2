"""A/B of the session-graph rewrites (:mod:`chipsim.compiler.session_graph`): the same chip run
with the rewrites (the default) and with its compiled graph as stored, on both weight bindings.

    python -m bench.session_graph [--models resnet18 mobilenet_v2 cnn-hwa] [--rounds 5]
                                  [--seconds 0.3] [--batches 1 64] [--replace]

resnet18 and mobilenet_v2 at 32×32 (bench/architectures.py, random weights; their last stages
run on 2×2 and 1×1 pixels) and the zoo's cnn-hwa (digits, 8×8; nearly a control: no tensor of
its ends in a dimension of 1 and no Conv output is under 5 pixels; 4 per-channel inputs on 4×4
pixels are expanded); ``pcm`` at
1 d, lean lowering, 1 thread, cached read-out, per-MVM noise drawn per run. Both runtimes of a
binding share one chip; they and the digital model run interleaved in one process, round by
round (the order reversed every other round); a ratio is taken within a round (CPU time), the
report gives median [min–max] over rounds.
``embedded``: weights as initializers; ``inputs``: weights fed per run (what a chip over
``AGEDCHIP_INITIALIZERS_MAX_BYTES`` gets, resnet18's default).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from unittest import mock

import numpy as np

import chipsim.runtime as runtime_module
from bench.common import (
    BINDINGS,
    RESULTS,
    ab_cells,
    ab_summary,
    add_ab_arguments,
    fmt_median_range,
    interleaved_cpu_times,
    machine,
    output_dir,
    write,
)
from bench.runtime import AGE_S, _model
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.compiler.session_graph import SessionGraph, session_graph
from chipsim.ort_session import cpu_session
from chipsim.runtime import ChipRuntime
from models import outputs

NAME = "session_graph"
MODELS = ("resnet18", "mobilenet_v2", "cnn-hwa")


def _bench_model(name: str) -> tuple[bytes, np.ndarray]:
    if name != "mobilenet_v2":
        return _model(name)
    import torch

    from bench.architectures import MobileNetV2
    from models.export import export_onnx

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    return export_onnx(MobileNetV2().eval(), torch.from_numpy(x[:2])).SerializeToString(), x


@contextmanager
def _as_stored():
    """Runtimes built (and first run) inside run the compiled graph without the rewrites."""

    def unchanged(graph, *, inputs_binding):  # noqa: ARG001 — the signature of session_graph
        import onnx

        return SessionGraph(onnx.load_from_string(graph) if isinstance(graph, bytes) else graph)

    with mock.patch.object(runtime_module, "session_graph", unchanged):
        yield


def _runtimes(model: bytes, x: np.ndarray) -> dict[str, ChipRuntime]:
    """(rewrites, binding) → runtime with its sessions built; one chip for all."""
    chip = program_onnx(model, get_profile("pcm"), seed=0, calibration=x[:64])
    out = {}
    for binding, limit in BINDINGS.items():
        out[f"rewritten-{binding}"] = rt = ChipRuntime(chip, threads=1, initializers_max_bytes=limit)
        rt.run(x[:1], age_s=AGE_S)
        with _as_stored():
            out[f"stored-{binding}"] = rt = ChipRuntime(chip, threads=1, initializers_max_bytes=limit)
            rt.run(x[:1], age_s=AGE_S)  # builds the session (per read-out, or the one of 'inputs')
    return out


def measure(name: str, batches, rounds: int, seconds: float) -> list[dict]:
    model, x = _bench_model(name)
    rts = _runtimes(model, x)
    rewrites = session_graph(rts["rewritten-inputs"].graph, inputs_binding=True)
    n_taps = len(rewrites.weight_taps)
    digital = cpu_session(model, 1)
    iname = digital.get_inputs()[0].name
    rows = []
    for b in batches:
        xb = x[:b]
        fns = {k: (lambda rt=rt: rt.run(xb, age_s=AGE_S)) for k, rt in rts.items()}
        fns["digital"] = lambda: digital.run(None, {iname: xb})
        times = interleaved_cpu_times(fns, rounds, seconds)
        for binding in BINDINGS:
            row = ab_summary(times, f"stored-{binding}", f"rewritten-{binding}")
            rewritten = n_taps if binding == "inputs" else 0
            rows.append(
                {"model": name, "batch": b, "binding": binding, "conv_weight_inputs_rewritten": rewritten, **row}
            )
            print(f"{name} batch {b} {binding}: speedup {fmt_median_range(rows[-1]['speedup'])}", flush=True)
    return rows


def markdown(rows: list[dict], info: dict, args) -> str:
    lines = [
        "# Session-graph rewrites: A/B",
        "",
        f"`python -m bench.session_graph --models {' '.join(args.models)} --rounds {args.rounds} --seconds "
        f"{args.seconds} --batches {' '.join(map(str, args.batches))}` · {info['date']} · {info['cpus']} CPUs · "
        f"onnxruntime {info['onnxruntime']} · `pcm`, 1 d, lean, 1 thread, cached read-out",
        "",
        "Speedup: the CPU time with the compiled graph as stored over that with the session-graph rewrites, "
        "per round; speed relative to the digital model (digital time / chip time), per round; median "
        "[min–max] over rounds. Conv weight inputs rewritten: tile products run as a batched MatMul "
        "(`inputs` binding only).",
        "",
        "| model | batch | binding | Conv weight inputs rewritten | speedup | chip/digital, as stored | "
        "chip/digital, rewritten | rewritten ms/batch | digital ms/batch |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['binding']} | {r['conv_weight_inputs_rewritten']} | " + ab_cells(r)
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    add_ab_arguments(ap)
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    out = output_dir(NAME, args)
    rows = [r for name in args.models for r in measure(name, args.batches, args.rounds, args.seconds)]
    info = machine()
    jpath, _ = write(NAME, {"machine": info, "rows": rows}, markdown(rows, info, args), out)
    print(f"results: {jpath.parent}")


if __name__ == "__main__":
    main()
