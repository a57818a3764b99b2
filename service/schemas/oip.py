"""The Open Inference Protocol v2 (KServe) under /v2: tensors, inference, metadata, readiness."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

OIP_DATATYPES_DOC = "OIP datatype: BOOL, UINT8…UINT64, INT8…INT64, FP16, FP32, FP64 (the model's dtype)."


class OipTensor(BaseModel):
    name: str = Field(description="Tensor name (the model's input name: GET /v2/models/{name} lists them).")
    shape: list[int] = Field(description="Dimensions, batch first (counts).")
    datatype: str = Field(description=OIP_DATATYPES_DOC)
    parameters: dict[str, Any] | None = Field(
        None, description="'binary_data_size' (bytes) when the data follows the JSON header in binary."
    )
    data: list[Any] | None = Field(
        None, description="Row-major values, flat or nested, in the model's input units (absent for binary data)."
    )


class OipRequestedOutput(BaseModel):
    name: str = Field(description="Output tensor name.")
    parameters: dict[str, Any] | None = Field(None, description="'binary_data': true to return this output in binary.")


class OipInferRequest(BaseModel):
    id: str | None = Field(None, description="Request id, echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="agedchip parameters: 'age' (seconds or duration; default wall clock × time scale), "
        "'seed', 'read_seed', 'gdc'; OIP: 'binary_data_output' (all outputs in binary).",
    )
    inputs: list[OipTensor] = Field(description="One tensor per model input.")
    outputs: list[OipRequestedOutput] | None = Field(None, description="Outputs to return (default: all).")


class OipOutputTensor(BaseModel):
    name: str = Field(description="Output tensor name.")
    shape: list[int] = Field(description="Dimensions, batch first (counts).")
    datatype: str = Field(description=OIP_DATATYPES_DOC)
    parameters: dict[str, Any] | None = Field(
        None, description="'binary_data_size' (bytes) when the data follows the JSON header in binary."
    )
    data: list[Any] | None = Field(
        None, description="Row-major values, flat, in the model's output units (absent for binary data)."
    )


class OipInferResponse(BaseModel):
    model_name: str = Field(description="The chip id.")
    model_version: str | None = Field(None, description="Always '1'.")
    id: str | None = Field(None, description="The request's id, if it had one.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="'age_s' (seconds), 'gdc', 'read_seed', 'seed'; "
        "estimates (docs/energy.md): 'energy_j' (joules) and "
        "'latency_s' (seconds) of the request, 'cost_model'.",
    )
    outputs: list[OipOutputTensor] = Field(description="The requested outputs.")


class OipTensorMeta(BaseModel):
    name: str = Field(description="Tensor name.")
    datatype: str = Field(description=OIP_DATATYPES_DOC)
    shape: list[int] = Field(description="Dimensions (counts); -1 for dynamic ones (the batch).")


class OipModelMetadata(BaseModel):
    name: str = Field(description="The chip id (the model's name in OIP).")
    versions: list[str] = Field(description="Always ['1']: a chip is immutable.")
    platform: str = Field(description="'agedchip_onnx'.")
    inputs: list[OipTensorMeta] = Field(description="The model's inputs.")
    outputs: list[OipTensorMeta] = Field(description="The model's outputs.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="'profile' (preset), 'model' (name), 'time_scale' "
        "(chip s per wall-clock s), 'age_s' (current age, s).",
    )


class OipServerMetadata(BaseModel):
    name: str = Field(description="'agedchip'.")
    version: str = Field(description="The service's version.")
    extensions: list[str] = Field(description="Protocol extensions: 'binary_tensor_data', 'agedchip_age'.")


class OipLive(BaseModel):
    live: bool = Field(description="Always true while the server answers.")


class OipReady(BaseModel):
    ready: bool = Field(description="True once every chip is loaded (503 before).")


class OipModelReady(BaseModel):
    name: str = Field(description="The chip id.")
    ready: bool = Field(description="Always true: a chip that is not ready is not found (404) or corrupt (409).")
