"""Open Inference Protocol v2 (KServe v2 / Triton HTTP), so standard clients work unchanged.

Each chip is a model named by its chip id, version ``1``. Routes: ``GET /v2`` (server
metadata), ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{chip}[/versions/1]``,
``.../ready`` and ``POST .../infer``.

Inference request ``parameters`` carry the chip's knobs: ``age`` (seconds or a duration string),
``seed``, ``read_seed``, ``gdc``. Tensors come as JSON ``data`` (flat or nested, row-major) or
with the binary tensor data extension: the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian tensors, each input
saying its size in ``parameters.binary_data_size``. Outputs are returned in binary when the
request says ``parameters.binary_data_output: true`` or per output ``parameters.binary_data``.
Bad input is a 400 (OIP convention) with the service's error body.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service import __version__
from service.errors import ApiError
from service.registry import Registry
from service.errors import validation_to_api_error
from service.schemas import (
    ERROR_RESPONSES, OipInferRequest, OipInferResponse, OipModelMetadata, OipServerMetadata, inline_schema,
)
from service.settings import Settings

HEADER_LENGTH = "inference-header-content-length"
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
NP_TO_OIP = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
             "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
             "float32": "FP32", "float64": "FP64"}
OIP_PARAMETERS = {"age", "seed", "read_seed", "gdc", "binary_data_output"}
#: Request parameters standard clients (Triton, KServe) may send; accepted and ignored.
CLIENT_PARAMETERS = {"priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "headers",
                     "triton_enable_empty_final_response"}


def oip_datatype(dtype: str) -> str:
    return NP_TO_OIP.get(str(dtype), "FP32")


def _bad(message: str, field: str | None) -> ApiError:
    return ApiError(400, message, field)


def _seed(params: dict[str, Any], key: str) -> int | None:
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**63 - 1:
        raise _bad(f"parameters.{key}: must be an integer in [0, 2^63-1], got {v!r}", f"parameters.{key}")
    return v


def parse_request(header: bytes, binary: bytes, inputs_meta: list[dict[str, Any]]) -> tuple[OipInferRequest, dict]:
    """The JSON header and binary tensors → (request, feeds by input name)."""
    try:
        req = OipInferRequest.model_validate_json(header)
    except ValidationError as err:
        raise validation_to_api_error(err, 400) from None
    want = {m["name"]: m for m in inputs_meta}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(req.inputs):
        where = f"inputs.{i}"
        if t.name not in want:
            raise _bad(f"{where}.name: the model has no input {t.name!r}; inputs: {sorted(want)}", f"{where}.name")
        if t.name in feeds:
            raise _bad(f"{where}.name: input {t.name!r} given twice", f"{where}.name")
        dt = DATATYPES.get(t.datatype)
        if dt is None:
            raise _bad(f"{where}.datatype: unsupported datatype {t.datatype!r}; supported: {sorted(DATATYPES)}",
                       f"{where}.datatype")
        expected = oip_datatype(want[t.name]["dtype"])
        if t.datatype != expected:
            raise _bad(f"{where}.datatype: input {t.name!r} is {expected}, got {t.datatype}", f"{where}.datatype")
        if any(d < 0 for d in t.shape):
            raise _bad(f"{where}.shape: dimensions must be ≥ 0, got {t.shape}", f"{where}.shape")
        count = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _bad(f"{where}.parameters.binary_data_size: must be a non-negative integer",
                           f"{where}.parameters.binary_data_size")
            if t.data is not None:
                raise _bad(f"{where}: give either 'data' or binary data, not both", where)
            if offset + size > len(binary):
                raise _bad(f"{where}.parameters.binary_data_size: {size} bytes announced, {len(binary) - offset} "
                           "left in the body", f"{where}.parameters.binary_data_size")
            if size != count * dt.itemsize:
                raise _bad(f"{where}.parameters.binary_data_size: shape {t.shape} of {t.datatype} needs "
                           f"{count * dt.itemsize} bytes, got {size}", f"{where}.parameters.binary_data_size")
            arr = np.frombuffer(binary, dtype=dt, count=count, offset=offset).reshape(t.shape)
            offset += size
        else:
            if t.data is None:
                raise _bad(f"{where}.data: missing (no 'data' and no binary_data_size)", f"{where}.data")
            try:
                arr = np.asarray(t.data, dtype=dt)
            except (ValueError, TypeError, OverflowError):
                raise _bad(f"{where}.data: not an array of {t.datatype} numbers", f"{where}.data") from None
            if arr.size != count:
                raise _bad(f"{where}.data: {arr.size} values for shape {t.shape} ({count} values)", f"{where}.data")
            arr = arr.reshape(t.shape)
        feeds[t.name] = arr
    if offset != len(binary):
        raise _bad(f"body: {len(binary) - offset} bytes of binary data not claimed by any input", "body")
    return req, feeds


class _Routes:
    """Registers routes directly on the app (an included APIRouter adds a matching layer per request)."""

    def __init__(self, app: FastAPI, prefix: str, tags: list[str]):
        self.app, self.prefix, self.tags = app, prefix, tags

    def get(self, path: str, **kw: Any):
        return self.app.get(self.prefix + path, tags=self.tags, **kw)

    def post(self, path: str, **kw: Any):
        return self.app.post(self.prefix + path, tags=self.tags, **kw)


def install(app: FastAPI, registry: Registry, settings: Settings, limiter: anyio.CapacityLimiter | None = None) -> None:
    """Add the OIP v2 routes to ``app``."""
    from service.app import dumps, require_infer

    router = _Routes(app, "/v2", ["open inference protocol v2"])

    def chip_or_404(name: str, version: str | None = None):
        if version is not None and version != "1":
            raise ApiError(404, f"model_version: chip {name!r} has only version '1'", "model_version")
        try:
            return registry.get(name)
        except ApiError as err:
            if err.status == 422:  # not a valid chip id: for OIP clients, no such model
                raise ApiError(404, err.message, err.field) from None
            raise

    @router.get("", response_model=OipServerMetadata, summary="Server metadata")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": "agedchip", "version": __version__,
                             "extensions": ["binary_tensor_data", "agedchip_age"]})

    @router.get("/health/live", summary="Server liveness")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @router.get("/health/ready", summary="Server readiness", responses={503: {}})
    async def ready() -> JSONResponse:
        ok = registry.loaded
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def metadata(name: str, version: str | None) -> dict[str, Any]:
        chip = chip_or_404(name, version)

        def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"name": m["name"], "datatype": oip_datatype(m["dtype"]),
                     "shape": [d if isinstance(d, int) and d > 0 else -1 for d in m["shape"]]} for m in items]

        return {"name": chip.chip_id, "versions": ["1"], "platform": "agedchip_onnx",
                "inputs": tensors(chip.runtime.inputs), "outputs": tensors(chip.runtime.outputs),
                "parameters": {"profile": chip.preset, "model": chip.model_name, "time_scale": chip.time_scale,
                               "age_s": chip.wall_age()}}

    @router.get("/models/{model_name}", response_model=OipModelMetadata, responses=ERROR_RESPONSES,
                summary="Model (chip) metadata")
    async def model_metadata(model_name: str) -> JSONResponse:
        return JSONResponse(metadata(model_name, None))

    @router.get("/models/{model_name}/versions/{model_version}", response_model=OipModelMetadata,
                responses=ERROR_RESPONSES, summary="Model (chip) metadata, versioned")
    async def model_metadata_v(model_name: str, model_version: str) -> JSONResponse:
        return JSONResponse(metadata(model_name, model_version))

    @router.get("/models/{model_name}/ready", responses=ERROR_RESPONSES, summary="Model (chip) readiness")
    async def model_ready(model_name: str) -> JSONResponse:
        chip = chip_or_404(model_name)
        return JSONResponse({"name": chip.chip_id, "ready": True})

    @router.get("/models/{model_name}/versions/{model_version}/ready", responses=ERROR_RESPONSES,
                summary="Model (chip) readiness, versioned")
    async def model_ready_v(model_name: str, model_version: str) -> JSONResponse:
        chip = chip_or_404(model_name, model_version)
        return JSONResponse({"name": chip.chip_id, "ready": True})

    def infer_sync(name: str, version: str | None, body: bytes, header_len: str | None) -> tuple[bytes, dict]:
        chip = chip_or_404(name, version)
        if header_len is not None:
            if not header_len.strip().isdigit() or int(header_len) > len(body):
                raise _bad(f"Inference-Header-Content-Length: must be an integer ≤ the body size ({len(body)})",
                           "Inference-Header-Content-Length")
            n = int(header_len)
            header, binary = body[:n], body[n:]
        else:
            header, binary = body, b""
        req, feeds = parse_request(header, binary, chip.runtime.inputs)
        params = dict(req.parameters or {})
        unknown = set(params) - OIP_PARAMETERS - CLIENT_PARAMETERS
        if unknown:
            raise _bad(f"parameters: unknown parameter(s) {sorted(unknown)}; known: {sorted(OIP_PARAMETERS)}",
                       "parameters")
        seed, read_seed = _seed(params, "seed"), _seed(params, "read_seed") or 0
        gdc = params.get("gdc", True)
        binary_all = params.get("binary_data_output", False)
        if not isinstance(binary_all, bool):
            raise _bad("parameters.binary_data_output: must be true or false", "parameters.binary_data_output")
        try:
            res = chip.infer(feeds, params.get("age"), read_seed=read_seed, gdc=gdc, seed=seed,
                             age_field="parameters.age")
        except ApiError as err:
            if err.status == 422:
                field = {"gdc": "parameters.gdc"}.get(err.field or "", err.field)
                raise _bad(err.message, field) from None
            raise
        chip.count(res.batch)
        names = [o["name"] for o in chip.runtime.outputs]
        by_name = dict(zip(names, res.outputs))
        wanted: list[tuple[str, bool]] = []
        if req.outputs:
            for i, o in enumerate(req.outputs):
                if o.name not in by_name:
                    raise _bad(f"outputs.{i}.name: the model has no output {o.name!r}; outputs: {names}",
                               f"outputs.{i}.name")
                b = (o.parameters or {}).get("binary_data", binary_all)
                if not isinstance(b, bool):
                    raise _bad(f"outputs.{i}.parameters.binary_data: must be true or false",
                               f"outputs.{i}.parameters.binary_data")
                wanted.append((o.name, b))
        else:
            wanted = [(n, binary_all) for n in names]
        outputs, blobs = [], []
        for name, as_binary in wanted:
            arr = np.asarray(by_name[name])
            dtype = oip_datatype(arr.dtype.name)
            arr = np.ascontiguousarray(arr, dtype=DATATYPES[dtype])
            entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": list(arr.shape)}
            if as_binary:
                data = arr.tobytes()
                entry["parameters"] = {"binary_data_size": len(data)}
                blobs.append(data)
            else:
                flat = arr.ravel()
                if flat.dtype.kind == "f" and not np.all(np.isfinite(flat)):
                    obj = flat.astype(object)
                    obj[~np.isfinite(flat)] = None
                    entry["data"] = obj.tolist()
                else:
                    entry["data"] = flat.tolist()
            outputs.append(entry)
        content = {"model_name": chip.chip_id, "model_version": "1", "id": req.id,
                   "parameters": {"age_s": res.age_s, "age_source": res.age_source, "gdc": res.gdc,
                                  "read_seed": res.read_seed, "seed": res.seed},
                   "outputs": outputs}
        if req.id is None:
            del content["id"]
        head = dumps(content)
        if not blobs:
            return head, {"content-type": "application/json"}
        return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                        "Inference-Header-Content-Length": str(len(head))}

    infer_doc = dict(response_model=OipInferResponse, responses=ERROR_RESPONSES,
                     dependencies=[Depends(require_infer)],
                     openapi_extra={"requestBody": {"required": True, "content": {
                         "application/json": {"schema": inline_schema(OipInferRequest)}},
                         "description": "JSON, or with the binary extension: JSON header of "
                                        "Inference-Header-Content-Length bytes followed by raw tensors."}})

    async def _infer(request: Request, model_name: str, model_version: str | None) -> Response:
        body = await request.body()
        content, headers = await anyio.to_thread.run_sync(
            infer_sync, model_name, model_version, body, request.headers.get(HEADER_LENGTH), limiter=limiter)
        media = headers.pop("content-type")
        return Response(content, media_type=media, headers=headers)

    @router.post("/models/{model_name}/infer", summary="Inference (OIP v2)", **infer_doc)
    async def infer(request: Request, model_name: str) -> Response:
        """Inference on chip `model_name`; `parameters.age` sets the age (default wall clock × time scale)."""
        return await _infer(request, model_name, None)

    @router.post("/models/{model_name}/versions/{model_version}/infer", summary="Inference (OIP v2), versioned",
                 **infer_doc)
    async def infer_v(request: Request, model_name: str, model_version: str) -> Response:
        return await _infer(request, model_name, model_version)
