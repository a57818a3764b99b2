"""Per-request cost of each candidate source of per-MVM noise (issue 14), interleaved in one process.

    python -m bench.mvm_noise [--rounds 7] [--requests 20] [--batch 64] [--threads 1] [--replace]

For the zoo CNN and transformer on the ``pcm`` profile (``initializers`` binding, a cached age),
one request = the noise of every tile for a batch + one onnxruntime run of the compiled graph.
Candidates, run A, B, C, … in turn within each round (so a slow spell of this shared machine
hits all of them alike), ``--requests`` requests each; per round and candidate the median
CPU time (``process_time``) and wall time per request; reported: the median over rounds and
the range (min–max) of the per-round medians, and per round the ratio to ``philox-thread``.

- ``zeros``: a preallocated all-zero feed — the analog graph alone (a floor, not a source);
- ``table``: the former source: one window of a shared 2^23-sample table at a random offset
  (zero copies; windows of different requests overlap, issue 14);
- ``sfc64-thread`` (chipsim's unseeded path, ``mvm_noise.thread_generator``), ``philox-thread``,
  ``pcg64-thread``: fresh draws (numpy's ziggurat) from one generator per thread, continuing
  from request to request;
- ``sfc64-keyed`` (chipsim's seeded path, ``mvm_noise.seeded_generator``: SFC64 from a
  SeedSequence of the request's key, creation included) and ``philox-keyed`` (Philox with the
  key set directly, counter (0, 0, chunk, tag));
- ``sfc64-q16-thread`` and ``sfc64-q16-keyed`` (chipsim's default sampler ``fresh-q16``): the
  same generators, 16 raw bits per draw into a table of 2^16 equiprobable bins of N(0, 1)
  (``mvm_noise.standard_normal``); the others use numpy's ziggurat (``fresh``);
- ``ort-randomnormallike``: noise drawn inside the graph (onnxruntime's RandomNormalLike in
  place of each noise input).

Also the cost of the draws alone (ns per standard normal, same interleaving) and of creating a
keyed generator (µs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bench.common import RESULTS, machine, output_dir, write
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.modes import MvmNoiseSource
from chipsim.mvm_noise import draw, seeded_generator, standard_normal, thread_generator
from chipsim.ort_session import cpu_session
from chipsim.runtime import ChipRuntime
from models import outputs

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
MODELS = ("cnn-hwa", "transformer-hwa")
AGE_S = 86400.0
TABLE_SIZE = 1 << 23


class _Table:
    """The former shared noise table (chipsim/noise_table.py before issue 14), for comparison."""

    def __init__(self, size: int = TABLE_SIZE):
        self.samples = np.random.default_rng(0x5EED_7AB1E).standard_normal(size, dtype=np.float32)
        self.rng = np.random.default_rng()

    def feeds(self, shapes):
        sizes = [int(np.prod(s)) for _, s in shapes]
        start = int(self.rng.integers(0, self.samples.size - sum(sizes) + 1))
        out = {}
        for (name, _), n in zip(shapes, sizes):
            out[name] = self.samples[start : start + n]
            start += n
        return out


def _in_graph_session(rt: ChipRuntime):
    """A session of the chip's graph with RandomNormalLike(tile output) in place of each noise
    input; ``rt`` uses the ``inputs`` binding, so the read-out weights are fed with each run
    (embedded initializers are consumed by the runtime's own session)."""
    model = onnx.ModelProto()
    model.CopyFrom(rt._session_graph().model)  # the graph its static feeds are shaped for
    noise_inputs = {name for name, _ in rt._noise_shapes.noise_of}
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[0] in noise_inputs:
            like = producers[node.input[1]].input[0]
            nodes.append(helper.make_node("RandomNormalLike", [like], [node.output[0]], name=node.name))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    keep = [i for i in model.graph.input if i.name not in noise_inputs]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return cpu_session(model.SerializeToString(), rt.threads)


def _philox_keyed(chip_seed: int, seed: int, chunk: int = 0) -> np.random.Generator:
    key = np.array([chip_seed, seed], np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=np.array([0, 0, chunk, 7], np.uint64)))


