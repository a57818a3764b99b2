"""The Fashion-MNIST accuracy study (issue #12): trained models on aged chips, with intervals.

    python -m models.report --suite fmnist                      # = python -m studies.fmnist_study
    python -m studies.fmnist_study --models /work/train --replace          # → reports/fmnist/
    python -m studies.fmnist_study --chips 2 --ages 1d 1y --limit-images 500 --skip-mu   # a quick look
    python -m studies.fmnist_study --ages 1d 1y --curve-ages 1s 10y --curve-archs lstm    # tables at 1 d and
        # 1 y for every arm; the LSTM's accuracy-vs-age curve also at 1 s and 10 y, max scaling only

Finds the trained models (ONNX files written by ``models.train_fmnist``, with arch, mode and seed
in their metadata) under ``--models``; computes every missing cell (model × arm × chip × age ×
GDC) on the serving path into the cache (:mod:`studies.fmnist_eval`; a rerun or a later session
computes only what is missing, ``--budget-min`` stops early and keeps what is done); bootstraps
the tables (:mod:`studies.fmnist_analysis`, :mod:`studies.fmnist_stats`); measures the
robustness midpoint µ with the clip-only control (:mod:`studies.fmnist_midpoint`, torch); writes
``README.md``, ``results.json`` and two PNGs (:mod:`studies.fmnist_report`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import outputs
from models.fmnist_runs import KEPT_DIR
from studies import cell_archive
from studies.common import AGE_SCHEDULE, REPO, REPORTS_DIR
from studies.fmnist_analysis import analyse
from studies.fmnist_eval import (
    ARMS,
    CACHE_DIR,
    CELL_NOISE,
    CELL_VERSION,
    CellStore,
    Curve,
    complete_chips,
    evaluate,
    find_models,
    load_cells,
)
from studies.fmnist_report import plot_ages, plot_midpoint, render_markdown

OUT_DIR = REPORTS_DIR / "fmnist"
FILES = ("README.md", "results.json", "accuracy_vs_age.png", "midpoint.png")
#: The committed files first (the zoo's seed 0, then the kept runs of the other seeds), so that
#: the page names them; then the git-ignored training runs of this machine.
DEFAULT_MODELS = (REPO / "models" / "zoo", KEPT_DIR, REPO / "runs" / "fmnist")
N_TEST = 10_000


def age_label(text: str) -> str:
    """``1y`` or ``1 y`` → ``1 y`` (a key of :data:`AGE_SCHEDULE`); ``ValueError`` names the known ones."""
    compact = {k.replace(" ", ""): k for k in AGE_SCHEDULE}
    key = text.replace(" ", "")
    if key not in compact:
        raise argparse.ArgumentTypeError(f"age {text!r}: expected one of {sorted(compact)}")
    return compact[key]


def shard(text: str) -> tuple[int, int]:
    """``I/N`` → (I, N) with 0 ≤ I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: expected 0 <= I < N")
    return i, n


def arch_chips(text: str) -> tuple[str, int]:
    """``lstm=10`` → ("lstm", 10), the count ≥ 1."""
    arch, _, n = text.partition("=")
    try:
        count = int(n)
    except ValueError:
        count = 0
    if not arch or count < 1:
        raise argparse.ArgumentTypeError(f"--arch-chips {text!r}: expected ARCH=N with N >= 1, e.g. resnet=3")
    return arch, count


def chip_counts(models, default: int, overrides: list[tuple[str, int]] | None) -> dict[str, int]:
    """Chip instances per architecture of ``models``: ``default`` unless ``overrides`` names it."""
    given = dict(overrides or [])
    archs = {m.arch for m in models}
    unknown = sorted(set(given) - archs)
    if unknown:
        raise SystemExit(f"--arch-chips names {unknown}, not among the models' architectures {sorted(archs)}")
    return {a: given.get(a, default) for a in sorted(archs)}


