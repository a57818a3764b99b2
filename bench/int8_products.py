"""Do int8 "digit" products beat the float32 tile product on this CPU? (#14 §2, the optional item)

    python -m bench.int8_products [--rounds 7] [--seconds 0.1] [--replace]

For every tile shape of the zoo models (programmed on the ``pcm`` profile; a tile is ≤ 512 rows ×
its layer's columns, with the chip's normalised weights) and for the two tile shapes of a 2M-weight
MLP layer (1414×1414, random weights), at batch 64, one onnxruntime thread, in one process with the
variants interleaved over the rounds (order rotated each round):

- ``float``: ``x' @ W`` in float32 (today's path: one MatMul on the DAC's output);
- ``k2``, ``k3``: ``W`` as 2 or 3 int8 digits (:mod:`bench.int8_digits`), one com.microsoft
  ``MatMulIntegerToFloat`` per digit on the uint8 DAC codes, then ``Sum``;
- ``k3-pattern``: ``MatMulInteger`` → ``Cast`` → ``Mul`` per digit (what onnxruntime's
  optimiser makes of it is reported), ``k3-wide``: the 3 digits in one wide product, then a sum;
- ``k3-cast``: ``k3`` on the float32 codes (the DAC's Round output), cast to uint8 in the graph.

Each tile runs ``M`` MVMs per batch-64 request: 64 for Gemm, 64 × positions for Conv and MatMul
(the shape's ``M`` column); a batch-64 row (``M = 64``) is measured for every shape too.

Errors against the float64 product on the same inputs: ``err/Σ|x'||W|`` (per output, relative to
the magnitude of the sum it belongs to), ``err/max|y|`` (relative to the column's largest output
over the batch), and ``bound``: the digits' guaranteed error relative to the column's largest
possible output ``h·Σ_j|W_j|`` (``½·max|W|/(127·254^(k−1)·mean|W|)``, the criterion
:mod:`chipsim.compiler.tile_bounds` uses for its 1e-5 drops). ``k needed``: the fewest digits whose
bound is ≤ 1e-5. Ratios: variant CPU (wall) time ÷ float's, within a round; < 1 means int8 is faster.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from bench.common import RESULTS, machine, output_dir, write
from bench.int8_conv import conv_runners, conv_tiles
from bench.int8_digits import CODE_MAX, DIGIT_BASE, ZERO_POINT, float_graph, int8_graph, optimized_ops
from bench.runtime import measure
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.ort_session import cpu_session
from models import outputs

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
BATCH = 64
#: the tolerance of #14 ("every term ≤ 1e-5")
TOLERANCE = 1e-5
#: variant → (digits, form, cast); None: the float32 product
VARIANTS = {
    "float": None,
    "k2": (2, "fused", False),
    "k3": (3, "fused", False),
    "k3-pattern": (3, "pattern", False),
    "k3-wide": (3, "wide", False),
    "k3-cast": (3, "fused", True),
}
MLP_2M = 1414  # 1414² ≈ 2.0M weights: tiles of 512, 512 and 390 rows


def _positions(plan: dict) -> int:
    """MVMs per sample of a layer: its output positions (Conv: H·W, MatMul: the leading dims)."""
    shape = plan["out_shape"]
    if plan["kind"] == "conv":
        return int(np.prod(shape[2:]))
    return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1


def program(models: list[Path]) -> list[tuple[Path, object]]:
    """Each model programmed on a pcm chip (calibrated on its first batch)."""
    profile = get_profile("pcm")
    out = []
    for path in models:
        data = np.load(path.with_suffix("").with_suffix(".eval.npz"))["x"].astype(np.float32)
        out.append((path, program_onnx(path.read_bytes(), profile, seed=0, calibration=data[:BATCH])))
    return out


def tile_shapes(chips: list[tuple[Path, object]]) -> list[dict]:
    """Distinct (rows, cols, M) of the chips' tiles, each with its first tile's weights, and the
    tiles of a 2M-weight MLP layer (random weights)."""
    found: dict[tuple, dict] = {}
    for path, chip in chips:
        for plan, layer in zip(chip.meta["plans"], chip.layers):
            w = layer.w_norm
            for a, b in plan["tiles"]:
                for m in sorted({BATCH, BATCH * _positions(plan)}):
                    key = (b - a, w.shape[1], m)
                    where = f"{path.stem}:{plan['name']}"
                    if key in found:
                        found[key]["layers"].append(where)
                    else:
                        found[key] = {"rows": key[0], "cols": key[1], "m": m, "w": w[a:b], "layers": [where]}
    rng = np.random.default_rng(0)
    w2m = rng.standard_normal((MLP_2M, MLP_2M)) / np.sqrt(MLP_2M)
    w2m /= np.abs(w2m).max(axis=0)  # normalised like a chip's weights (|w| ≤ 1 per column)
    for a in range(0, MLP_2M, 512):
        b = min(a + 512, MLP_2M)
        key = (b - a, MLP_2M, BATCH)
        if key not in found:
            found[key] = {"rows": b - a, "cols": MLP_2M, "m": BATCH, "w": w2m[a:b], "layers": ["mlp-2M:1414x1414"]}
    return sorted(found.values(), key=lambda s: (s["rows"] * s["cols"], s["m"]))


def digit_bound(w: np.ndarray, k: int) -> float:
    """Largest over columns of the k digits' guaranteed error ÷ the column's largest output."""
    a = np.abs(np.asarray(w, np.float64))
    mean = a.mean(axis=0)
    ok = mean > 0
    return float((0.5 * a.max(axis=0)[ok] / (CODE_MAX * DIGIT_BASE ** (k - 1) * mean[ok])).max())


def errors(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Errors of ``y`` against the float64 ``x @ w`` (see the module docstring)."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64
    err = np.abs(y.astype(np.float64) - ref)
    scale = np.abs(x64) @ np.abs(w64)
    colmax = np.abs(ref).max(axis=0)
    return {
        "vs_abs_sum": float((err / np.where(scale > 0, scale, 1.0)).max()),
        "vs_col_max": float((err / np.where(colmax > 0, colmax, 1.0)).max()),
    }


def runners(shape: dict, rng: np.random.Generator) -> tuple[dict, dict]:
    """Per variant, a callable running one batch, and the variant's errors on that batch."""
    w = shape["w"].astype(np.float32)
    codes = rng.integers(-CODE_MAX, CODE_MAX + 1, (shape["m"], shape["rows"]))
    xf = (codes / CODE_MAX).astype(np.float32)  # the DAC's output x' (exact: the chip's inputs)
    u = (codes + ZERO_POINT).astype(np.uint8)
    run, errs = {}, {}
    for name, spec in VARIANTS.items():
        if spec is None:
            sess, feed = cpu_session(float_graph(w), 1), xf
        else:
            k, form, cast = spec
            sess, feed = cpu_session(int8_graph(w, k, form, cast), 1), (u.astype(np.float32) if cast else u)
        errs[name] = errors(sess.run(None, {"x": feed})[0], xf, w)
        run[name] = lambda _xb, sess=sess, feed=feed: sess.run(None, {"x": feed})
    return run, errs


