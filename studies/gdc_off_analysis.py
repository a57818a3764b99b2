"""Why the plain ResNet collapses without GDC (issue #12): causes separated by measurement.

``python -m studies.gdc_off_analysis`` runs a model (default: the zoo's ``resnet-fmnist-plain``)
on the serving path (``chipsim.compiler.program_onnx`` + ``chipsim.runtime.ChipRuntime``) on
Fashion-MNIST *validation* images (never the test set the report's numbers come from), and prints:

(a) each layer's mean conductance decay at each age: predicted from the device constants
    (:mod:`studies.drift_decay`) and measured by the chip (noise-free ``exact`` and GDC's
    ``global`` read), with the product over the layers;
(b)/(c) accuracy with GDC off on a drift-only chip (the ``ideal`` profile with ``drift_scale`` 1:
    no noise, no DAC/ADC, no IR drop, no faults) and on ``pcm``, with the model's digital
    offsets as shipped and rescaled by :mod:`studies.gdc_off_transform` (biases drifting with
    their own layer; with their path; with their path and the residual shortcuts matched);
(d) per analog layer, the chip/FP ratio of its output with GDC off, of its analog part (bias
    removed), the predicted path product, and the share of the bias in the output;
(e) whether the fully rescaled (homogeneous) model's logits on each profile are still the FP
    logits times the path product, or lost under the DAC steps and the noise.

The rescaled models use the decays the chip measures (``exact``) at that age on that chip
instance; they are programmed with the same seed, so their devices are the same.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chipsim import get_profile
from chipsim.fleet.stats import wilson_interval
from studies.common import AGE_SCHEDULE, REPO, STUDY_NOISE
from studies.drift_decay import chip_decays, naive_decay, predicted_decay
from studies.gdc_off_transform import OffsetScaling, rescale_offsets

DEFAULT_MODEL = REPO / "models" / "zoo" / "fmnist" / "resnet-fmnist-plain.onnx"
_PCM = get_profile("pcm")
#: Profiles of the analysis: the drift-only chip; it with the DAC/ADC of ``pcm`` (range, steps,
#: clipping); it with the noise of ``pcm`` (programming, 1/f read, per-MVM weight and output
#: noise); and ``pcm`` itself (all of them, IR drop and stuck devices too).
PROFILES = {
    "drift-only": ("ideal", {"drift_scale": 1.0}),
    "drift+DAC/ADC": (
        "ideal",
        {"drift_scale": 1.0, **{k: getattr(_PCM, k) for k in ("in_clip", "in_levels", "out_levels", "out_bound")}},
    ),
    "drift+noise": (
        "ideal",
        {
            "drift_scale": 1.0,
            **{k: getattr(_PCM, k) for k in ("prog_noise_scale", "read_noise_scale", "w_noise", "out_noise")},
        },
    ),
    "pcm": ("pcm", {}),
}
#: Profiles that get every offset scaling; the others only the shipped and the homogeneous model.
FULL_PROFILES = ("drift-only", "pcm")
BATCH = 500
#: The tables (see the module docstring).
PARTS = ("a", "bc", "d", "e")


def profile_of(key: str):
    name, overrides = PROFILES[key]
    return get_profile(name, **overrides)


def fp_logits(model_bytes: bytes, x: np.ndarray, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """The floating-point model (onnxruntime) on ``x``: its first output, or the named tensors."""
    import onnx
    from onnx import TensorProto, helper

    from chipsim.ort_session import cpu_session

    if outputs:
        m = onnx.load_from_string(model_bytes)
        del m.graph.output[:]
        m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs)
        model_bytes = m.SerializeToString()
    sess = cpu_session(model_bytes, 1)
    name = sess.get_inputs()[0].name
    parts = [sess.run(list(outputs) if outputs else None, {name: x[i : i + BATCH]}) for i in range(0, len(x), BATCH)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def chip_logits(model_bytes: bytes, profile, chip: int, x: np.ndarray, age_s: float, gdc: bool) -> np.ndarray:
    """Logits of chip instance ``chip`` (programming and per-MVM noise seed) at ``age_s`` s."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    rt = ChipRuntime(
        program_onnx(model_bytes, profile, seed=chip, chip_id=f"gdc-off-{chip}"), threads=1, noise=STUDY_NOISE
    )
    out = [
        rt.run(x[i : i + BATCH], age_s, read_seed=0, gdc=gdc, seed=chip, chunk=j)[0]
        for j, i in enumerate(range(0, len(x), BATCH))
    ]
    return np.concatenate(out)


def decays_at(model_bytes: bytes, profile, chip: int, age_s: float, mode: str = "exact") -> dict[str, float]:
    """:func:`studies.drift_decay.chip_decays` of chip instance ``chip`` at ``age_s``."""
    from chipsim.compiler import program_onnx
    from chipsim.readout import read

    state = program_onnx(model_bytes, profile, seed=chip, chip_id=f"gdc-off-{chip}")
    return chip_decays(state, read(state, age_s), mode)


