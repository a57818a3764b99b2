"""The extended STE (seed 002) vs gradients through the noise model on the Fashion-MNIST ResNet
(issue #12): time per step, peak memory, autograd-saved bytes and the final chip accuracy.

    python -m studies.fmnist_ste --teacher /work/train/resnet-plain-s0 --seeds 0 1 2 --max-steps 200 \\
        --chips 5 --images 2000 --replace          # → reports/fmnist-ste/ (also: models.report --suite fmnist-ste)

For each seed and gradient mode (interleaved: STE s0, through-noise s0, STE s1, …) one fresh
spawned process (:mod:`studies.fmnist_ste_worker`) HWA-fine-tunes the plain run ``--teacher`` for
``--max-steps`` optimiser steps and measures its costs; then this process evaluates the result on
the serving path (``program_onnx`` + ``ChipRuntime``, no torch) at 1 d and 1 y, GDC on, on
``--chips`` ``pcm`` chips and the first ``--images`` test images, plus its FP accuracy
(onnxruntime). Each run's training and evaluation are cached under ``--cache`` (keyed by the
teacher's ``model.pt`` digest, mode, seed and length), so a rerun does only what is missing.
Statistics and page: :mod:`studies.fmnist_ste_report`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chipsim import get_profile
from models.fmnist_recipe import TRAINING_GRADIENTS
from studies.common import AGE_SCHEDULE, REPO, REPORTS_DIR, STUDY_NOISE
from studies.fmnist_ste_report import analyse, render_markdown
from studies.fmnist_ste_worker import WARMUP_STEPS, worker
from studies.gradient_cost import run_in_child

OUT_DIR = REPORTS_DIR / "fmnist-ste"
CACHE_DIR = REPO / "runs" / "fmnist-ste"
AGES = ("1 d", "1 y")
PROFILE = "pcm"
#: ``--modes`` values; a run with all of them writes the page
ALL_MODES = [str(m) for m in TRAINING_GRADIENTS]
#: Images per runtime call (one per-MVM noise chunk each), as in studies.fmnist_eval.
BATCH = 500


@dataclass(frozen=True)
class RunSpec:
    """One training run: the plain start, gradient mode (a ``GradientMode`` value), HWA seed,
    length, and the data limits of smoke runs and tests (None: the whole split)."""

    teacher: str
    mode: str
    seed: int
    max_steps: int
    limit_train: int | None = None
    limit_val: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    folder: str = ""


def teacher_digest(teacher: Path) -> str:
    """First 12 hex digits of the SHA-256 of the teacher's ``model.pt``."""
    return hashlib.sha256((teacher / "model.pt").read_bytes()).hexdigest()[:12]


def run_folder(cache: Path, digest: str, mode: str, seed: int, max_steps: int, extra: str = "") -> Path:
    return cache / digest / f"{mode}-s{seed}-n{max_steps}{extra}"


def _spawn(spec: RunSpec) -> dict:
    """Train ``spec`` in a fresh spawned process (its peak memory is its own); its result."""
    r = run_in_child(worker, (asdict(spec),), f"fmnist-ste: run {spec.mode} s{spec.seed}")
    if "error" in r:
        raise RuntimeError(f"fmnist-ste: run {spec.mode} s{spec.seed} failed: {r['error']}")
    return r["ok"]


def ensure_trained(spec: RunSpec) -> dict:
    """The cached training result of ``spec`` (``train.json``), training it first if absent. An
    interrupted run (no ``train.json``) resumes from its last epoch's ``checkpoint.pt``; a folder
    without either is cleared and trained again."""
    folder = Path(spec.folder)
    done, checkpoint = folder / "train.json", folder / "checkpoint.pt"
    if done.is_file():
        return json.loads(done.read_text())
    if folder.exists() and not checkpoint.is_file():
        shutil.rmtree(folder)
    result = _spawn(spec)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(done)
    # a finished run never resumes: its checkpoint (weights + optimiser state) is dead weight in a
    # kept cache (--cache models/trained/...)
    checkpoint.unlink(missing_ok=True)
    return result


def _pack(correct: np.ndarray) -> str:
    return np.packbits(np.asarray(correct, bool)).tobytes().hex()


def unpack(hex_bits: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_bits), np.uint8), count=n).astype(bool)


def evaluate_model(model_bytes: bytes, x: np.ndarray, y: np.ndarray, chips: int) -> dict:
    """Per-image correctness (packed hex): ``fp`` (onnxruntime) and per age a list over chips."""
    from chipsim.compiler import program_onnx
    from chipsim.ort_session import cpu_session
    from chipsim.runtime import ChipRuntime
    from studies.fmnist_eval import chip_correct

    sess = cpu_session(model_bytes, 1)
    name = sess.get_inputs()[0].name
    fp = np.concatenate([sess.run(None, {name: x[i : i + BATCH]})[0].argmax(1) for i in range(0, len(x), BATCH)])
    out: dict = {"fp": _pack(fp == y), **{age: [] for age in AGES}}
    profile = get_profile(PROFILE)
    for k in range(chips):
        rt = ChipRuntime(program_onnx(model_bytes, profile, seed=k), threads=1, noise=STUDY_NOISE)
        for age in AGES:
            out[age].append(_pack(chip_correct(rt, x, y, k, AGE_SCHEDULE[age], True)))
    return out


def ensure_evaluated(folder: Path, x: np.ndarray, y: np.ndarray, chips: int) -> dict:
    """The cached chip evaluation of the run in ``folder`` on ``len(x)`` test images, ``chips`` chips."""
    path = folder / f"chips-{PROFILE}-k{chips}-n{len(x)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    res = evaluate_model((folder / "model.onnx").read_bytes(), x, y, chips)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res) + "\n")
    tmp.replace(path)
    return res


