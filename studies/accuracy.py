"""The accuracy report: what the aged chip does to the zoo models (DESIGN §8).

    python -m studies.accuracy                      # into a new folder runs/accuracy/<time>/
    python -m studies.accuracy --replace            # regenerate the committed reports/accuracy/
    python -m studies.accuracy --chips 3 --skip-ste --out /tmp/report   # a quick look

Every accuracy here comes from the *serving path*: the exported ONNX file is compiled and
programmed by ``chipsim.compiler.program_onnx`` and run by ``chipsim.runtime.ChipRuntime`` —
no torch simulation. Three studies (the second in :mod:`studies.robustness`, the third in
:mod:`studies.gradient_cost`; page and plots by :mod:`studies.accuracy_report`):

1. **Accuracy vs age** on the ``pcm`` profile at 1 s, 1 h, 1 d, 1 w, 30 d, 1 y, 10 y, GDC on and
   off, mean ± std over ``--chips`` chip instances (chip seed ``i``: its own programming noise,
   drift exponents and faults; read-out seed 0 and per-MVM noise seed 0 of each chip).
2. **Robustness midpoint µ** (after Borras, Klein & Fröning, "Walking Noise", ECML-PKDD 2024,
   arXiv:2212.10430 — the noise level at which accuracy falls halfway from its maximum to
   chance): the ``ideal`` profile plus additive
   Gaussian output noise of σ on every analog MVM (``out_noise = σ``, normalised units: 1 = one
   full-scale input times one full-scale weight), accuracy on a log grid of σ, and the fit
   ``acc(σ) = c + (a − c)/(1 + (σ/µ)^k)`` with ``c = 1/classes`` (chance) fixed.
3. **Extended STE vs gradients through the noise model** for the CNN: both train the
   ``cnn-hwa`` recipe from the same plain model, each in a fresh process (so peak memory is
   its own): seconds per step, peak resident memory above the process's baseline, bytes that
   autograd saves for the backward pass per step, and the final chip accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from chipsim import get_profile
from models import outputs
from studies.accuracy_report import plot_ages, plot_robustness, write_markdown
from studies.common import AGE_SCHEDULE, REPORTS_DIR, STUDY_NOISE, ZOO_DIR, ZooModel, chip_accuracy, read_zoo
from studies.gradient_cost import ste_study
from studies.robustness import SIGMAS, fit_midpoint, robustness_study

OUT_DIR = REPORTS_DIR / "accuracy"


def age_study(model: ZooModel, n_chips: int, profile_name: str = "pcm", threads: int = 1) -> dict[str, Any]:
    """{gdc_on/gdc_off: {age label: [accuracy per chip]}} for one zoo model."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    profile = get_profile(profile_name)
    out: dict[str, dict[str, list[float]]] = {
        "gdc_on": {a: [] for a in AGE_SCHEDULE},
        "gdc_off": {a: [] for a in AGE_SCHEDULE},
    }
    for chip_seed in range(n_chips):
        chip = program_onnx(model.onnx, profile, seed=chip_seed, chip_id=f"report-{chip_seed}")
        rt = ChipRuntime(chip, threads=threads, noise=STUDY_NOISE)
        for label, age in AGE_SCHEDULE.items():
            for key, gdc in (("gdc_on", True), ("gdc_off", False)):
                out[key][label].append(chip_accuracy(rt, model.x, model.y, age, gdc))
    return out


# --------------------------------------------------------------------------- main
def run(
    zoo_dir: Path, out_dir: Path, n_chips: int, repeats: int, ste_steps: int | None, skip_ste: bool, threads: int = 1
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    models = read_zoo(zoo_dir)
    chance = 1.0 / 10
    ages, rob = {}, {}
    for m in tqdm(models, desc="accuracy vs age", unit="model"):
        ages[m.name] = age_study(m, n_chips, threads=threads)
    for m in tqdm(models, desc="robustness", unit="model"):
        acc = robustness_study(m, SIGMAS, repeats, threads=threads)
        rob[m.name] = {"sigmas": SIGMAS.tolist(), "acc": acc, "fit": fit_midpoint(SIGMAS, np.mean(acc, axis=1), chance)}
    ste = None
    if not skip_ste:
        cnn = next(m for m in models if m.name == "cnn-hwa")
        ste = ste_study(ste_steps, n_chips, cnn.x, cnn.y)
    public = [dict(m.entry) for m in models]
    res = {
        "models": public,
        "ages": ages,
        "robustness": rob,
        "ste": ste,
        "n_chips": n_chips,
        "robustness_repeats": repeats,
        "n_eval": int(len(models[0].y)),
        "profile": get_profile("pcm").model_dump(),
        "age_seconds": AGE_SCHEDULE,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, {threads} onnxruntime thread(s)",
        "seconds": time.perf_counter() - t0,
    }
    plot_ages(public, ages, out_dir / "accuracy_vs_age.png")
    plot_robustness(public, rob, chance, out_dir / "robustness.png")
    res["seconds"] = time.perf_counter() - t0
    write_markdown(res, out_dir / "README.md")
    (out_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m studies.accuracy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--zoo", default=str(ZOO_DIR))
    outputs.add_arguments(ap, OUT_DIR)
    ap.add_argument("--chips", type=int, default=10, help="chip instances per model (default 10)")
    ap.add_argument("--repeats", type=int, default=5, help="per-MVM noise seeds per σ in the robustness study")
    ap.add_argument("--ste-steps", type=int, default=None, help="cut the STE comparison's training short")
    ap.add_argument("--skip-ste", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render-only", action="store_true", help="re-render README.md and PNGs from results.json")
    args = ap.parse_args(argv)
    files = ("README.md", "results.json", "accuracy_vs_age.png", "accuracy_vs_age_gdc.png", "robustness.png")
    if args.render_only:
        out = args.out or OUT_DIR
        if out == OUT_DIR and not args.replace:
            raise SystemExit(f"--render-only rewrites the committed report in {OUT_DIR}: pass --replace (or --out)")
        res = json.loads((out / "results.json").read_text())
        plot_ages(res["models"], res["ages"], out / "accuracy_vs_age.png")
        plot_robustness(res["models"], res["robustness"], 0.1, out / "robustness.png")
        write_markdown(res, out / "README.md")
        print(f"re-rendered {out} from results.json")
        return
    out = outputs.output_dir("accuracy", OUT_DIR, args.out, args.replace, files)
    res = run(Path(args.zoo), out, args.chips, args.repeats, args.ste_steps, args.skip_ste, args.threads)
    print(f"report written to {out} in {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