@dataclass
class Cell:
    """Accuracy of one setting over chip instances: mean, Wilson 95 % interval (n = images ×
    chips, treating them as independent trials), and the per-chip accuracies."""

    profile: str
    offsets: str
    age: str
    gdc: bool
    accuracy: float
    ci: tuple[float, float]
    per_chip: list[float]
    n_images: int


def accuracy_cell(model_bytes: bytes, key: str, offsets: OffsetScaling, age: str, gdc: bool, chips: int, x, y) -> Cell:
    profile = profile_of(key)
    per_chip, hits = [], 0
    for c in range(chips):
        b = model_bytes
        if offsets is not OffsetScaling.NONE:
            b = rescale_offsets(model_bytes, decays_at(model_bytes, profile, c, AGE_SCHEDULE[age]), offsets)
        correct = chip_logits(b, profile, c, x, AGE_SCHEDULE[age], gdc).argmax(1) == y
        per_chip.append(float(correct.mean()))
        hits += int(correct.sum())
    n = chips * len(y)
    return Cell(key, str(offsets), age, gdc, hits / n, wilson_interval(hits, n), per_chip, len(y))


def decay_table(model_bytes: bytes, ages: Sequence[str]) -> list[dict]:
    """(a): per age, every layer's predicted and measured decay (chip 0 of each profile)."""
    from chipsim.compiler import program_onnx
    from chipsim.compiler.plan import load_plans

    rows = []
    pcm, drift = profile_of("pcm"), profile_of("drift-only")
    state = program_onnx(model_bytes, drift, seed=0)
    targets = {p.weight_name: layer.w_norm for p, layer in zip(load_plans(state), state.layers)}
    dev = drift.device_model
    for age in ages:
        t = AGE_SCHEDULE[age]
        meas = {
            "drift-only exact": decays_at(model_bytes, drift, 0, t, "exact"),
            "pcm exact": decays_at(model_bytes, pcm, 0, t, "exact"),
            "pcm global (GDC)": decays_at(model_bytes, pcm, 0, t, "global"),
        }
        per_age = []
        for name, w in targets.items():
            row = {"age": age, "layer": name, "naive": naive_decay(w, dev, t), "predicted": predicted_decay(w, dev, t)}
            row.update({k: v[name] for k, v in meas.items()})
            per_age.append(row)
        product = {k: float(np.prod([r[k] for r in per_age])) for k in list(per_age[0])[2:]}
        rows += per_age + [{"age": age, "layer": f"product of {len(per_age)} layers", **product}]
    return rows


def _slope(a: np.ndarray, b: np.ndarray) -> float:
    """Least-squares slope through the origin of ``a`` on ``b``."""
    return float((a * b).sum() / (b * b).sum())


def layer_table(model_bytes: bytes, key: str, age: str, x: np.ndarray) -> list[dict]:
    """(d): per analog layer of chip 0 with GDC off: the chip/FP ratio of its output, of its
    analog part (its bias subtracted from both), the predicted path product of decays, and the
    bias's share (rms bias / rms output) on the chip and in FP."""
    import onnx
    from onnx import numpy_helper

    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime
    from studies.gdc_off_transform import tensor_scales

    profile, t = profile_of(key), AGE_SCHEDULE[age]
    m = onnx.load_from_string(model_bytes)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    rt = ChipRuntime(program_onnx(model_bytes, profile, seed=0), threads=1, noise=STUDY_NOISE)
    nodes = {n.name: n for n in m.graph.node}
    layers = [nodes[p.node] for p in rt.plans]
    names = [n.output[0] for n in layers]
    fp = fp_logits(model_bytes, x, names)
    path = tensor_scales(model_bytes, decays_at(model_bytes, profile, 0, t))
    rows = []
    for node, name, f in zip(layers, names, fp):
        c = rt.run_tensor(x, name, t, read_seed=0, gdc=False, seed=0).astype(np.float64)
        bias = inits[node.input[2]] if len(node.input) > 2 else np.zeros(f.shape[1])
        b = np.broadcast_to(bias.reshape((1, -1) + (1,) * (f.ndim - 2)), f.shape)
        rms_b = float(np.sqrt((b * b).mean()))
        rows.append(
            {
                "profile": key,
                "age": age,
                "layer": node.input[1],
                "output ratio": _slope(c, f),
                "analog ratio": _slope(c - b, f - b),
                "path product": path[name],
                "bias share chip": rms_b / float(np.sqrt((c * c).mean())),
                "bias share FP": rms_b / float(np.sqrt((f * f).mean())),
            }
        )
    return rows