def run_study(args: argparse.Namespace, progress=print) -> tuple[list[dict], dict]:
    """Train (interleaved, cached) and evaluate every run; (runs with their bits, meta)."""
    from models import fmnist_data as D

    teacher = Path(args.teacher)
    digest = teacher_digest(teacher)
    extra = "".join(
        f"-{tag}{v}"
        for tag, v in (("e", args.epochs), ("lt", args.limit_train), ("lv", args.limit_val), ("b", args.batch_size))
        if v
    )
    specs = [
        RunSpec(
            str(teacher),
            str(mode),
            seed,
            args.max_steps,
            args.limit_train,
            args.limit_val,
            args.batch_size,
            args.epochs,
            str(run_folder(args.cache, digest, str(mode), seed, args.max_steps, extra)),
        )  # fmt: skip
        for seed in args.seeds
        for mode in args.modes
    ]
    trained = []
    for spec in specs:
        t0 = time.perf_counter()
        trained.append(ensure_trained(spec))
        progress(f"trained {spec.mode} s{spec.seed} ({time.perf_counter() - t0:.0f} s)")
    test = D.load_split("test", args.images)
    runs = []
    for spec, tr in zip(specs, trained):
        t0 = time.perf_counter()
        ev = ensure_evaluated(Path(spec.folder), test.x, test.y, args.chips)
        bits = {
            k: unpack(v, len(test.y)) if k == "fp" else np.stack([unpack(b, len(test.y)) for b in v])
            for k, v in ev.items()
        }
        runs.append(
            {
                "mode": spec.mode,
                "seed": spec.seed,
                **{k: v for k, v in tr.items() if k != "recipe"},
                "fp_accuracy": float(bits["fp"].mean()),
                "chip_accuracy": {age: [float(c.mean()) for c in bits[age]] for age in AGES},
                "bits": bits,
            }
        )
        progress(f"evaluated {spec.mode} s{spec.seed} ({time.perf_counter() - t0:.0f} s)")
    rec = trained[0]["recipe"]
    meta = {
        "teacher": str(teacher),
        "teacher_digest": digest,
        "arch": rec["arch"],
        "max_steps": args.max_steps,
        "batch_size": rec["batch_size"],
        "steps_per_epoch": trained[0]["steps_per_epoch"],
        "train_images": len(D.load_split("train", args.limit_train).y),
        "full_epochs": rec["epochs"],
        "ramp_steps": round(rec["ramp_epochs"] * trained[0]["steps_per_epoch"]),
        "seeds": list(args.seeds),
        "chips": args.chips,
        "images": len(test.y),
        "profile": PROFILE,
        "ages": list(AGES),
        "warmup_steps": WARMUP_STEPS,
        "n_boot": args.n_boot,
    }
    return runs, meta


def build_results(runs: list[dict], meta: dict) -> dict:
    """``results.json``'s content: meta, the runs' raw numbers (no per-image bits) and the analysis."""
    analysis = analyse(runs, meta["ages"], meta["n_boot"])
    plain = [{k: v for k, v in r.items() if k != "bits"} for r in runs]
    return {"meta": meta, "runs": plain, "analysis": analysis}


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "README.md").write_text(render_markdown(results))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="folder of a finished plain run (model.pt)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, required=True, help="optimiser steps per run")
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=ALL_MODES,
        default=ALL_MODES,
        help="gradient modes to train and evaluate (default: all). A subset only fills the cache, so that "
        "one seed's runs can go to two processes; the report is written by a run with all modes",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="the HWA recipe's length (sets its cosine schedule and the full length named in the report; "
        "default: models.fmnist_recipe's, a third of the plain default)",
    )
    ap.add_argument("--chips", type=int, default=5, help="pcm chip instances per model")
    ap.add_argument("--images", type=int, default=2000, help="the first N Fashion-MNIST test images")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    ap.add_argument("--cache", type=Path, default=CACHE_DIR, help="per-run training and evaluation cache")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None, help="report folder (default runs/fmnist-ste/report-<time>)")
    where.add_argument("--replace", action="store_true", help=f"write the report into {OUT_DIR.relative_to(REPO)}/")
    ap.add_argument("--limit-train", type=int, default=None, help="smoke runs, tests: the first N training images")
    ap.add_argument("--limit-val", type=int, default=None, help="smoke runs, tests: the first N validation images")
    ap.add_argument("--batch-size", type=int, default=None, help="smoke runs, tests (default: the recipe's)")
    return ap


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds) or args.max_steps < 1 or args.chips < 1 or args.images < 1:
        raise SystemExit("--seeds must be distinct; --max-steps, --chips and --images at least 1")
    if not (args.teacher / "model.pt").is_file():
        raise SystemExit(f"--teacher {args.teacher}: no model.pt (a finished plain run of models.train_fmnist)")
    from models import fmnist_data as D

    if not D.available():
        raise SystemExit(f"Fashion-MNIST is not installed ({D.data_dir()}): apt-get install {D.DEBIAN_PACKAGE}")
    out = OUT_DIR if args.replace else args.out or CACHE_DIR / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
    runs, meta = run_study(args)
    if set(args.modes) != set(ALL_MODES):
        print(f"trained and evaluated {' '.join(args.modes)} into {args.cache}; no report (it pairs all modes)")
        return args.cache
    meta["command"] = "python -m studies.fmnist_ste " + shlex.join(argv)
    write_report(build_results(runs, meta), out)
    print(f"wrote {out}/README.md and results.json")
    return out


if __name__ == "__main__":
    main()
