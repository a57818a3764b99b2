"""Train every arm of the hardening study (issue #18), one after another, resumably.

    nice -n 10 python -m studies.hardening_train --seeds 0 1 2          # all arms × both archs
    python -m studies.hardening_train --seeds 0 --dry-run              # what it would run
    python -m studies.hardening_train --archs resnet --modes plain noisy --seeds 0 \\
        --train-args --limit-train 512 --epochs 1                      # a smoke run

Each run is its own process (``python -m models.train_fmnist``) writing into
``<runs>/<arch>-<mode>-s<seed>/``. A finished run (``result.json``) is skipped, an interrupted
one continues from its last epoch (``--resume``), so the command can be killed and restarted at
any time, and a later session with more compute just runs it again. Per architecture and seed
``plain`` runs first: it is the teacher of ``hwa`` (which fine-tunes it, the repository's HWA
recipe). Every other arm trains from scratch on the plain recipe (:mod:`models.hardening_arms`).
Arguments after ``--train-args`` go to every ``models.train_fmnist`` call unchanged.

Time on this host (2 cores, shared; docs/studies.md has the measured seconds per step): one
ResNet arm of 30 epochs is several hours, so the full grid (2 archs × 6 arms × 3 seeds) is days.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from studies.hardening import RUNS_DIR
from studies.hardening_grid import ARCHS, MODES


def plan(runs: Path, archs: list[str], modes: list[str], seeds: list[int]) -> list[tuple[str, str, int, Path]]:
    """(arch, mode, seed, folder) in training order: per arch and seed, plain first."""
    ordered = sorted(modes, key=lambda m: (m != "plain", MODES.index(m) if m in MODES else len(MODES)))
    return [(a, m, s, runs / f"{a}-{m}-s{s}") for a in archs for s in seeds for m in ordered]


def command(arch: str, mode: str, seed: int, out: Path, teacher: Path, threads: int, extra: list[str]) -> list[str]:
    """The ``models.train_fmnist`` call of one run: resumed if it has a checkpoint."""
    cmd = [sys.executable, "-m", "models.train_fmnist", "--arch", arch, "--mode", mode, "--seed", str(seed)]
    cmd += ["--out", str(out), "--threads", str(threads), "--no-progress", *extra]
    if (out / "checkpoint.pt").is_file():
        cmd.append("--resume")
    elif out.exists():
        cmd.append("--overwrite")  # killed before its first epoch ended: nothing to keep
    if mode in ("hwa", "recipe"):
        cmd += ["--teacher", str(teacher)]
    return cmd


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--train-args" in argv:
        i = argv.index("--train-args")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=RUNS_DIR)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    if "hwa" in args.modes and "plain" not in args.modes:
        raise SystemExit("--modes: hwa fine-tunes the plain run of its arch and seed; include plain")
    for arch, mode, seed, out in plan(args.runs, args.archs, args.modes, args.seeds):
        if (out / "result.json").is_file():
            print(f"done     {out}", flush=True)
            continue
        cmd = command(arch, mode, seed, out, args.runs / f"{arch}-plain-s{seed}", args.threads, extra)
        print(("would run " if args.dry_run else "running  ") + " ".join(cmd[1:]), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