def ratios(times: dict[str, list[tuple]]) -> dict[str, dict]:
    """Per variant, its time ÷ float's per round (CPU, wall): median, min, max; and float's ms."""
    out = {}
    for k, ts in times.items():
        row = {}
        for i, clock in enumerate(("cpu", "wall")):
            r = [t[i] / f[i] for t, f in zip(ts, times["float"])]
            row[clock] = {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}
        row["ms_cpu"] = 1e3 * float(np.median([t[0] for t in ts]))
        out[k] = row
    return out


def k_needed(w: np.ndarray) -> int | None:
    """The fewest digits (2 or 3) whose guaranteed bound is ≤ TOLERANCE."""
    return next((k for k in (2, 3) if digit_bound(w, k) <= TOLERANCE), None)


def _cell(r: dict) -> str:
    return f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]"


def conv_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "Conv tiles (the compiled graph runs them as `Conv`; the int8 form is 3 digits of `ConvInteger` → "
        "`Cast` → `Mul`, then `Sum`), batch 64, same rounds:",
        "",
        "| input | weights | layers | float Conv ms (CPU) | k3 CPU | k3 wall | k3 err/max|y| vs float32 Conv |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["ratios"]
        layers = ", ".join(r["layers"][:2]) + (f" +{len(r['layers']) - 2}" if len(r["layers"]) > 2 else "")
        lines.append(
            f"| {'×'.join(map(str, r['x_shape']))} | {'×'.join(map(str, r['w_shape']))} | {layers} | "
            f"{s['float']['ms_cpu']:.3f} | {_cell(s['k3']['cpu'])} | {_cell(s['k3']['wall'])} | {r['error']:.1e} |"
        )
    return lines


