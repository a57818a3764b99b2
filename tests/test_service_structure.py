"""The service's structure: the import graph (no circle, the domain free of HTTP types), problems
mapped to status codes in one place, one zoo index format, and /program checking the eval set
before it programs a chip, which it then builds with the eval set instead of mutating it."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import chipsim.runtime
import service.registry
from service import errors, problems
from service.app import create_app
from service.zoo import Zoo
from tests.service_helpers import ZOO_MODEL, err, eval_npz, make_settings, tiny_model

SERVICE = Path(__file__).resolve().parent.parent / "service"
#: The HTTP edge: the only modules that may use FastAPI or Starlette (directly or through imports).
EDGE = {"service.app", "service.errors", "service.middleware", "service.openapi_doc"}
HTTP_PACKAGES = {"fastapi", "starlette"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """service module → every module it imports, wherever the import statement is."""
    graph: dict[str, set[str]] = {}
    for path in SERVICE.rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)  # `from service import errors`
        graph[_module_name(path)] = found
    return graph


def test_service_imports_have_no_circle_and_no_import_hides_in_a_function():
    graph = _imports()
    internal = {m: {i for i in imps if i in graph and i != m} for m, imps in graph.items()}
    for path in set(SERVICE.rglob("*.py")) - {SERVICE / "__main__.py"}:  # the entry point imports lazily: fast --help
        for fn in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service"):
                    pytest.fail(f"{path.name}:{node.lineno}: {fn.name} imports {node.module} inside the function")
    state: dict[str, str] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for n in sorted(internal[m]):
            if state.get(n) == "open":
                pytest.fail(f"import circle: {' → '.join(stack[stack.index(n) :] + [n])}")
            if n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(internal):
        if m not in state:
            visit(m, [m])


def test_the_domain_imports_no_http_types():
    graph = _imports()
    edge = EDGE | {m for m in graph if m.startswith("service.routes")}
    for m in sorted(set(graph) - edge - {"service.__main__", "service.cli"}):  # entry points start the app
        seen, todo = set(), [m]
        while todo:  # every service module it reaches
            cur = todo.pop()
            if cur in seen:
                continue
            seen.add(cur)
            assert cur not in edge, f"{m} reaches the HTTP edge module {cur}"
            http = {i for i in graph[cur] if i.split(".")[0] in HTTP_PACKAGES}
            assert not http, f"{m} reaches {cur}, which imports {sorted(http)}"
            todo.extend(i for i in graph[cur] if i in graph)


def test_problems_map_to_native_and_oip_status_codes():
    cases = [
        (problems.InvalidField("x", "x: bad"), 422, 400),
        (problems.NotFound("chip_id", "chip_id: no"), 404, 404),
        (problems.Conflict("chip_id", "chip_id: taken"), 409, 409),
        (problems.Unauthorized("api_key", "api_key: no"), 401, 401),
        (problems.UnsupportedMediaType("content-type", "content-type: no"), 415, 415),
        (problems.Unavailable(None, "shutting down"), 503, 503),
    ]
    for problem, native, oip in cases:
        assert (errors.status_of(problem), errors.status_of(problem, oip=True)) == (native, oip), problem
    body = json.loads(errors.problem_response(problems.InvalidField("age", "age: bad"), oip=True).body)
    assert body == {"error": "age: bad", "status": 400, "field": "age"}


def test_zoo_reads_the_index_models_build_zoo_writes(tmp_path, caplog):
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "a.eval.npz").write_bytes(b"")
    (tmp_path / "b.onnx").write_bytes(b"")
    index = {"default": "a", "models": [{"name": "a", "description": "an MLP", "n_eval": 3, "nested": {"x": 1}}]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert Zoo(tmp_path).listing() == [
        {"name": "a", "description": "an MLP", "n_eval": 3, "has_eval_set": True},  # scalars only
        {"name": "b", "has_eval_set": False},
    ]
    (tmp_path / "index.json").write_text(json.dumps({"a": {"description": "another format"}}))
    with caplog.at_level(logging.WARNING, logger="agedchip.service"):
        assert Zoo(tmp_path).listing()[0] == {"name": "a", "has_eval_set": True}
    assert "ignored" in caplog.text


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_program_checks_the_eval_set_before_programming(client, monkeypatch):
    programmed, runtimes = [], []
    real_program, real_init = service.registry.program_onnx, chipsim.runtime.ChipRuntime.__init__

    def program_onnx(*args, **kw):
        programmed.append(real_program(*args, **kw))
        return programmed[-1]

    def init(self, *args, **kw):
        runtimes.append(self)
        real_init(self, *args, **kw)

    monkeypatch.setattr(service.registry, "program_onnx", program_onnx)
    monkeypatch.setattr(chipsim.runtime.ChipRuntime, "__init__", init)
    model = tiny_model()
    wrong_shape = _npz(x=np.zeros((5, 1, 8, 7), np.float32), y=np.zeros(5, np.int64))
    for eval_bytes in (wrong_shape, b"not an npz"):
        r = client.post("/program", files={"model": ("m.onnx", model, "x"), "eval": ("e.npz", eval_bytes, "x")})
        assert err(r) == (422, "eval")
    assert programmed == [] and runtimes == []  # refused before programming, no onnxruntime session
    r = client.post(
        "/program",
        files={"model": ("m.onnx", model, "x"), "eval": ("e.npz", eval_npz(model, n=30), "x")},
        data={"chip_id": "with-eval"},
    )
    assert r.status_code == 201 and r.json()["eval_samples"] == 30, r.text
    assert len(programmed) == 1 and len(runtimes) == 1  # the serving runtime only
    # the chip programming returned was not changed; the published one carries the eval set
    assert "eval.npz" not in programmed[0].attachments
    assert "eval.npz" in client.app.state.registry.get("with-eval").chip.attachments


def test_the_eval_set_is_stored_with_the_chip(tmp_path, zoo):
    model = tiny_model()
    settings = make_settings(tmp_path / "state", zoo, default_model=ZOO_MODEL)
    with TestClient(create_app(settings)) as c:
        files = {"model": ("m.onnx", model, "x"), "eval": ("e.npz", eval_npz(model, n=40), "x")}
        assert c.post("/program", files=files, data={"chip_id": "kept"}).status_code == 201
    with TestClient(create_app(settings)) as c:  # reloaded from the store
        assert c.get("/chips/kept").json()["eval_samples"] == 40
        r = c.post("/chips/kept/evaluate", json={"ages": ["1h"], "readouts": 1})
        assert r.status_code == 200 and r.json()["samples"] == 40
