"""Helpers shared by the benchmarks: machine description and result writing.

A benchmark writes ``<name>.json`` and ``<name>.md`` into a new folder ``runs/<name>/<time>/`` unless
run with ``--replace`` (the committed ``bench/results/``) or ``--out`` (:mod:`models.outputs`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

from models import outputs

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import numpy as np
    import onnxruntime as ort

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "command": " ".join(["python", "-m", *sys.argv[:1]]) if sys.argv else "",
    }


def result_files(name: str) -> tuple[str, str]:
    return f"{name}.json", f"{name}.md"


def output_dir(name: str, args) -> Path:
    """The folder of this run (``args`` parsed with :func:`models.outputs.add_arguments`)."""
    return outputs.output_dir(name, RESULTS, args.out, args.replace, result_files(name))


def write(name: str, data: dict, markdown: str, out: Path) -> tuple[Path, Path]:
    jpath, mpath = (out / f for f in result_files(name))
    jpath.write_text(json.dumps(data, indent=2) + "\n")
    mpath.write_text(markdown)
    return jpath, mpath


def proc_status_bytes(key: str, pid: int | str = "self") -> int:
    """A size field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")