def markdown(rows: list[dict], convs: list[dict], args, info: dict) -> str:
    int8 = [k for k in VARIANTS if k != "float"]
    lines = [
        "# Int8 digit products vs the float32 tile product (one process, interleaved)",
        "",
        f"`python -m bench.int8_products --rounds {args.rounds} --seconds {args.seconds}` · {info['date']} · "
        f"{info['cpus']} CPUs ({info['cpu']}), load average {info['load']:.1f} at the start (shared host: "
        f"absolute times indicative only) · onnxruntime {info['onnxruntime']} · 1 thread",
        "",
        "Time ÷ float32 time per round, CPU clock, median [min–max] over "
        f"{args.rounds} interleaved rounds (< 1: int8 faster). Errors vs the float64 product: measured max "
        "err/Σ|x'||W| and err/max|y| per column; bound: the digits' guaranteed error ÷ the column's largest "
        f"output. k needed: fewest digits with bound ≤ {TOLERANCE:g}. onnxruntime's optimiser turns "
        f"`MatMulInteger→Cast→Mul` into: {info['pattern_ops']}.",
        "",
        "| rows×cols | M | layers | float ms (CPU) | " + " | ".join(int8) + " | k3 wall | float err | k2 err "
        "| k3 err | k2 bound | k3 bound | k needed |",
        "|---|---:|---|---:|" + "---:|" * len(int8) + "---:|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        s, e = r["ratios"], r["errors"]
        errs = [f"{e[k]['vs_abs_sum']:.1e} / {e[k]['vs_col_max']:.1e}" for k in ("float", "k2", "k3")]
        layers = ", ".join(r["layers"][:2]) + (f" +{len(r['layers']) - 2}" if len(r["layers"]) > 2 else "")
        lines.append(
            f"| {r['rows']}×{r['cols']} | {r['m']} | {layers} | {s['float']['ms_cpu']:.3f} | "
            + " | ".join(_cell(s[k]["cpu"]) for k in int8)
            + f" | {_cell(s['k3']['wall'])} | "
            + " | ".join(errs)
            + f" | {r['bound'][2]:.1e} | {r['bound'][3]:.1e} | {r['k_needed']} |"
        )
    return "\n".join(lines + conv_markdown(convs)) + "\n"


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    return name + (", avx512_vnni" if "avx512_vnni" in text else "") + (", amx" if "amx_int8" in text else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (>= 5 for the committed results)")
    ap.add_argument("--seconds", type=float, default=0.1, help="time per variant per round")
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]  # before this process adds its own
    models = sorted(ZOO.glob("*.onnx")) + sorted(ZOO.glob("*/*.onnx"))
    rng = np.random.default_rng(1)
    out = output_dir("int8_products", args)
    pattern = optimized_ops(int8_graph(np.eye(4), 3, "pattern"), out / "k3-pattern.optimized.onnx")
    rows = []
    chips = program(models)
    for shape in tile_shapes(chips):
        run, errs = runners(shape, rng)
        s = ratios(measure(run, None, args.rounds, args.seconds))
        row = {k: v for k, v in shape.items() if k != "w"}
        row.update(
            ratios=s,
            errors=errs,
            bound={k: digit_bound(shape["w"], k) for k in (2, 3)},
            k_needed=k_needed(shape["w"]),
        )
        rows.append(row)
        print(
            f"{shape['rows']:4d}x{shape['cols']:<5d} M={shape['m']:5d} "
            + " ".join(f"{k} {_cell(s[k]['cpu'])}" for k in VARIANTS if k != "float"),
            flush=True,
        )
    convs = []
    for tile in conv_tiles(chips):
        run, err = conv_runners(tile, rng)
        s = ratios(measure(run, None, args.rounds, args.seconds))
        convs.append(
            {
                "x_shape": tile["x_shape"],
                "w_shape": list(tile["w"].shape),
                "attrs": tile["attrs"],
                "layers": tile["layers"],
                "ratios": s,
                "error": err,
            }
        )
        print(f"conv {tile['x_shape']} {tile['w'].shape} k3 {_cell(s['k3']['cpu'])}", flush=True)
    (out / "k3-pattern.optimized.onnx").unlink(missing_ok=True)
    info = {**machine(), "load": load, "cpu": _cpu_name(), "pattern_ops": " → ".join(dict.fromkeys(pattern))}
    text = markdown(rows, convs, args, info)
    data = {"machine": info, "rounds": args.rounds, "seconds": args.seconds, "rows": rows, "conv": convs}
    for p in write("int8_products", data, text, out):
        print("wrote", p)
    print(text)


if __name__ == "__main__":
    main()
