"""Open Inference Protocol v2 messages (KServe/Triton): parsing requests, encoding responses.

A request is JSON, or with the binary tensor extension a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw little-endian tensors. Outputs are
returned in binary when the request says ``parameters.binary_data_output: true`` or per output
``parameters.binary_data``. agedchip's own parameters (``age``, ``seed``, ``read_seed``, ``gdc``)
ride in the request's ``parameters``. Bad input is an :class:`~service.problems.InvalidField`
(the protocol's 400).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.jsonio import dumps, finite_list
from service.problems import InvalidField, invalid_request
from service.schemas import OipInferRequest
from service.served_chip import InferResult, ServedChip

HEADER_LENGTH = "inference-header-content-length"
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NP_TO_OIP = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
OIP_PARAMETERS = {"age", "seed", "read_seed", "gdc", "binary_data_output"}
#: Request parameters standard clients (Triton, KServe) may send; accepted and ignored.
CLIENT_PARAMETERS = {
    "priority",
    "timeout",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "headers",
    "triton_enable_empty_final_response",
}
#: Largest dimension of a tensor: numpy's shapes are int64, and no body the service accepts holds more.
MAX_DIM = 2**31 - 1


def oip_datatype(dtype: str) -> str:
    return NP_TO_OIP.get(str(dtype), "FP32")


def _bad(field: str, message: str) -> InvalidField:
    return InvalidField(field, f"{field}: {message}")


def _seed(params: dict[str, Any], key: str) -> int | None:
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**63 - 1:
        raise _bad(f"parameters.{key}", f"must be an integer in [0, 2^63-1], got {v!r}")
    return v


def split_body(body: bytes, header_len: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensors) of a request body."""
    if header_len is None:
        return body, b""
    if not header_len.strip().isdigit() or int(header_len) > len(body):
        raise _bad("Inference-Header-Content-Length", f"must be an integer ≤ the body size ({len(body)})")
    n = int(header_len)
    return body[:n], body[n:]


def parse_request(header: bytes, binary: bytes, inputs_meta: list[dict[str, Any]]) -> tuple[OipInferRequest, dict]:
    """The JSON header and binary tensors → (request, feeds by input name)."""
    try:
        req = OipInferRequest.model_validate_json(header)
    except ValidationError as err:
        raise invalid_request(err) from None
    want = {m["name"]: m for m in inputs_meta}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(req.inputs):
        where = f"inputs.{i}"
        if t.name not in want:
            raise _bad(f"{where}.name", f"the model has no input {t.name!r}; inputs: {sorted(want)}")
        if t.name in feeds:
            raise _bad(f"{where}.name", f"input {t.name!r} given twice")
        dt = DATATYPES.get(t.datatype)
        if dt is None:
            raise _bad(f"{where}.datatype", f"unsupported datatype {t.datatype!r}; supported: {sorted(DATATYPES)}")
        expected = oip_datatype(want[t.name]["dtype"])
        if t.datatype != expected:
            raise _bad(f"{where}.datatype", f"input {t.name!r} is {expected}, got {t.datatype}")
        if any(d < 0 for d in t.shape):
            raise _bad(f"{where}.shape", f"dimensions must be ≥ 0, got {t.shape}")
        if any(d > MAX_DIM for d in t.shape):
            raise _bad(f"{where}.shape", f"dimensions must be ≤ {MAX_DIM}, got {t.shape}")
        count = math.prod(t.shape)  # Python ints: an int64 product could wrap around to 0
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            field = f"{where}.parameters.binary_data_size"
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _bad(field, "must be a non-negative integer")
            if t.data is not None:
                raise _bad(where, "give either 'data' or binary data, not both")
            if offset + size > len(binary):
                raise _bad(field, f"{size} bytes announced, {len(binary) - offset} left in the body")
            if size != count * dt.itemsize:
                raise _bad(field, f"shape {t.shape} of {t.datatype} needs {count * dt.itemsize} bytes, got {size}")
            arr = np.frombuffer(binary, dtype=dt, count=count, offset=offset)
            offset += size
        else:
            if t.data is None:
                raise _bad(f"{where}.data", "missing (no 'data' and no binary_data_size)")
            try:
                arr = np.asarray(t.data, dtype=dt)
            except (ValueError, TypeError, OverflowError):
                raise _bad(f"{where}.data", f"not an array of {t.datatype} numbers") from None
            if arr.size != count:
                raise _bad(f"{where}.data", f"{arr.size} values for shape {t.shape} ({count} values)")
        try:
            feeds[t.name] = arr.reshape(t.shape)
        except ValueError:  # an empty tensor whose dimensions numpy cannot index
            raise _bad(f"{where}.shape", f"shape {t.shape} is too large") from None
    if offset != len(binary):
        raise _bad("body", f"{len(binary) - offset} bytes of binary data not claimed by any input")
    return req, feeds


def run_parameters(params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(keyword arguments of :meth:`ServedChip.infer`, all outputs in binary) from a request's parameters."""
    unknown = set(params) - OIP_PARAMETERS - CLIENT_PARAMETERS
    if unknown:
        raise _bad("parameters", f"unknown parameter(s) {sorted(unknown)}; known: {sorted(OIP_PARAMETERS)}")
    seed, read_seed = _seed(params, "seed"), _seed(params, "read_seed") or 0
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise _bad("parameters.binary_data_output", "must be true or false")
    return {
        "age": params.get("age"),
        "read_seed": read_seed,
        "gdc": params.get("gdc", True),
        "seed": seed,
        "age_field": "parameters.age",
        "gdc_field": "parameters.gdc",
    }, binary_all


def wanted_outputs(req: OipInferRequest, names: list[str], binary_all: bool) -> list[tuple[str, bool]]:
    """(output name, in binary) of every output the request asks for (all when it names none)."""
    if not req.outputs:
        return [(n, binary_all) for n in names]
    wanted = []
    for i, o in enumerate(req.outputs):
        if o.name not in names:
            raise _bad(f"outputs.{i}.name", f"the model has no output {o.name!r}; outputs: {names}")
        b = (o.parameters or {}).get("binary_data", binary_all)
        if not isinstance(b, bool):
            raise _bad(f"outputs.{i}.parameters.binary_data", "must be true or false")
        wanted.append((o.name, b))
    return wanted


def encode_response(
    chip: ServedChip, req: OipInferRequest, res: InferResult, wanted: list[tuple[str, bool]]
) -> tuple[bytes, dict[str, str]]:
    """(body, headers): the JSON response, followed by the binary outputs if any."""
    by_name = dict(zip([o["name"] for o in chip.runtime.outputs], res.outputs))
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
            entry["data"] = finite_list(arr.ravel())
        outputs.append(entry)
    content = {
        "model_name": chip.chip_id,
        "model_version": "1",
        "id": req.id,
        "parameters": {
            "age_s": res.age_s,
            "age_source": res.age_source,
            "gdc": res.gdc,
            "read_seed": res.read_seed,
            "seed": res.seed,
            # estimates (chipsim.cost), labelled by the cost model that made them
            "energy_j": res.energy_j,
            "latency_s": res.latency_s,
            "cost_model": chip.cost.cost_model.name,
        },
        "outputs": outputs,
    }
    if req.id is None:
        del content["id"]
    head = dumps(content)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
