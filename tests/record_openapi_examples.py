"""Re-record the numbers of ``service/openapi_examples.json`` from the zoo's default chip.

The OpenAPI examples are real answers of the service (the zoo's ``cnn-hwa`` programmed as chip
``default``, seeded requests). When chipsim's physics or noise streams change, their numbers go
stale and ``tests/test_openapi.py::test_examples_replayed_against_the_zoo_chip`` says so; then run

    python -m tests.record_openapi_examples

which replays every example request (infer, OIP infer, evaluate, drift) and writes the responses
back, keeping the requests and the error examples as they are. Test support code, not a test.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.openapi_doc import EXAMPLES_FILE
from tests.service_helpers import make_settings

REPO = Path(__file__).resolve().parent.parent


def _round(value, digits: int = 4):
    """Examples are read by people: 4 significant-ish decimals, like the recorded ones."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    return value


def record() -> dict:
    examples = json.loads(EXAMPLES_FILE.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(Path(tmp) / "state", REPO / "models" / "zoo", default_model="cnn-hwa")
        with TestClient(create_app(settings)) as client:
            answers = {
                "infer": client.post("/infer", json=examples["infer"]["request"]),
                "oip_infer": client.post("/v2/models/default/infer", json=examples["oip_infer"]["request"]),
                "evaluate": client.post("/chips/default/evaluate", json=examples["evaluate"]["request"]),
                "drift": client.get("/chips/default/drift", params=examples["drift"]["query"]),
            }
    for name, r in answers.items():
        if r.status_code != 200:
            raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
        examples[name]["response"] = _round(r.json())
    return examples


def main() -> None:
    examples = record()
    EXAMPLES_FILE.write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {EXAMPLES_FILE}")


if __name__ == "__main__":
    main()