def _sources(chip_seed: int) -> dict:
    """name → a function returning the generator of the next request (None: not a generator)."""
    counter = iter(range(1 << 62))
    philox = np.random.Generator(np.random.Philox())
    pcg = np.random.Generator(np.random.PCG64())
    return {
        "sfc64-thread": thread_generator,
        "philox-thread": lambda: philox,
        "pcg64-thread": lambda: pcg,
        "sfc64-keyed": lambda: seeded_generator(chip_seed, next(counter), 0),
        "philox-keyed": lambda: _philox_keyed(chip_seed, next(counter), 0),
    }


def _candidates(rt: ChipRuntime, x: np.ndarray) -> dict:
    """name → a function running one request."""
    table = _Table()
    zeros = {name: np.zeros(int(np.prod(s)), np.float32) for name, s in rt.noise_shapes(x)}
    fed = ChipRuntime(rt.chip, threads=rt.threads, binding="inputs")
    sess = _in_graph_session(fed)
    static = fed._static_feeds(fed._entry(AGE_S, 0), fed.gdc_mode(True))
    in_name = rt.inputs[0]["name"]

    def run(noise_of):
        return lambda: rt.run(x, AGE_S, noise=noise_of(rt.noise_shapes(x)))

    cands = {"zeros": run(lambda sh: zeros), "table": run(table.feeds)}
    # one set of generators: the keyed candidates share one counter, so no two draw the same key
    sources = _sources(rt.chip.seed)
    for name, make in sources.items():
        cands[name] = run(lambda sh, make=make: draw(sh, make(), MvmNoiseSource.FRESH))
    for name in ("sfc64-thread", "sfc64-keyed"):
        make = sources[name]
        cands[name.replace("sfc64", "sfc64-q16")] = run(
            lambda sh, make=make: draw(sh, make(), MvmNoiseSource.FRESH_Q16)
        )
    cands["ort-randomnormallike"] = lambda: sess.run(rt.output_names, {in_name: rt.check_inputs(x)[in_name], **static})
    return cands


def _interleave(fns: dict, rounds: int, repeats: int, label: str) -> dict[str, dict[str, list[float]]]:
    """Per function and round: the median CPU and wall seconds of ``repeats`` calls."""
    cpu = {k: [] for k in fns}
    wall = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in fns.items():
            c, w = [], []
            for _ in range(repeats):
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                c.append(time.process_time() - c0)
                w.append(time.perf_counter() - w0)
            cpu[k].append(float(np.median(c)))
            wall[k].append(float(np.median(w)))
        print(f"{label}: round {r + 1}/{rounds}", flush=True)
    return {"cpu": cpu, "wall": wall}


def _summary(values: list[float], scale: float) -> dict:
    return {"median": scale * float(np.median(values)), "min": scale * min(values), "max": scale * max(values)}


def _ratio(a: list[float], b: list[float]) -> dict:
    return _summary([x / y for x, y in zip(a, b)], 1.0)


def draw_costs(rounds: int, n: int) -> list[dict]:
    """ns per standard normal (``n`` per call) and µs to create a keyed generator, per source."""
    sources = _sources(12345)
    fns = {k: (lambda make=make: make().standard_normal(n, dtype=np.float32)) for k, make in sources.items()}
    for k in ("sfc64-thread", "sfc64-keyed"):
        q16 = MvmNoiseSource.FRESH_Q16
        fns[k.replace("sfc64", "sfc64-q16")] = lambda make=sources[k]: standard_normal(make(), n, q16)
    make_only = {f"create {k}": make for k, make in sources.items() if k.endswith("keyed")}
    res = _interleave({**fns, **make_only}, rounds, 20, f"draws of {n}")
    rows = []
    for k in fns:
        rows.append({"source": k, "unit": "ns/draw", "cpu": _summary(res["cpu"][k], 1e9 / n)})
    for k in make_only:
        rows.append({"source": k, "unit": "µs/generator", "cpu": _summary(res["cpu"][k], 1e6)})
    return rows


