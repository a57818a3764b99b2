"""Why the Fashion-MNIST LSTMs are less accurate at 1 s than at 1 d: the chip's ADC range.

    python -m studies.fmnist_adc_range                      # LSTM HWA (zoo), chip 0, 2 000 test images

Runs one model on one chip at 1 s and 1 d, GDC on, with the ``pcm`` profile and with one
non-ideality changed at a time: the ADC range ×10 at the same step (``out_bound`` and
``out_levels`` ×10: no output saturates, the rounding is unchanged), no IR drop, no output noise,
no read noise. Before drift the outputs are at their largest (``((t + t0)/t0)^−ν``: 1 at 1 s,
0.66 at 1 d, DESIGN §2), so a fixed ADC bound clips more of them at 1 s; GDC rescales only after
the ADC, so it cannot undo the clipping.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studies.common import REPO, STUDY_NOISE

AGES_S = {"1 s": 1.0, "1 d": 86400.0}


def variants(base) -> dict[str, dict]:
    """Profile overrides, one non-ideality at a time."""
    return {
        "pcm": {},
        "ADC range ×10, same step": {"out_bound": base.out_bound * 10, "out_levels": base.out_levels * 10},
        "no IR drop": {"ir_drop": 0.0},
        "no output noise": {"out_noise": 0.0},
        "no read noise": {"read_noise_scale": 0.0},
    }


def accuracies(onnx_path: Path, n_images: int, chip: int = 0) -> dict[str, dict[str, float]]:
    """{variant: {age: accuracy %}} of the model on chip ``chip`` (programming and noise seed)."""
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime
    from models import fmnist_data as D
    from studies.fmnist_eval import chip_correct

    test = D.load_split("test", n_images)
    model = onnx_path.read_bytes()
    out = {}
    for name, upd in variants(get_profile("pcm")).items():
        state = program_onnx(model, get_profile("pcm", **upd), seed=chip, chip_id="adc", column_scaling="max")
        rt = ChipRuntime(state, threads=1, noise=STUDY_NOISE)
        out[name] = {a: 100 * float(chip_correct(rt, test.x, test.y, chip, s, True).mean()) for a, s in AGES_S.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m studies.fmnist_adc_range", description=__doc__)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "zoo" / "fmnist" / "lstm-fmnist-hwa.onnx")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--chip", type=int, default=0)
    args = ap.parse_args(argv)
    res = accuracies(args.model, args.images, args.chip)
    print(f"| {args.model.name}, chip {args.chip}, {args.images} test images, GDC on | " + " | ".join(AGES_S) + " |")
    print("|---|" + "---:|" * len(AGES_S))
    for name, row in res.items():
        print(f"| {name} | " + " | ".join(f"{row[a]:.2f}" for a in AGES_S) + " |")


if __name__ == "__main__":
    main()
