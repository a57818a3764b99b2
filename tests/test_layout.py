"""Rules of the repository's layout that the import-linter contracts (pyproject.toml, run by
`make test`) cannot express: import-linter's wildcards match whole module names only, so "no
test module imports another test module" is checked here, from the source."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(path: Path) -> set[str]:
    """Names of the ``tests.test_*`` modules that the file at ``path`` imports (any form)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: from . import test_x / from .test_x import y
            names = [f"tests.{node.module}"] if node.module else [f"tests.{a.name}" for a in node.names]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.startswith("tests.test_")}
    return out


def test_the_checker_sees_every_import_form(tmp_path):
    src = tmp_path / "test_probe.py"
    src.write_text(
        "import tests.test_a\nfrom tests.test_b import x\nfrom tests import test_c, onnx_models\n"
        "from .test_d import y\nfrom . import test_e\nfrom tests.onnx_models import mlp\n"
    )
    assert imported_test_modules(src) == {"test_a", "test_b", "test_c", "test_d", "test_e"}


def test_no_test_module_imports_another():
    """Shared test code lives in helper modules without the test_ prefix (tests/onnx_models.py,
    tests/dockerfile.py, tests/service_process.py) or in conftest.py, never in a test module."""
    found = {
        (path.stem, imported) for path in sorted(TESTS.glob("test_*.py")) for imported in imported_test_modules(path)
    }
    assert found == set()
