"""The model zoo as the service reads it: ``<name>.onnx``, ``<name>.eval.npz`` and ``index.json``.

``index.json`` is what ``python -m models.build_zoo`` writes: an object whose ``models`` is a list
of entries with a ``name`` (and description, accuracy, sizes…). An index in any other shape is
ignored with a warning: the files alone still make the zoo. Reading it never imports torch.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from service.problems import InvalidField

log = logging.getLogger("agedchip.service")

ZOO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def read_index(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a zoo ``index.json`` by model name; empty when the file is absent or unreadable."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        log.warning("%s: expected an object with a list 'models' (as models.build_zoo writes); ignored", path)
        return {}
    return {e["name"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)}


class Zoo:
    """Read-only model zoo in a folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = {p.name[: -len(".onnx")] for p in self.root.glob("*.onnx")}
        return sorted(n for n in found if ZOO_NAME_RE.match(n))

    def listing(self) -> list[dict[str, Any]]:
        """Every model with the scalar fields of its index entry and whether it ships an eval set."""
        index = read_index(self.root / "index.json")
        out = []
        for name in self.names():
            entry = {
                k: v for k, v in index.get(name, {}).items() if isinstance(v, (str, int, float, bool)) or v is None
            }
            entry.update(name=name, has_eval_set=(self.root / f"{name}.eval.npz").is_file())
            out.append(entry)
        return out

    def check_name(self, name: str, field_name: str = "model") -> str:
        if not isinstance(name, str) or not ZOO_NAME_RE.match(name):
            raise InvalidField(field_name, f"{field_name}: {name!r} is not a valid zoo model name")
        if name not in self.names():
            raise InvalidField(field_name, f"{field_name}: no zoo model {name!r}; available: {self.names()}")
        return name

    def model_bytes(self, name: str) -> bytes:
        return (self.root / f"{self.check_name(name)}.onnx").read_bytes()

    def eval_bytes(self, name: str) -> bytes | None:
        path = self.root / f"{self.check_name(name)}.eval.npz"
        return path.read_bytes() if path.is_file() else None
