"""Where the study, benchmark and training commands write: never over committed results by accident.

A command run without ``--out`` writes into a new folder ``runs/<command>/<UTC time>/`` (git-ignored),
so trying a documented command never replaces the results, reports or zoo files in the repository.
``--replace`` writes into the committed folder itself (what regenerating them means), and an
``--out`` folder that already holds one of the files is refused unless ``--replace`` is given too.
Used by ``bench.*``, ``models.build_zoo`` and ``models.train`` (no torch here: bench imports it).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Root of the new folders (in .gitignore).
RUNS = REPO / "runs"


def add_arguments(ap: argparse.ArgumentParser, committed: Path) -> None:
    """``--out`` and ``--replace`` for a command whose committed results live in ``committed``."""
    rel = committed.relative_to(REPO) if committed.is_relative_to(REPO) else committed
    ap.add_argument(
        "--out", type=Path, default=None, help="folder to write into (default: a new folder runs/<command>/<time>/)"
    )
    ap.add_argument(
        "--replace", action="store_true", help=f"write into the committed folder {rel}/ (or overwrite files in --out)"
    )


def output_dir(
    command: str,
    committed: Path,
    out: Path | None,
    replace: bool,
    files: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> Path:
    """The folder a run of ``command`` writes ``files`` into (created), after the rules above; a refusal
    is a ``SystemExit`` with the message (exit status 1)."""
    if out is None and replace:
        out = committed
    elif out is None:
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
        out = RUNS / command / stamp
        n = 1
        while out.exists():  # two runs within a second
            n += 1
            out = RUNS / command / f"{stamp}-{n}"
    elif not replace:
        taken = sorted(f for f in files if (out / f).exists())
        if taken:
            raise SystemExit(
                f"{out} already holds {', '.join(taken)}: pass --replace to overwrite, "
                f"or leave out --out to write into a new folder under {RUNS}"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out