def randomnormallike_sessions_repeat(n: int = 100_000) -> bool:
    """Whether two onnxruntime sessions of one RandomNormalLike graph, in one process, draw the
    same noise (its kernel seeds minstd with the process-wide seed plus the node index)."""
    node = helper.make_node("RandomNormalLike", ["x"], ["z"], dtype=onnx.TensorProto.FLOAT)
    graph = helper.make_graph(
        [node],
        "rnl",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = np.zeros(n, np.float32)
    a, b = (cpu_session(model, 1).run(None, {"x": x})[0] for _ in range(2))
    return bool(np.array_equal(a, b))


def measure(name: str, rounds: int, requests: int, batch: int, threads: int) -> list[dict]:
    data = np.load(ZOO / f"{name}.eval.npz")["x"].astype(np.float32)
    chip = program_onnx((ZOO / f"{name}.onnx").read_bytes(), get_profile("pcm"), seed=0, calibration=data)
    rt = ChipRuntime(chip, threads=threads)
    x = np.ascontiguousarray(np.resize(data, (batch, *data.shape[1:])))
    cands = _candidates(rt, x)
    for fn in cands.values():  # warm-up: arenas, caches, the shape cache
        for _ in range(3):
            fn()
    res = _interleave(cands, rounds, requests, name)
    cpu, wall = res["cpu"], res["wall"]
    draws = sum(int(np.prod(s)) for _, s in rt.noise_shapes(x))
    return [
        {
            "model": name,
            "candidate": k,
            "draws": draws,
            "cpu_ms": _summary(cpu[k], 1e3),
            "wall_ms": _summary(wall[k], 1e3),
            "cpu_vs_table": _ratio(cpu[k], cpu["table"]),
            "cpu_vs_sfc64_thread": _ratio(cpu[k], cpu["sfc64-thread"]),
        }
        for k in cands
    ]


def _fmt(d: dict, digits: int = 2) -> str:
    return f"{d['median']:.{digits}f} [{d['min']:.{digits}f}–{d['max']:.{digits}f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    rows = []
    for name in MODELS:
        rows += measure(name, args.rounds, args.requests, args.batch, args.threads)
    costs = draw_costs(args.rounds, 1 << 18)
    repeats = randomnormallike_sessions_repeat()
    info = machine()
    lines = [
        "# Per-MVM noise: per-request cost of each candidate source",
        "",
        f"`python -m bench.mvm_noise --rounds {args.rounds} --requests {args.requests} --batch {args.batch} "
        f"--threads {args.threads}` · {info['date']} · {info['cpus']} CPUs · numpy {info['numpy']} · "
        f"onnxruntime {info['onnxruntime']} · pcm profile, `initializers` binding, cached age, batch {args.batch}, "
        f"{args.threads} onnxruntime thread(s). One process; candidates interleaved in each of {args.rounds} "
        f"rounds, {args.requests} requests each; per request: noise draw + onnxruntime run. Each cell: median "
        "over rounds of the per-round median [min–max of the per-round medians]; ratios are taken within a "
        "round. chipsim serves `sfc64-q16-thread` (unseeded) and `sfc64-q16-keyed` (seeded) by default, `sfc64-thread` and `sfc64-keyed` with `AGEDCHIP_MVM_NOISE=fresh`.",
        "",
        "| model | draws/request | candidate | CPU ms/request | wall ms/request | CPU ÷ table | CPU ÷ sfc64-thread |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['draws']} | {r['candidate']} | {_fmt(r['cpu_ms'])} | {_fmt(r['wall_ms'])} | "
            f"{_fmt(r['cpu_vs_table'])} | {_fmt(r['cpu_vs_sfc64_thread'])} |"
        )
    lines += [
        "",
        f"Draws alone ({1 << 18} standard normals per call, float32) and keyed-generator creation, CPU time:",
        "",
        "| source | cost |",
        "|---|---:|",
    ]
    for c in costs:
        lines.append(f"| {c['source']} | {_fmt(c['cpu'])} {c['unit']} |")
    lines += [
        "",
        "onnxruntime's RandomNormalLike: two sessions of one graph in one process draw identical noise: "
        f"**{repeats}** (rejected: each per-age session would replay the same noise).",
    ]
    write(
        "mvm_noise",
        {
            "machine": info,
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "rows": rows,
            "draw_costs": costs,
            "randomnormallike_sessions_repeat": repeats,
        },
        "\n".join(lines) + "\n",
        output_dir("mvm_noise", args),
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
