"""POST /program: its fields (a multipart form with the ONNX upload, or JSON naming a zoo
model), their validation into a :class:`ProgramSpec`, and their documentation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from chipsim import PRESETS
from service.forms import FormFields
from service.problems import InvalidField, UnsupportedMediaType, invalid_request
from service.schemas import ProgramJson


@dataclass
class ProgramSpec:
    """A validated POST /program request."""

    model_bytes: bytes | None = None
    model_filename: str | None = None
    zoo_model: str | None = None
    chip_id: str | None = None
    preset: str = "pcm"
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    time_scale: float = 1.0
    calibration: bytes | None = None
    eval_data: bytes | None = None
    dry_run: bool = False


def _json_object(key: str, value: str) -> Any:
    """Form values that carry a JSON object: ``overrides``, and ``profile`` written as one."""
    if key == "overrides" or (key == "profile" and value.lstrip().startswith("{")):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidField(key, f"{key}: not a valid JSON object") from None
        if not isinstance(value, dict):
            raise InvalidField(key, f"{key}: must be a JSON object")
    return value


FORM = FormFields(
    text=frozenset({"model", "zoo_model", "chip_id", "profile", "overrides", "seed", "time_scale", "dry_run"}),
    files=frozenset({"model", "calibration", "eval", "eval_data"}),
    decode=_json_object,
)
#: Form limits handed to the form parser.
MAX_FILES, MAX_FIELDS = 8, 32


def program_spec(fields: dict[str, Any], files: dict[str, tuple[bytes, str | None]]) -> ProgramSpec:
    """Validate the fields of POST /program (from JSON or a multipart form)."""
    try:
        req = ProgramJson.model_validate(fields)
    except ValidationError as err:
        raise invalid_request(err) from None
    zoo = req.zoo_model or req.model
    if req.model and req.zoo_model and req.model != req.zoo_model:
        raise InvalidField("model", "model: give either 'model' or 'zoo_model', not both")
    preset, overrides = "pcm", {}
    if isinstance(req.profile, str):
        preset = req.profile
    elif isinstance(req.profile, dict):
        p = dict(req.profile)
        preset = p.pop("preset", None) or p.pop("name", None) or "pcm"
        nested = p.pop("overrides", None)
        if nested is not None and not isinstance(nested, dict):
            raise InvalidField("profile.overrides", "profile.overrides: must be an object of profile fields")
        overrides.update(nested or {})
        overrides.update(p)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise InvalidField("profile", f"profile: unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    overrides.update(req.overrides or {})
    model_bytes, filename = files.get("model", (None, None))
    if model_bytes is not None and zoo:
        raise InvalidField("model", "model: upload an ONNX file or name a zoo model, not both")
    eval_bytes = (files.get("eval") or files.get("eval_data") or (None, None))[0]
    return ProgramSpec(
        model_bytes=model_bytes,
        model_filename=filename,
        zoo_model=None if model_bytes is not None else zoo,
        chip_id=req.chip_id,
        preset=preset,
        overrides=overrides,
        seed=req.seed,
        time_scale=req.time_scale,
        calibration=files.get("calibration", (None, None))[0],
        eval_data=eval_bytes,
        dry_run=req.dry_run,
    )


def json_program_spec(body: bytes) -> ProgramSpec:
    """The JSON form of POST /program (zoo models)."""
    try:
        data = json.loads(body) if body else {}
    except (ValueError, RecursionError):
        raise InvalidField("body", "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidField("body", "body: expected a JSON object")
    return program_spec(data, {})


def unsupported(ctype: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        "content-type",
        f"content-type: expected multipart/form-data (ONNX upload) or application/json (zoo model), got {ctype!r}",
    )


OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": {
                            "type": "string",
                            "format": "binary",
                            "description": "ONNX model file (opset ≥ 13; fp32, fp16 or bf16; ops of other "
                            "domains that onnxruntime runs stay digital), or a .zip/.tar holding "
                            "the model and its external data files, or a zoo model name as a "
                            "text field.",
                        },
                        "zoo_model": {"type": "string", "description": "Zoo model name (instead of an upload)."},
                        "chip_id": {
                            "type": "string",
                            "description": "Id of the new chip (a-z, 0-9, '-', '_'; "
                            "≤ 63 characters). Default: <model>-<hex>.",
                        },
                        "profile": {
                            "type": "string",
                            "description": "Preset name (ideal, pcm-reference, pcm, "
                            "pcm-faulty, reram; default pcm) or a JSON "
                            'object {"preset": …, field: value…}.',
                        },
                        "overrides": {
                            "type": "string",
                            "description": 'JSON object of profile fields to override, e.g. {"drift_scale": 2}.',
                        },
                        "seed": {"type": "integer", "description": "Programming seed (default random)."},
                        "time_scale": {
                            "type": "number",
                            "description": "Chip seconds per wall-clock second for "
                            "requests without an age (default 1).",
                        },
                        "dry_run": {
                            "type": "boolean",
                            "description": "true: answer 200 with what programming would "
                            "do (analog nodes, digital nodes and why, "
                            "refusals); nothing is programmed.",
                        },
                        "calibration": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz with 'x' (or one array per input name, in the input's "
                            "dtype: token ids as integers): calibrates DAC input ranges of "
                            "layers without learned ranges.",
                        },
                        "eval": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz with inputs ('x' or per input name) and integer labels 'y': "
                            "the chip's eval set (evaluate, accuracy gauges); without "
                            "calibration data, its first samples calibrate the DAC ranges.",
                        },
                    },
                }
            },
            "application/json": {"schema": ProgramJson.model_json_schema()},
        },
    }
}
