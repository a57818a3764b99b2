"""The API's own documentation: /docs and /redoc work offline, the OpenAPI document describes every
field (numbers with their unit), its examples are true (replayed against the zoo's chip), and the
error bodies the service really sends match the schemas it declares for them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import error_body
from service.openapi_doc import EXAMPLES, ROUTE_EXAMPLES, operations
from tests.service_helpers import err, make_settings, x_batch

REPO = Path(__file__).resolve().parent.parent
#: A number in a response or request is described with one of these (its unit, or that it has none).
UNIT_WORDS = ("second", "ratio", "dimensionless", "bytes", "µS", "input units", "[0, 1]", "joule")


@pytest.fixture(scope="module")
def doc(shared) -> dict[str, Any]:
    return shared.get("/openapi.json").json()


def validate(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """``instance`` against an OpenAPI 3.1 schema whose ``$ref``s point into the document's components."""
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(instance)


def schema_of(doc: dict[str, Any], method: str, path: str, status: int | str) -> dict[str, Any]:
    responses = doc["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, which it does not declare"
    return responses[str(status)]["content"]["application/json"]["schema"]


# ------------------------------------------------------------------------------ offline /docs, /redoc
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_service(shared, page):
    r = shared.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*'([^']+)'|spec-url=["']([^"']+)["']""", r.text)
    urls = [u for group in urls for u in group if u]
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and "/openapi.json" in urls, urls
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = shared.get(url)
        assert asset.status_code == 200 and asset.content, url
    for url in scripts:  # the real bundles, not a stub
        body = shared.get(url).text
        assert len(body) > 500_000 and ("SwaggerUIBundle" in body or "Redoc" in body), url


# ------------------------------------------------------------------------------ descriptions and units
def _properties(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(where, property schema) for every property of every schema anywhere in the document."""
    found = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if isinstance(prop, dict):
                found.append((f"{where}.{name}", prop))
        for key, value in node.items():
            found += _properties(value, f"{where}/{key}" if key != "properties" else where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _properties(value, f"{where}[{i}]")
    return found


def _types(prop: dict[str, Any]) -> set[str]:
    types = {prop.get("type")} if "type" in prop else set()
    for alt in prop.get("anyOf", []) + prop.get("oneOf", []):
        types |= _types(alt)
    if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
        types |= _types(prop["items"])
    return types - {None}


def test_every_field_and_parameter_is_described(doc):
    props = _properties(doc)
    assert len(props) > 150  # the walk found the schemas (inline request bodies included)
    missing = [where for where, prop in props if not prop.get("description")]
    assert not missing, f"{len(missing)} fields without a description: {missing}"
    for method, path, op in operations(doc):
        for param in op.get("parameters", []):
            assert param.get("description"), f"{method.upper()} {path}: parameter {param['name']} undescribed"


def test_every_number_names_its_unit(doc):
    floats = [(where, prop) for where, prop in _properties(doc) if "number" in _types(prop)]
    assert len(floats) > 30
    bare = [
        (where, prop["description"])
        for where, prop in floats
        if not any(word in prop["description"] for word in UNIT_WORDS)
    ]
    assert not bare, f"numbers without a unit: {bare}"


# ------------------------------------------------------------------------------ examples
def test_the_main_routes_have_examples_that_fit_their_schemas(doc):
    assert {name for name in ROUTE_EXAMPLES.values()} == {"infer", "program", "evaluate", "drift", "oip_infer"}
    for (method, path), name in ROUTE_EXAMPLES.items():
        op = doc["paths"][path][method]
        example = EXAMPLES[name]
        if "request" in example:
            content = op["requestBody"]["content"]["application/json"]
            assert content["example"] == example["request"]
            validate(doc, content["schema"], content["example"])
        for param in op.get("parameters", []):
            if param["name"] in example.get("query", {}):
                assert param["example"] == example["query"][param["name"]]
        ok = next(code for code in op["responses"] if code.startswith("2"))
        content = op["responses"][ok]["content"]["application/json"]
        assert content["example"] == example["response"], f"{method} {path}"
        validate(doc, content["schema"], content["example"])


def test_every_error_response_has_an_example_of_its_schema(doc):
    seen = 0
    for method, path, op in operations(doc):
        for code, response in op["responses"].items():
            if code >= "400":
                content = response["content"]["application/json"]
                if code == "503" and path in ("/readyz", "/v2/health/ready"):  # "not ready" is no error body
                    continue
                assert content["schema"]["$ref"].endswith(("/ErrorResponse", "/OipErrorResponse")), (path, code)
                assert "example" in content, f"{method.upper()} {path} {code}: no example"
                validate(doc, content["schema"], content["example"])
                seen += 1
    assert seen > 100


def test_a_schema_violation_is_caught(doc):
    """The validation above can fail: a wrong type and a missing field are rejected."""
    schema = schema_of(doc, "post", "/infer", 200)
    bad = {**EXAMPLES["infer"]["response"], "age_s": "one year"}
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, schema, bad)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, schema_of(doc, "post", "/infer", 422), EXAMPLES["errors"]["oip"]["400"])


def _same_keys(example: Any, real: Any, where: str = "") -> None:
    """The example has the shape of the real response: the same keys, recursively, and list lengths."""
    if isinstance(example, dict):
        assert isinstance(real, dict) and set(real) == set(example), f"{where}: {sorted(real)} vs {sorted(example)}"
        for key in example:
            if key not in ("values", "overrides"):  # profile fields: a dict of whatever the profile has
                _same_keys(example[key], real[key], f"{where}.{key}")
    elif isinstance(example, list) and example and isinstance(example[0], dict):
        assert isinstance(real, list) and len(real) == len(example), where
        for i, (e, r) in enumerate(zip(example, real)):
            _same_keys(e, r, f"{where}[{i}]")


@pytest.fixture(scope="module")
def zoo_client(tmp_path_factory):
    """The service with the real zoo and its default chip (the zoo's cnn-hwa), as the examples were recorded."""
    state = tmp_path_factory.mktemp("examples") / "state"
    settings = make_settings(state, REPO / "models" / "zoo", default_model="cnn-hwa")
    with TestClient(create_app(settings)) as c:
        yield c


def test_examples_replayed_against_the_zoo_chip(zoo_client, doc):
    """Each example request, sent as printed, answers with the example's shape and numbers close to it.
    Seeded requests are reproducible, so argmax and accuracy must agree exactly; logits and α are compared
    loosely (0.5 logit, 2 % α) so a change of the noise stream in chipsim does not make the examples wrong."""
    c = zoo_client
    ex = EXAMPLES["infer"]
    r = c.post("/infer", json=ex["request"])
    assert r.status_code == 200, r.text
    real = r.json()
    validate(doc, schema_of(doc, "post", "/infer", 200), real)
    _same_keys(ex["response"], real)
    assert real["argmax"] == ex["response"]["argmax"] and real["accuracy"] == ex["response"]["accuracy"]
    assert real["age_s"] == ex["response"]["age_s"] == 365 * 86400
    np.testing.assert_allclose(real["outputs"]["logits"], ex["response"]["outputs"]["logits"], atol=0.5)
    np.testing.assert_allclose(
        [a["alpha_mean"] for a in real["alpha"]], [a["alpha_mean"] for a in ex["response"]["alpha"]], rtol=0.02
    )

    ex = EXAMPLES["oip_infer"]
    r = c.post("/v2/models/default/infer", json=ex["request"])
    assert r.status_code == 200, r.text
    validate(doc, schema_of(doc, "post", "/v2/models/{model_name}/infer", 200), r.json())
    _same_keys(ex["response"], r.json())
    assert np.argmax(r.json()["outputs"][0]["data"]) == np.argmax(ex["response"]["outputs"][0]["data"])

    ex = EXAMPLES["evaluate"]
    r = c.post("/chips/default/evaluate", json=ex["request"])
    assert r.status_code == 200, r.text
    validate(doc, schema_of(doc, "post", "/chips/{chip_id}/evaluate", 200), r.json())
    _same_keys(ex["response"], r.json())
    for got, want in zip(r.json()["results"], ex["response"]["results"]):
        # 200 samples x 3 read-outs: a mean moves by ~1 sample (0.005) when the noise stream changes
        assert abs(got["gdc_on"]["mean"] - want["gdc_on"]["mean"]) <= 0.03, (got, want)

    ex = EXAMPLES["drift"]
    r = c.get("/chips/default/drift", params=ex["query"])
    assert r.status_code == 200, r.text
    validate(doc, schema_of(doc, "get", "/chips/{chip_id}/drift", 200), r.json())
    _same_keys(ex["response"], r.json())
    assert [la["name"] for la in r.json()["layers"]] == [la["name"] for la in ex["response"]["layers"]]
    assert r.json()["g_ratio"] == pytest.approx(ex["response"]["g_ratio"], rel=0.02)

    ex = EXAMPLES["program"]
    r = c.post("/program", json=ex["request"])
    assert r.status_code == 201, r.text
    validate(doc, schema_of(doc, "post", "/program", 201), r.json())
    _same_keys(ex["response"], r.json())
    for key in ("chip_id", "seed", "time_scale", "weights", "devices", "tiles", "inputs", "outputs", "model"):
        assert r.json()[key] == ex["response"][key], key


# ------------------------------------------------------------------------------ real errors vs declared
def _bad_requests() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, route template, url, request kwargs) of requests that fail, one per status and route."""
    oip_ok = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    return [
        ("post", "/infer", "/infer", {"json": {"chip_id": "default", "inputs": [[1.0, 2.0]]}}),
        ("post", "/infer", "/infer", {"json": {"chip_id": "nope", "inputs": x_batch(1)}}),
        ("post", "/infer", "/infer", {"content": b"{", "headers": {"content-type": "application/json"}}),
        ("post", "/infer", "/infer", {"content": b"{}", "headers": {"content-type": "text/plain"}}),
        ("post", "/program", "/program", {"json": {"model": "tiny", "chip_id": "default"}}),
        ("post", "/program", "/program", {"json": {"model": "no-such-model"}}),
        ("post", "/program", "/program", {"data": {"model": "tiny"}}),
        ("post", "/chips/{chip_id}/evaluate", "/chips/default/evaluate", {"json": {"ages": []}}),
        ("post", "/chips/{chip_id}/evaluate", "/chips/nope/evaluate", {"json": {"ages": ["1s"]}}),
        ("get", "/chips/{chip_id}/drift", "/chips/default/drift?age=-1", {}),
        ("get", "/chips/{chip_id}/drift", "/chips/nope/drift", {}),
        ("get", "/chips/{chip_id}", "/chips/nope", {}),
        ("delete", "/chips/{chip_id}", "/chips/nope", {}),
        ("get", "/jobs/{job_id}", "/jobs/nope", {}),
        (
            "post",
            "/v2/models/{model_name}/infer",
            "/v2/models/default/infer",
            {"json": {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1.0]}]}},
        ),
        ("post", "/v2/models/{model_name}/infer", "/v2/models/nope/infer", {"json": oip_ok}),
        (
            "post",
            "/v2/models/{model_name}/infer",
            "/v2/models/default/infer",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        (
            "post",
            "/v2/models/{model_name}/versions/{model_version}/infer",
            "/v2/models/default/versions/2/infer",
            {"json": oip_ok},
        ),
        ("get", "/v2/models/{model_name}", "/v2/models/nope", {}),
    ]


@pytest.mark.parametrize(
    "method, template, url, kwargs", _bad_requests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_real_errors_match_their_declared_schema(shared, doc, method, template, url, kwargs):
    r = shared.request(method.upper(), url, **kwargs)
    status, _ = err(r)  # checks the shape the service promises, too
    assert status >= 400
    validate(doc, schema_of(doc, method, template, status), r.json())
    other = "/infer" if template.startswith("/v2") else "/v2/models/{model_name}/infer"
    with pytest.raises(jsonschema.ValidationError):  # native and OIP bodies are told apart
        validate(doc, schema_of(doc, "post", other, 404), r.json())


def test_auth_and_internal_errors_match_their_declared_schema(tmp_path, zoo, doc, monkeypatch):
    with TestClient(create_app(make_settings(tmp_path / "s", zoo, api_key="k")), raise_server_exceptions=False) as c:
        for method, template, url in (
            ("post", "/program", "/program"),
            ("delete", "/chips/{chip_id}", "/chips/default"),
        ):
            r = c.request(method.upper(), url, json={"model": "tiny"} if method == "post" else None)
            assert r.status_code == 401
            validate(doc, schema_of(doc, method, template, 401), r.json())

        def boom(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(c.app.state.registry, "get", boom)
        for template, url, body in (
            ("/infer", "/infer", {"chip_id": "default", "inputs": x_batch(1)}),
            (
                "/v2/models/{model_name}/infer",
                "/v2/models/default/infer",
                {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
            ),
        ):
            r = c.post(url, json=body)
            assert r.status_code == 500 and "a bug" not in r.text
            validate(doc, schema_of(doc, "post", template, 500), r.json())


def test_routes_that_read_a_body_refuse_other_content_types(shared, doc):
    """Every native route with a request body answers 415 (and says so) for a type it does not read."""
    checked = []
    for method, path, op in operations(doc):
        if "requestBody" not in op or path.startswith("/v2"):
            continue
        url = path.replace("{chip_id}", "default").replace("{job_id}", "nope")
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            r = shared.request(method.upper(), url, content=b"a=b", headers={"content-type": ctype})
            assert err(r) == (415, "content-type"), (method, path, ctype, r.text)
            validate(doc, schema_of(doc, method, path, 415), r.json())
        checked.append(path)
    assert set(checked) >= {"/infer", "/program", "/chips/{chip_id}/evaluate", "/chips/{chip_id}/recalibrate"}


def test_error_examples_are_the_bodies_the_code_builds():
    """The error examples are what service.errors writes (native and OIP), not a hand-made variant."""
    for shape, oip in (("native", False), ("oip", True)):
        for code, example in EXAMPLES["errors"][shape].items():
            if oip:
                message, field = example["error"], example["field"]
            else:
                message, field = example["error"]["message"], example["error"]["field"]
            assert error_body(int(code), message, field, oip=oip) == example, (shape, code)
    assert json.dumps(EXAMPLES["errors"]["oip"]).count('"error": "') == len(EXAMPLES["errors"]["oip"])
