"""CPU cost of one cell of the Fashion-MNIST study (what docs/studies.md quotes).

    python -m studies.fmnist_time                    # an untrained ResNet-20 (the trained one's shapes), 2 000 images
    python -m studies.fmnist_time --model /work/train/resnet-plain-s0/resnet-fmnist-plain.onnx --images 10000

Prints JSON: CPU seconds (``time.process_time``, so the host's load does not count) of the FP
pass, of programming a chip per arm, and of one cell per arm and GDC setting, measured on
``--images`` test images, and the same scaled to the 10 000 of a full cell (the work is linear
in the images: batches of 500, one read-out per age). Wall seconds are printed too; on a shared
host they are indicative only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from chipsim import get_profile
from chipsim.ages import YEAR_S
from studies.common import STUDY_NOISE
from studies.fmnist_eval import ARMS, chip_correct, find_models, fp_correct

N_TEST = 10_000


def untrained_resnet20(folder: Path) -> Path:
    """An untrained ResNet-20 ONNX file (same layers and shapes as the trained one) in ``folder``."""
    import torch

    from models import fmnist_models as FM
    from models.export import build_onnx

    meta = {"agedchip.recipe": {"arch": "resnet", "mode": "plain", "seed": 0}, "agedchip.dataset": "Fashion-MNIST"}
    data, _ = build_onnx(FM.export_copy(FM.build("resnet", 0).eval()), meta, example=torch.zeros(2, 1, 28, 28))
    path = folder / "resnet20-untrained.onnx"
    path.write_bytes(data)
    return path


def measure(model_path: Path, n_images: int, age_s: float = YEAR_S) -> dict:
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime
    from models import fmnist_data as D

    model = find_models([model_path])[0]
    test = D.load_split("test", n_images)
    scale = N_TEST / n_images
    c = time.process_time()
    fp_correct(model, test.x, test.y)
    out: dict = {
        "model": str(model_path),
        "images": n_images,
        "fp_cpu_s_10k": round((time.process_time() - c) * scale, 1),
    }
    for arm in ARMS:
        c = time.process_time()
        rt = ChipRuntime(
            program_onnx(model.onnx_path.read_bytes(), get_profile("pcm"), seed=0, column_scaling=arm),
            noise=STUDY_NOISE,
        )
        out[f"program_cpu_s_{arm}"] = round(time.process_time() - c, 2)
        for gdc in (True, False):
            c, w = time.process_time(), time.perf_counter()
            chip_correct(rt, test.x, test.y, 0, age_s, gdc)
            key = f"cell_{arm}_gdc_{'on' if gdc else 'off'}"
            out[f"{key}_cpu_s_10k"] = round((time.process_time() - c) * scale, 1)
            out[f"{key}_wall_s"] = round(time.perf_counter() - w, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m studies.fmnist_time", description=__doc__)
    ap.add_argument("--model", type=Path, default=None, help="an ONNX file of models.train_fmnist")
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or untrained_resnet20(Path(tmp))
        print(json.dumps(measure(path, args.images), indent=1))


if __name__ == "__main__":
    main()
