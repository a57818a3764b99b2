"""Size rules of the code base (issue #16): every function at most 80 lines; every module outside
``tests/`` at most 450 lines (the ~400 of the rule, with room to grow before a split is due),
except the modules listed in :data:`LONG_MODULES` with the reason they stay whole.

The checks are plain functions over source text, tested first on synthetic sources (so that a
check that found nothing because it was broken would fail here), then run over the repository.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Folders holding the project's Python files (never .venv, runs/ or state/).
ROOTS = ("bench", "chipsim", "docs", "models", "service", "studies", "tests")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450
#: Modules longer than MAX_MODULE_LINES, and why they are not split (yet).
LONG_MODULES: dict[str, str] = {
    "chipsim/cost/counts.py": "operation counts of one compiled model: shapes, per-node digital counts and "
    "per-layer analog counts share the plan-to-node matching; not split in the issue #16 pass",
    "models/torch_chip.py": "the chip on torch tensors, device level and periphery, mirroring chipsim's "
    "formulas in one place (DESIGN §7); not split in the issue #16 pass",
}


def python_files(repo: Path = REPO, roots: tuple[str, ...] = ROOTS) -> list[Path]:
    """Every ``.py`` file under ``roots`` (symbolic links to folders not followed)."""
    out = []
    for root in roots:
        for folder, dirs, files in os.walk(repo / root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            out += [Path(folder) / f for f in sorted(files) if f.endswith(".py")]
    return out


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit`` lines, decorators included."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > limit:
                out.append((node.name, lines))
    return out


def module_lines(source: str) -> int:
    return len(source.splitlines())


def test_the_function_check_finds_a_function_one_line_too_long():
    def function(name: str, body_lines: int) -> str:
        return f"def {name}():\n" + "    x = 1\n" * (body_lines - 1) + "    return x\n"

    method = "    " + function("too_long", 80).replace("\n", "\n    ")
    source = function("fits", 79) + "\n\nclass C:\n    @staticmethod\n" + method
    # fits: the def line and 79 body lines (80); too_long: its decorator, def line and 80 body lines (82)
    assert long_functions(source) == [("too_long", 82)]
    assert long_functions(function("exactly", 79)) == []
    assert long_functions(function("one_over", 80)) == [("one_over", 81)]


def test_the_module_check_counts_lines():
    assert module_lines("a = 1\n" * 451) == 451
    assert module_lines("a = 1\n" * 450 + "b = 2") == 451  # a last line without a newline counts


def test_the_walk_finds_nested_files_and_skips_caches(tmp_path):
    (tmp_path / "pkg" / "sub" / "__pycache__").mkdir(parents=True)
    for rel in ("pkg/a.py", "pkg/sub/b.py", "pkg/sub/__pycache__/c.py", "pkg/notes.txt", "other/d.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in python_files(tmp_path, ("pkg",))]
    assert found == ["pkg/a.py", "pkg/sub/b.py"]


def test_every_function_is_at_most_80_lines():
    files = python_files()
    assert len(files) > 200  # the walk found the project
    found = [
        f"{p.relative_to(REPO)}: {name} has {n} lines"
        for p in files
        for name, n in long_functions(p.read_text(encoding="utf-8"))
    ]
    assert found == [], "split these by job (at most 80 lines a function):\n" + "\n".join(found)


def test_every_module_outside_tests_is_at_most_450_lines():
    found = []
    for p in python_files():
        rel = p.relative_to(REPO).as_posix()
        n = module_lines(p.read_text(encoding="utf-8"))
        if not rel.startswith("tests/") and n > MAX_MODULE_LINES and rel not in LONG_MODULES:
            found.append(f"{rel}: {n} lines")
    assert found == [], "split these into modules with one job each (or justify them in LONG_MODULES):\n" + "\n".join(
        found
    )


def test_every_listed_long_module_is_still_long():
    """An entry whose module was split (or removed) must go, so the list says what is true."""
    stale = [
        rel
        for rel in LONG_MODULES
        if not (REPO / rel).is_file() or module_lines((REPO / rel).read_text(encoding="utf-8")) <= MAX_MODULE_LINES
    ]
    assert stale == [], f"remove from LONG_MODULES (now short or gone): {stale}"
