"""The OpenAPI document against a read-only replica (AGEDCHIP_READ_ONLY=true): the routes that answer
405 there are exactly the ones that document it, with the body and ``Allow`` header they really send.

The set of refused routes is found by asking the replica (every non-GET operation of the document,
sent to it), not read from the code that declares the responses, so a route that gains a writer
check without documenting it (or documents one it does not make) fails here."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.openapi_doc import EXAMPLES, operations
from tests.service_helpers import err, make_settings

#: Values for path parameters: nothing needs to exist, the replica refuses before looking.
PATH_VALUES = {"{chip_id}": "default", "{job_id}": "nope", "{fleet_id}": "fl", "{model_name}": "default"}
READ_ONLY_PREFIX = "this service is a read-only replica (AGEDCHIP_READ_ONLY=true): it cannot "


@pytest.fixture(scope="module")
def replica(shared, zoo):
    """A read-only replica of the shared writer's state folder (the writer keeps serving beside it)."""
    with TestClient(create_app(make_settings(shared.state_dir, zoo, read_only=True))) as c:
        yield c


@pytest.fixture(scope="module")
def doc(replica) -> dict[str, Any]:
    return replica.get("/openapi.json").json()


@pytest.fixture(scope="module")
def refused(replica, doc) -> dict[tuple[str, str], Any]:
    """(method, path) → the replica's answer, for every non-GET operation it refuses with 405."""
    out = {}
    for method, path, _ in operations(doc):
        if method in ("get", "head", "options"):
            continue
        url = path
        for name, value in PATH_VALUES.items():
            url = url.replace(name, value)
        r = replica.request(method.upper(), url, json={})
        if r.status_code == 405:
            out[(method, path)] = r
    return out


def test_the_replica_refuses_the_routes_that_change_the_store(refused):
    """What the replica refuses (the test below relies on this set being the right one)."""
    assert set(refused) == {
        ("post", "/program"),
        ("delete", "/chips/{chip_id}"),
        ("post", "/chips/{chip_id}/recalibrate"),
        ("post", "/fleets"),
        ("delete", "/fleets/{fleet_id}"),
    }


def test_every_refused_route_documents_405_and_no_other_does(doc, refused):
    documented = {(method, path) for method, path, op in operations(doc) if "405" in op["responses"]}
    assert documented == set(refused)


def test_the_documented_405_is_what_the_replica_sends(doc, refused):
    for (method, path), r in refused.items():
        where = f"{method.upper()} {path}"
        response = doc["paths"][path][method]["responses"]["405"]
        content = response["content"]["application/json"]
        jsonschema.Draft202012Validator({**content["schema"], "components": doc["components"]}).validate(r.json())
        assert err(r) == (405, None), where
        assert r.json()["error"]["message"].startswith(READ_ONLY_PREFIX), where
        # Allow: the other methods of the path that the replica still serves (documented, not refused)
        assert "Allow" in response["headers"] and response["headers"]["Allow"]["schema"] == {"type": "string"}
        allowed = {m.upper() for m, _ in doc["paths"][path].items() if m != method and (m, path) not in refused}
        sent = {m.strip() for m in r.headers["allow"].split(",") if m.strip()}
        assert sent == allowed, (where, r.headers["allow"])
    # the example is the body POST /program really gets, word for word
    example = EXAMPLES["errors"]["native"]["405"]
    assert doc["paths"]["/program"]["post"]["responses"]["405"]["content"]["application/json"]["example"] == example
    assert refused[("post", "/program")].json() == example


def test_the_writer_documents_the_same_405(shared, doc):
    """The document does not depend on the mode: clients of the writer see the 405 a replica may send."""
    assert shared.get("/openapi.json").json() == doc