def curve_of(
    models, arms: list[str], ages: list[str], curve_ages: list[str] | None, archs: list[str] | None, every_chip=False
) -> Curve:
    """The accuracy-vs-age curve's extra ages (for the first arm); ``archs`` must be among the models'."""
    known = {m.arch for m in models}
    unknown = sorted(set(archs or ()) - known)
    if unknown:
        raise SystemExit(f"--curve-archs names {unknown}, not among the models' architectures {sorted(known)}")
    extra = tuple(a for a in dict.fromkeys(curve_ages or ()) if a not in ages)
    return Curve(extra, frozenset(archs) if archs else None, arms[0], every_chip)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m studies.fmnist_study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", type=Path, default=list(DEFAULT_MODELS), help="folders/ONNX files to search")
    ap.add_argument("--archs", nargs="+", default=None, help="only these architectures")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="column scaling arms")
    ap.add_argument("--chips", type=int, default=10, help="chip instances per model (default 10)")
    ap.add_argument(
        "--arch-chips",
        nargs="+",
        type=arch_chips,
        default=None,
        metavar="ARCH=N",
        help="another chip count for an architecture's models, e.g. resnet=3 (its cells cost more)",
    )
    ap.add_argument(
        "--extra-chips",
        type=int,
        default=None,
        metavar="N",
        help="only the first N chips get the cells beyond the first arm at the table ages (the other arms, "
        "the --curve-ages); every chip gets those (default: every chip gets every cell)",
    )
    ap.add_argument("--ages", nargs="+", type=age_label, default=list(AGE_SCHEDULE), help="e.g. 1d 1y (default all)")
    ap.add_argument(
        "--curve-ages",
        nargs="+",
        type=age_label,
        default=None,
        help="more ages for the accuracy-vs-age figure, evaluated for the first arm only (max scaling), "
        "e.g. 1s 10y: the long age axis for a fraction of the cells",
    )
    ap.add_argument(
        "--curve-archs", nargs="+", default=None, help="only these architectures get the --curve-ages (default all)"
    )
    ap.add_argument(
        "--curve-every-chip",
        action="store_true",
        help="the --curve-ages get every chip, as the table ages do (--extra-chips then limits only the other arms)",
    )
    ap.add_argument("--limit-images", type=int, default=N_TEST, help="first N test images (default all 10 000)")
    ap.add_argument("--cache", type=Path, default=CACHE_DIR, help=f"cell cache (default {CACHE_DIR})")
    ap.add_argument("--profile", default="pcm")
    ap.add_argument("--budget-min", type=float, default=None, help="stop computing cells after this many minutes")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads per chip")
    ap.add_argument(
        "--shard",
        type=shard,
        default=(0, 1),
        help="I/N: compute only chips k with k %% N == I (N processes in parallel)",
    )
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    ap.add_argument("--skip-mu", action="store_true", help="leave out the robustness midpoint (needs torch)")
    ap.add_argument("--mu-images", type=int, default=2000, help="test images of the µ sweeps (default 2000)")
    ap.add_argument("--mu-boot", type=int, default=200)
    ap.add_argument("--demonstration", default=None, help="label the page a pipeline demonstration, with this text")
    ap.add_argument("--render-only", action="store_true", help="re-render README.md and PNGs from results.json")
    ap.add_argument(
        "--no-archive",
        action="store_true",
        help="neither read the committed cell archive (reports/fmnist/cells/, one zip per model) nor write "
        "<out>/cells/ (by default a run starts from the committed cells and archives its own beside its report)",
    )
    ap.add_argument("--no-progress", action="store_true")
    outputs.add_arguments(ap, OUT_DIR)
    return ap


