"""Programming speed of this tree against an earlier revision, interleaved in one process.

    python -m bench.program_ab [--rev f08e7ad] [--rounds 3] [--resnet]

The revision's ``chipsim`` is exported with ``git archive`` into a temporary folder as the package
``chipsim_old`` (its imports rewritten), so both run in this process, alternately (old, new, old,
new...) on the same model bytes: ``program_onnx`` on 'pcm', seed 0, wall time per analog weight.
Prints the median and range of each and of the ratio new/old. Nothing is written.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export_old(rev: str, dest: Path) -> None:
    """``chipsim`` at ``rev`` as the package ``dest/chipsim_old``."""
    archive = dest / "old.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "chipsim"], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (dest / "chipsim").rename(dest / "chipsim_old")
    for path in (dest / "chipsim_old").rglob("*.py"):
        text = re.sub(r"\bchipsim\.", "chipsim_old.", path.read_text())
        text = re.sub(r"\b(from|import) chipsim\b", r"\1 chipsim_old", text)
        path.write_text(text)


def compare(name: str, model: bytes, rounds: int) -> None:
    import chipsim_old
    from chipsim_old.compiler import program_onnx as old_program

    import chipsim
    from chipsim.compiler import program_onnx as new_program

    runs = {"old": (old_program, chipsim_old.get_profile("pcm")), "new": (new_program, chipsim.get_profile("pcm"))}
    ns: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, (program, profile) in runs.items():
            t0 = time.perf_counter()
            chip = program(model, profile, 0)
            ns[key].append((time.perf_counter() - t0) / chip.n_weights * 1e9)
            del chip
    ratio = [b / a for a, b in zip(ns["old"], ns["new"], strict=True)]
    cells = ", ".join(f"{k} {statistics.median(v):.0f} ns/weight [{min(v):.0f}–{max(v):.0f}]" for k, v in ns.items())
    print(f"{name}: {cells}; new/old {statistics.median(ratio):.2f} [{min(ratio):.2f}–{max(ratio):.2f}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="f08e7ad", help="the earlier revision (default: before #20.7's work)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=1000, help="MLP width (8 layers of width², random weights)")
    ap.add_argument("--resnet", action="store_true", help="also resnet18 at 224x224 (needs torch to export)")
    args = ap.parse_args()
    from bench.scale import mlp, resnet18

    models = {f"MLP 8×{args.width}²": mlp(args.width)}
    if args.resnet:
        models["resnet18"] = resnet18()
    with tempfile.TemporaryDirectory() as tmp:
        export_old(args.rev, Path(tmp))
        sys.path.insert(0, tmp)
        for name, model in models.items():
            compare(name, model, args.rounds)


if __name__ == "__main__":
    main()