def homogeneous_logits(model_bytes: bytes, key: str, age: str, x: np.ndarray) -> dict:
    """(e): does the signal survive the compounded shrink? The homogeneous model on chip 0 with
    GDC off against ``c``·FP, ``c`` the predicted path product at the logits: Pearson r of the
    logits, least-squares slope over ``c`` (1: the logits are c·FP), the spread of the logits
    across images over c·FP's, and the share of images whose argmax agrees with FP."""
    import onnx

    from studies.gdc_off_transform import tensor_scales

    profile, t = profile_of(key), AGE_SCHEDULE[age]
    decay = decays_at(model_bytes, profile, 0, t)
    out = onnx.load_from_string(model_bytes).graph.output[0].name
    c = tensor_scales(model_bytes, decay)[out]
    f = fp_logits(model_bytes, x)[0].astype(np.float64)
    g = chip_logits(rescale_offsets(model_bytes, decay, OffsetScaling.HOMOGENEOUS), profile, 0, x, t, gdc=False)
    g = g.astype(np.float64)
    return {
        "profile": key,
        "age": age,
        "c (path product)": c,
        "Pearson r": float(np.corrcoef(g.ravel(), f.ravel())[0, 1]) if g.std() > 0 else 0.0,
        "slope / c": _slope(g, f) / c,
        "spread / (c·FP spread)": float(g.std(axis=0).mean() / (c * f.std(axis=0).mean())),
        "argmax = FP %": 100 * float((g.argmax(1) == f.argmax(1)).mean()),
    }


def markdown(rows: list[dict], fmt: str = "{:.4g}") -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(fmt.format(v) if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(out)


def cell_rows(cells: list[Cell]) -> list[dict]:
    return [
        {
            "profile": c.profile,
            "offsets": c.offsets,
            "age": c.age,
            "GDC": "on" if c.gdc else "off",
            "accuracy %": f"{100 * c.accuracy:.1f} [{100 * c.ci[0]:.1f}, {100 * c.ci[1]:.1f}]",
            "per chip %": ", ".join(f"{100 * a:.1f}" for a in c.per_chip),
        }
        for c in cells
    ]


def settings(ages: Sequence[str], profiles: Sequence[str]) -> list[tuple[str, OffsetScaling, str, bool]]:
    """(profile, offsets, age, gdc) of (b)/(c): GDC on as the reference, then off with every offset scaling."""
    out = []
    for key in profiles:
        arms = list(OffsetScaling) if key in FULL_PROFILES else [OffsetScaling.NONE, OffsetScaling.HOMOGENEOUS]
        for age in ages:
            out.append((key, OffsetScaling.NONE, age, True))
            out += [(key, s, age, False) for s in arms]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--images", type=int, default=1000, help="validation images for (b)/(c)")
    ap.add_argument("--layer-images", type=int, default=200, help="validation images for (d) and (e)")
    ap.add_argument("--chips", type=int, default=3, help="chip instances (seeds 0…) for (b)/(c)")
    ap.add_argument("--ages", nargs="+", default=["1 d", "1 y"], help="e.g. '1 d' '1 y'")
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="tables to compute")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables as JSON here")
    args = ap.parse_args(argv)
    ages = [a if a in AGE_SCHEDULE else f"{a[:-1]} {a[-1]}" for a in args.ages]
    for a in ages:
        if a not in AGE_SCHEDULE:
            ap.error(f"--ages: unknown age {a!r}; known: {list(AGE_SCHEDULE)}")
    from models import fmnist_data as D

    t0 = time.perf_counter()
    model_bytes = args.model.read_bytes()
    val = D.load_split("val", max(args.images, args.layer_images))
    x, y = val.x[: args.images], val.y[: args.images]
    xl = val.x[: args.layer_images]
    res: dict = {"fp_accuracy": float((fp_logits(model_bytes, x)[0].argmax(1) == y).mean())}
    print(f"model {args.model}, {len(y)} validation images, FP accuracy {100 * res['fp_accuracy']:.1f} %\n")
    if "a" in args.parts:
        res["decay"] = decay_table(model_bytes, ages)
        print("(a) mean conductance decay per layer\n\n" + markdown(res["decay"]) + "\n")
    if "bc" in args.parts:
        cells = [accuracy_cell(model_bytes, *s, args.chips, x, y) for s in settings(ages, args.profiles)]
        res["cells"] = [asdict(c) for c in cells]
        print(f"(b)/(c) accuracy, {args.chips} chips × {len(y)} images\n\n" + markdown(cell_rows(cells)) + "\n")
    if "d" in args.parts:
        res["layers"] = [
            r for k in args.profiles if k in FULL_PROFILES for r in layer_table(model_bytes, k, ages[0], xl)
        ]
        print(f"(d) per layer, GDC off, chip 0, {len(xl)} images\n\n" + markdown(res["layers"]) + "\n")
    if "e" in args.parts:
        res["logits"] = [homogeneous_logits(model_bytes, k, a, xl) for k in args.profiles for a in ages]
        print(f"(e) homogeneous model, GDC off, chip 0, {len(xl)} images\n\n" + markdown(res["logits"]) + "\n")
    print(f"took {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **res}, indent=1))


if __name__ == "__main__":
    main()