def write(res: dict, out: Path) -> None:
    """results.json, README.md and the PNGs of ``res`` into ``out``."""
    (out / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    (out / "README.md").write_text(render_markdown(res))
    plot_ages(res, out / "accuracy_vs_age.png")
    plot_midpoint(res, out / "midpoint.png")


def run(
    args: argparse.Namespace, command: str, restore_from: Sequence[Path] = (), archive_to: Path | None = None
) -> dict:
    """The study's results. The cell cache is first filled from the archives ``restore_from``
    (:mod:`studies.cell_archive`); ``archive_to`` then gains what the cache holds for these models."""
    t0 = time.perf_counter()
    models = find_models(args.models, args.archs)
    if not models:
        raise SystemExit(f"no Fashion-MNIST models (ONNX with agedchip.recipe metadata) under {args.models}")
    chips = chip_counts(models, args.chips, args.arch_chips)
    curve = curve_of(models, args.arms, args.ages, args.curve_ages, args.curve_archs, args.curve_every_chip)
    store = CellStore(args.cache, args.profile, args.limit_images)
    digests = sorted({m.digest for m in models})
    restored = sum(cell_archive.restore(a, args.cache, digests) for a in dict.fromkeys(restore_from))
    budget = None if args.budget_min is None else 60 * args.budget_min
    progress = not args.no_progress
    extra = args.extra_chips
    if extra is not None and extra < 1:
        raise SystemExit(f"--extra-chips {extra}: expected N >= 1")
    log = evaluate(store, models, args.arms, chips, args.ages, args.threads, budget, progress, args.shard, curve, extra)
    complete = complete_chips(store, models, args.arms, chips, args.ages, curve, extra)
    cells, fp, used = load_cells(store, models, args.arms, chips, args.ages, curve, extra, complete)
    extra_used = complete[1]
    analysis = analyse(models, cells, fp, used, args.ages, args.arms, args.boot, curve=curve, extra_used=extra_used)
    mu = None
    if not args.skip_mu:
        from studies.fmnist_midpoint import midpoint_study

        mu = midpoint_study(
            models, args.cache, min(args.mu_images, args.limit_images), args.mu_boot, progress=not args.no_progress
        )
    archived = 0 if archive_to is None else cell_archive.archive(archive_to, args.cache, digests)
    secs = log.cell_seconds or []
    meta = {
        "command": command,
        "demonstration": args.demonstration,
        "profile": args.profile,
        "mvm_noise": str(CELL_NOISE),
        "cell_version": CELL_VERSION,
        "n_images": args.limit_images,
        "chips": chips,
        "chips_used": used,
        "extra_chips": extra,
        "extra_chips_used": extra_used,
        "ages": args.ages,
        "arms": args.arms,
        "curve": {
            "ages": list(curve.ages),
            "arm": curve.arm,
            "archs": sorted(curve.archs) if curve.archs is not None else sorted({m.arch for m in models}),
            "every_chip": curve.every_chip,
        },
        "cells_computed": log.computed,
        "cells_left": log.left,
        "cache_files_restored": restored,
        "cache_files_archived": archived,
        "cell_seconds_median": float(np.median(secs)) if secs else 0.0,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, {args.threads} onnxruntime thread(s)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    public = [
        {
            "arch": m.arch,
            "mode": m.mode,
            "seed": m.seed,
            "digest": m.digest,
            "file": str(m.onnx_path.relative_to(REPO) if m.onnx_path.is_relative_to(REPO) else m.onnx_path),
        }
        for m in models
    ]
    return {"meta": meta, "models": public, "analysis": analysis, "midpoint": mu}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.render_only:
        out = args.out or OUT_DIR
        if out == OUT_DIR and not args.replace:
            raise SystemExit(f"--render-only rewrites the committed report in {OUT_DIR}: pass --replace (or --out)")
        write(json.loads((out / "results.json").read_text()), out)
        print(f"re-rendered {out} from results.json")
        return
    out = outputs.output_dir("fmnist", OUT_DIR, args.out, args.replace, FILES)
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    command = f"python -m studies.fmnist_study {argv_text}".strip()
    if args.no_archive:
        res = run(args, command)
    else:  # the committed archive is read by every run, and written only by one that writes the committed report
        res = run(args, command, [cell_archive.COMMITTED, out / cell_archive.ARCHIVE], out / cell_archive.ARCHIVE)
    write(res, out)
    m = res["meta"]
    print(
        f"report written to {out} in {m['seconds']:.0f} s; cells computed {m['cells_computed']}, left {m['cells_left']}"
    )


if __name__ == "__main__":
    main()
