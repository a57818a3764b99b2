"""The OpenAPI document's finishing touches, applied once to what FastAPI builds from the routes.

Route decorators declare models and the error responses a route answers (native
:data:`~service.schemas.ERROR_RESPONSES`, or :data:`~service.schemas.OIP_ERROR_RESPONSES` under
``/v2``). What follows from rules that hold for every route is added here, in one place:

* FastAPI's own 422 body (``{"detail": […]}``), which the service never sends, is replaced;
* every operation may answer 500 (:mod:`service.errors`' last handler), in the body shape of its
  path (native ``{"error": {…}}``, or the protocol's ``{"error": "<message>"}`` under ``/v2``);
* native operations that read a body answer 415 for a content type they do not read;
* path parameters are described (``chip_id``, ``job_id``, ``model_name``, ``model_version``);
* examples: a request and its response for the main routes, and an error body per error status.
  They live in ``openapi_examples.json``, recorded from the zoo's ``cnn-hwa`` chip ``default``
  (``tests/test_openapi.py`` replays them against that chip and checks them against the schemas).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.errors import is_oip
from service.schemas import INTERNAL_ERROR, UNSUPPORTED_MEDIA

EXAMPLES_FILE = Path(__file__).with_name("openapi_examples.json")
EXAMPLES: dict[str, Any] = json.loads(EXAMPLES_FILE.read_text())

PATH_PARAMETERS = {
    "chip_id": "Id of the chip (GET /chips lists them): 1-63 characters of a-z, 0-9, '-', '_'.",
    "job_id": "Id of the job (returned by POST /chips/{chip_id}/recalibrate, POST /fleets and POST "
    "/fleets/{fleet_id}/evaluate; listed by GET /jobs).",
    "fleet_id": "Id of the fleet (GET /fleets lists them): 1-59 characters of a-z, 0-9, '-', '_'.",
    "model_name": "The chip id: in the Open Inference Protocol each chip is a model.",
    "model_version": "Always '1' (a chip is immutable); any other version is 404.",
}

#: (method, path) → the example of ``openapi_examples.json`` it shows; both OIP infer paths share one.
ROUTE_EXAMPLES = {
    ("post", "/infer"): "infer",
    ("post", "/program"): "program",
    ("post", "/chips/{chip_id}/evaluate"): "evaluate",
    ("get", "/chips/{chip_id}/drift"): "drift",
    ("post", "/v2/models/{model_name}/infer"): "oip_infer",
    ("post", "/v2/models/{model_name}/versions/{model_version}/infer"): "oip_infer",
}
NATIVE_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
OIP_ERROR_SCHEMA = {"$ref": "#/components/schemas/OipErrorResponse"}
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) for every operation of an OpenAPI document."""
    return [
        (method, path, op)
        for path, item in doc.get("paths", {}).items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the rule-based responses, parameter descriptions and examples to ``doc`` (in place)."""
    for method, path, op in operations(doc):
        oip = is_oip(path)
        responses = op.setdefault("responses", {})
        _drop_fastapi_validation_error(responses, oip)
        _error_response(responses, "500", INTERNAL_ERROR, oip)
        if not oip and "requestBody" in op:
            _error_response(responses, "415", UNSUPPORTED_MEDIA, oip)
        errors = EXAMPLES["errors"]["oip" if oip else "native"]
        for code, response in responses.items():
            content = response.get("content", {}).get("application/json")
            if code in errors and content is not None:
                content["example"] = errors[code]
        for param in op.get("parameters", []):
            if param.get("in") == "path" and param["name"] in PATH_PARAMETERS:
                param.setdefault("description", PATH_PARAMETERS[param["name"]])
        name = ROUTE_EXAMPLES.get((method, path))
        if name is not None:
            _route_example(op, EXAMPLES[name])
    schemas = doc.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in json.dumps(doc["paths"]) + json.dumps(
            {k: v for k, v in schemas.items() if k != unused}
        ):
            schemas.pop(unused, None)
    return doc


def _drop_fastapi_validation_error(responses: dict[str, Any], oip: bool) -> None:
    """FastAPI declares its own 422 body (``{"detail": [...]}``), which :mod:`service.errors` never sends:
    validation errors are the native 422 error body, or the protocol's 400 under /v2."""
    response = responses.get("422")
    if response is None or "HTTPValidationError" not in json.dumps(response):
        return
    if oip:
        del responses["422"]
    else:
        response["content"] = {"application/json": {"schema": NATIVE_ERROR_SCHEMA}}


def _error_response(responses: dict[str, Any], code: str, description: str, oip: bool) -> None:
    responses.setdefault(
        code,
        {
            "description": description,
            "content": {"application/json": {"schema": OIP_ERROR_SCHEMA if oip else NATIVE_ERROR_SCHEMA}},
        },
    )


def _route_example(op: dict[str, Any], example: dict[str, Any]) -> None:
    if "request" in example:
        content = op["requestBody"]["content"]["application/json"]
        content["example"] = example["request"]
    for param in op.get("parameters", []):
        if param["name"] in example.get("query", {}):
            param["example"] = example["query"][param["name"]]
    ok = next(code for code in op["responses"] if code.startswith("2"))
    op["responses"][ok].setdefault("content", {}).setdefault("application/json", {})["example"] = example["response"]
