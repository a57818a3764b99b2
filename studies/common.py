"""What the studies share: time constants and the age schedule, the zoo reader, Markdown cells and
headless plots. numpy only (no torch): the recalibration studies run without it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chipsim.ages import STANDARD_AGES_S
from chipsim.modes import MvmNoiseSource

REPO = Path(__file__).resolve().parent.parent
ZOO_DIR = REPO / "models" / "zoo"
REPORTS_DIR = REPO / "reports"

#: The per-MVM noise sampler of every study: the exact ziggurat, so committed reports and cached
#: cells stay one noise model and reproduce bit for bit (the service's default is the faster
#: ``fresh-q16``, whose marginal is within 2^-16 of it in CDF: chipsim.mvm_noise).
STUDY_NOISE = MvmNoiseSource.FRESH

# --------------------------------------------------------------------------- time
#: Ages (s since programming) at which the accuracy study reads every chip: chipsim's standard
#: schedule 1 s … 10 y (the service's evaluation schedule), labelled "1 s", "1 h" … for tables.
AGE_SCHEDULE: dict[str, float] = {f"{label[:-1]} {label[-1]}": age for label, age in STANDARD_AGES_S.items()}


# --------------------------------------------------------------------------- the zoo
@dataclass(frozen=True)
class ZooModel:
    """One zoo model: its ``index.json`` entry, its ONNX file and the labelled eval set shipped
    beside it (``x`` float32 (N, 1, 8, 8), ``y`` int64 (N,))."""

    entry: dict[str, Any]
    onnx: bytes
    x: np.ndarray
    y: np.ndarray

    @property
    def name(self) -> str:
        return self.entry["name"]


def read_zoo(zoo_dir: Path = ZOO_DIR, names: Sequence[str] | None = None) -> list[ZooModel]:
    """The models of ``zoo_dir/index.json`` in index order, or those named in ``names`` in that
    order. Raises ``ValueError`` naming the unknown ones."""
    entries = {e["name"]: e for e in json.loads((Path(zoo_dir) / "index.json").read_text())["models"]}
    wanted = list(entries) if names is None else list(names)
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise ValueError(f"models: {unknown} not in {zoo_dir}/index.json; known: {sorted(entries)}")
    return [_read_entry(Path(zoo_dir), entries[n]) for n in wanted]


def _read_entry(zoo_dir: Path, entry: dict[str, Any]) -> ZooModel:
    ev = np.load(zoo_dir / entry["eval_set"])
    return ZooModel(
        entry=entry,
        onnx=(zoo_dir / entry["file"]).read_bytes(),
        x=np.asarray(ev["x"], np.float32),
        y=np.asarray(ev["y"], np.int64),
    )


def chip_accuracy(runtime, x: np.ndarray, y: np.ndarray, age_s: float, gdc: bool, seed: int = 0) -> float:
    """Top-1 accuracy of one chip (a ``chipsim.runtime.ChipRuntime``) at ``age_s`` seconds:
    read-out seed 0, per-MVM noise ``seed``."""
    logits = runtime.run(x, age_s, read_seed=0, gdc=gdc, seed=seed)[0]
    return float((logits.argmax(1) == y).mean())


# --------------------------------------------------------------------------- Markdown
def md_row(cells: Iterable[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def mean_std(values: Sequence[float], digits: int = 2, scale: float = 100.0) -> str:
    """``"mean ± std"`` of ``values × scale`` (default: fractions as percent); ``–`` if empty."""
    if len(values) == 0:
        return "–"
    return f"{float(np.mean(values)) * scale:.{digits}f} ± {float(np.std(values)) * scale:.{digits}f}"


def fixed(x: float | None, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals; ``–`` for None/NaN, ``∞`` for infinity."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def significant(x: float) -> str:
    """``x`` to two significant digits; ``–`` for NaN, ``∞`` for infinity."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "∞" if math.isinf(x) else "–"
    return f"{x:.2g}"


# --------------------------------------------------------------------------- plots
def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: studies run on servers and in CI, headless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
