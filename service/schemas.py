"""Request and response models of the HTTP API, every field documented with its unit.

Ages are seconds after programming, or a duration string (see :mod:`service.durations`).
Accuracies and other ratios are in [0, 1]. Conductances are µS.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from chipsim.fleet import SloSpec
from chipsim.modes import GdcMode

#: GDC modes a request may name, and those that compensate (the "with GDC" numbers).
GDC_MODES: tuple[str, ...] = tuple(m.value for m in GdcMode)
GDC_ON_MODES: tuple[str, ...] = tuple(m.value for m in GdcMode if m is not GdcMode.OFF)
GdcOption = bool | Literal[GDC_MODES]  # type: ignore[valid-type]
#: Seconds (a JSON number) or a duration string; strict, so ``true`` is not 1 s.
AgeValue = StrictInt | StrictFloat | StrictStr

AGE_DOC = (
    "Chip age: seconds after programming (number) or a duration string: '90s', '1.5h', '30d', '1w', "
    "'1y' (365 d), '1d12h', or ISO-8601 'P1Y2M10DT2H30M' (Y = 365 d, M = 30 d). 0 … 1000 years."
)
GDC_DOC = (
    "Global drift compensation: true = the chip profile's mode (global if the profile has it off), false = "
    "off, or a mode: 'global' (per tile), 'column' (per tile and column), 'exact' (noise-free reference), "
    "'off'."
)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined (for a route's ``openapi_extra``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


# ----------------------------------------------------------------------------------- errors
class FieldError(BaseModel):
    field: str | None = Field(description="The request field at fault, dotted; null if none.")
    message: str = Field(description="What is wrong with it.")


class ErrorDetail(BaseModel):
    status: int = Field(description="HTTP status code (the response's).")
    field: str | None = Field(
        description="The request field at fault, dotted (e.g. 'inputs.x', 'age', "
        "'profile.drift_scale'); null if no single field."
    )
    message: str = Field(description="What is wrong and, where possible, how to fix it; starts with the field.")
    details: list[FieldError] | None = Field(
        None, description="Request validation errors only: every field at fault (at most 20)."
    )


class ErrorResponse(BaseModel):
    """The error body of the native API (every route outside /v2)."""

    error: ErrorDetail = Field(description="What went wrong.")


class OipErrorResponse(BaseModel):
    """The error body under /v2: the Open Inference Protocol requires ``error`` to be the message string."""

    error: str = Field(description="What is wrong (the protocol's error message), starting with the field at fault.")
    status: int = Field(description="HTTP status code (the response's); an agedchip addition.")
    field: str | None = Field(
        description="The request field at fault, dotted (e.g. 'inputs.0.name', "
        "'parameters.age'); null if no single field. An agedchip addition."
    )


#: Error responses of the native routes (the OpenAPI document adds 415 to routes with a body, 500 to all
#: and swaps in :data:`OIP_ERROR_RESPONSES` under /v2: :mod:`service.openapi_doc`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed Content-Length header.",
        401: "Missing or wrong API key.",
        404: "Unknown chip or route.",
        409: "Conflict: chip id taken, chip corrupt, store full, chip without eval set.",
        413: "Request body larger than the configured limit.",
        422: "Invalid field value (the body names the field).",
        429: "Too many requests of this kind in line; retry after `Retry-After` seconds.",
        503: "Shutting down, memory budget reached, or a storage error; retry after `Retry-After` seconds.",
        507: "The store is full, over quota or read-only; nothing was changed.",
    }.items()
}
#: Error responses under /v2 (Open Inference Protocol): invalid input is 400, the body's ``error`` a string.
OIP_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": OipErrorResponse, "description": text}
    for code, text in {
        400: "Invalid input (the protocol's status for it): tensor name, shape, datatype, data, parameters.",
        401: "Missing or wrong API key.",
        404: "Unknown model (chip) or version.",
        409: "The chip is corrupt.",
        413: "Request body larger than the configured limit.",
    }.items()
}
#: What every route may answer when something unexpected fails (the traceback goes to the log only).
INTERNAL_ERROR = "Unexpected failure; the body says only 'internal server error', the server log has the traceback."
#: What routes that read a body answer for a content type they do not read.
UNSUPPORTED_MEDIA = "Content type not accepted by this route (the body names the ones it reads)."


# ----------------------------------------------------------------------------------- programming
class ProgramJson(BaseModel):
    """JSON form of POST /program (zoo models only; use multipart to upload an ONNX file)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Zoo model name, e.g. 'cnn-hwa' (GET /zoo lists them).")
    zoo_model: str | None = Field(None, description="Alias of `model`.")
    chip_id: str | None = Field(
        None, description="Id of the new chip (1-63 characters: a-z, 0-9, '-', '_'); default: '<model>-<random hex>'."
    )
    profile: str | dict[str, Any] | None = Field(
        None,
        description="Chip profile: a preset name ('ideal', 'pcm-reference', 'pcm', 'pcm-faulty', 'reram'; "
        "default 'pcm') or an object {'preset': name, <field>: value…} with overrides.",
    )
    overrides: dict[str, Any] | None = Field(
        None,
        description="Profile fields to override, e.g. {'drift_scale': 2, 'p_stuck_set': 0.001}; units as in "
        "the profile (probabilities, scales, µS-free normalised ADC units).",
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Programming seed (integer); default random, returned in the summary."
    )
    time_scale: float = Field(
        1.0,
        ge=0,
        le=1e9,
        description="Chip seconds per wall-clock second when a request "
        "omits the age (86400: a day of ageing per second).",
    )
    dry_run: bool = Field(
        False,
        description="Only report what programming would do (analog nodes with their layers, "
        "tiles and devices; digital nodes and why; refusals): 200, nothing "
        "programmed.",
    )


class ModelInfo(BaseModel):
    name: str = Field(description="Zoo name or uploaded file name.")
    source: str = Field(description="'zoo' or 'upload'.")
    digest: str | None = Field(description="sha256 of the ONNX file; the file is stored once under this digest.")
    bytes: int = Field(description="Size of the ONNX file, bytes.")


class ProfileInfo(BaseModel):
    preset: str = Field(description="Preset the profile derives from.")
    overrides: dict[str, Any] = Field(description="Fields overridden at programming.")
    values: dict[str, Any] = Field(description="Every profile field (see chipsim.profiles.ChipProfile).")


class LayerInfo(BaseModel):
    name: str = Field(description="Analog layer (ONNX node) name.")
    kind: str = Field(
        description="The op it was compiled from (chipsim LayerKind): matmul, matmul_left, gemm, conv, "
        "conv_transpose, lstm, gru or rnn."
    )
    rows: int = Field(
        description="Inputs of the crossbar matrix (Conv: C_in/groups·k_h·k_w; a grouped Conv's "
        "columns each read their own group's rows)."
    )
    cols: int = Field(description="Outputs (columns).")
    tiles: int = Field(description="Crossbar tiles the rows are split into.")
    devices: int = Field(description="Physical devices (2 per weight: differential pair).")
    input_range: float = Field(description="DAC input range r (inputs clipped to ±r), input units.")
    input_range_source: str = Field(
        description="Where r came from: given, metadata (learned by HWA training), "
        "calibration (uploaded data), eval (the eval set, when no calibration "
        "data was given), default (uncalibrated: r = 1.0), or unknown (chips "
        "programmed before this was recorded)."
    )
    stuck_reset: int = Field(description="Devices stuck at 0 µS.")
    stuck_set: int = Field(description="Devices stuck at g_max.")


class TensorInfo(BaseModel):
    name: str = Field(description="Tensor name in the ONNX graph (the key of `inputs`/`outputs` in /infer).")
    dtype: str = Field(description="numpy dtype name, e.g. float32.")
    shape: list[int | None] = Field(description="Dimensions; null = dynamic (the batch).")


ESTIMATE_DOC = "An estimate from operation counts priced by a published-chip cost model (docs/energy.md). "


class ChipCost(BaseModel):
    """chipsim.cost's estimate of one sample (``CostEstimate.to_dict()``), cached per chip."""

    estimate: bool = Field(description="Always true: these figures are estimates, not measurements.")
    note: str = Field(description="How the figures were obtained.")
    cost_model: str = Field(description="Name of the cost model that priced the counts, e.g. 'hermes-1phase'.")
    batch: int = Field(description="Samples the totals are for (1: per sample).")
    energy_j: float = Field(description=ESTIMATE_DOC + "Energy of `batch` samples, joules.")
    latency_s: float = Field(description=ESTIMATE_DOC + "Latency of `batch` samples, seconds (no pipelining).")
    per_sample: dict[str, Any] = Field(
        description="Per sample: energy_j (joules), latency_s (seconds), tile_mvms, "
        "analog_macs, dac_conversions, adc_conversions, digital_ops "
        "(counts), tops_per_w, energy_breakdown_j (joules by component)."
    )
    layers: list[dict[str, Any]] = Field(
        description="Per analog layer, per sample: counts (tiles, MVMs, MACs, "
        "conversions, digital ops), energy_j (joules), latency_s "
        "(seconds) and energy_breakdown_j (joules)."
    )
    digital: dict[str, Any] = Field(
        description="The model's digital nodes per sample: nodes, ops (counts), energy_j (joules), latency_s (seconds)."
    )
    warnings: list[str] = Field(description="Where the cost model does not fit the chip's profile.")
    constants: dict[str, Any] | None = Field(
        None, description="The cost model's constants (joules, seconds) and their sources."
    )


class ChipSummary(BaseModel):
    chip_id: str = Field(description="Id of the chip.")
    state: Literal["ready"] = Field(description="Only ready chips have a summary.")
    model: ModelInfo = Field(description="The ONNX model programmed onto the chip.")
    profile: ProfileInfo = Field(description="The chip profile (device and periphery parameters).")
    seed: int = Field(description="Programming seed.")
    time_scale: float = Field(description="Chip seconds per wall-clock second (for requests without an age).")
    programmed_at: float = Field(description="Programming time, Unix seconds.")
    age_s: float = Field(description="Current wall-clock age × time scale, seconds.")
    analog_layers: int = Field(description="Layers mapped onto crossbars.")
    digital_nodes: int = Field(description="ONNX nodes that stay digital.")
    digital_parameters: int = Field(
        0,
        description="Float constants of the model not on the chip (biases, norms, "
        "embeddings, weights of ops left digital), elements.",
    )
    tiles: int = Field(description="Crossbar tiles in total.")
    weights: int = Field(description="Analog weights in total.")
    devices: int = Field(description="Physical devices in total (2 per weight).")
    stuck_reset: int = Field(description="Devices stuck at 0 µS.")
    stuck_set: int = Field(description="Devices stuck at g_max.")
    stuck_fraction: float = Field(description="Stuck devices / devices (ratio).")
    layers: list[LayerInfo] = Field(description="The analog layers, in graph order.")
    uncalibrated_layers: list[str] = Field(
        description="Layers whose DAC input range is the default 1.0 (no learned range, no calibration data, no eval "
        "set): their inputs are clipped to ±1. Upload calibration data or an eval set to calibrate them."
    )
    inputs: list[TensorInfo] = Field(description="The model's inputs (what /infer takes).")
    outputs: list[TensorInfo] = Field(description="The model's outputs (what /infer returns).")
    classifier: bool = Field(
        description="True when the first output is (batch, classes): responses carry argmax "
        "and labels update the live accuracy."
    )
    eval_samples: int = Field(description="Samples of the chip's labelled eval set (0 = none).")
    disk_bytes: int = Field(description="Bytes of the chip's own files on disk.")
    shared_bytes: int = Field(
        description="Bytes of the shared, content-addressed files the chip uses (model, "
        "weights, compiled graph, eval set); stored once for all chips."
    )
    cost: ChipCost | None = Field(
        None,
        description="Estimated energy and latency of one sample on this chip, by "
        "layer (an estimate, not a measurement; null if the model's "
        "shapes do not allow one).",
    )
    parent: str | None = Field(None, description="Chip this one was derived from (recalibration), if any.")
    recalibration: dict[str, Any] | None = Field(
        None,
        description="How it was derived: algorithm, parameters, recalibration age (s), layer, pulses used, "
        "accuracy before/after on the held-out samples.",
    )


class ChipListEntry(BaseModel):
    chip_id: str = Field(description="Id of the chip.")
    state: Literal["ready", "corrupt"] = Field(
        description="'ready' (served) or 'corrupt' (failed its checksums, never served)."
    )
    model: str | None = Field(description="Model name (null for corrupt chips).")
    profile: str | None = Field(description="Profile preset.")
    seed: int | None = Field(description="Programming seed (null for corrupt chips).")
    programmed_at: float | None = Field(description="Programming time, Unix seconds.")
    time_scale: float | None = Field(description="Chip seconds per wall-clock second.")
    age_s: float | None = Field(description="Current chip age, seconds.")
    error: str | None = Field(description="Why a corrupt chip cannot be served (the file at fault).")


class ChipList(BaseModel):
    chips: list[ChipListEntry] = Field(description="Every chip in the store, by id.")


# ----------------------------------------------------------------------------------- inference
class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chip_id: str = Field(
        description="Chip to run on (GET /chips lists them; the chip programmed at first start is 'default')."
    )
    inputs: list[Any] | dict[str, Any] = Field(
        description="A nested list (batch first) for a single-input model, or an object input name → nested "
        "list. Numbers in the model's input units; finite."
    )
    age: AgeValue | None = Field(None, description=AGE_DOC + " Omitted: the chip's wall-clock age × its time scale.")
    gdc: GdcOption = Field(True, description=GDC_DOC)
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Seed of the per-MVM noise: the same request with "
        "the same seed gives identical outputs. Omitted: "
        "fresh noise.",
    )
    read_seed: int = Field(0, ge=0, le=2**63 - 1, description="Selects the read-out (1/f noise draw) at the age.")
    labels: list[int] | None = Field(
        None,
        description="True class per batch item (classifiers): updates the chip's "
        "live accuracy; the response reports the batch's accuracy.",
    )


class LayerAlpha(BaseModel):
    layer: str = Field(description="Analog layer name.")
    alpha_mean: float = Field(description="GDC factor α, mean over tiles (and columns), dimensionless.")
    alpha_min: float = Field(description="Smallest α over tiles (dimensionless).")
    alpha_max: float = Field(description="Largest α over tiles (dimensionless).")
    tiles: int = Field(description="Crossbar tiles of the layer (count).")


class InferResponse(BaseModel):
    chip_id: str = Field(description="Chip that ran the inference.")
    age_s: float = Field(description="Effective chip age of this inference, seconds.")
    age_source: Literal["request", "wall_clock"] = Field(
        description="Whether the age came from the request or from the wall clock × time scale."
    )
    gdc: str = Field(description="GDC mode applied (global, column, exact, off).")
    gdc_applied: bool = Field(description="False when GDC was off (α reported but not applied).")
    read_seed: int = Field(description="Read-out seed used (selects the 1/f noise draw at the age).")
    seed: int | None = Field(description="Per-MVM noise seed used (null: fresh noise).")
    batch: int = Field(description="Batch size (samples).")
    outputs: dict[str, list[Any]] = Field(description="Output name → nested list, in the model's output units.")
    argmax: list[int] | None = Field(None, description="Predicted class per sample (classifiers only).")
    accuracy: float | None = Field(None, description="Accuracy of this batch against `labels` (ratio).")
    alpha: list[LayerAlpha] = Field(description="GDC α per analog layer at this age and read-out.")
    energy_j: float = Field(
        description=ESTIMATE_DOC + "Energy of this request (all `batch` samples), joules: "
        "GET /chips/{chip_id} `cost.per_sample.energy_j` × batch."
    )
    latency_s: float = Field(
        description=ESTIMATE_DOC + "Latency of this request on the chip, seconds (samples one "
        "after the other), not the service's response time."
    )
    cost_model: str = Field(description="The cost model behind `energy_j` and `latency_s` (an estimate).")


# ----------------------------------------------------------------------------------- evaluation
class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ages: list[AgeValue] = Field(min_length=1, max_length=20, description="1-20 ages. " + AGE_DOC)
    readouts: int = Field(
        5,
        ge=1,
        description="Read-outs (read seeds 0…n−1) per age; mean ± std over them. "
        "At most AGEDCHIP_MAX_EVAL_READOUTS (default 50).",
    )
    samples: int | None = Field(None, ge=1, description="Use only the first n eval samples (default: all).")
    gdc_mode: Literal[GDC_ON_MODES] | None = Field(  # type: ignore[valid-type]
        None, description="GDC mode for the 'GDC on' numbers (default: the profile's, or global)."
    )
    slo: SloSpec | None = Field(
        None,
        description="Accuracy SLO {metric: accuracy | normalised_accuracy, threshold "
        "(ratio)}: the response adds the time to SLO breach.",
    )


class AccuracyStats(BaseModel):
    mean: float = Field(description="Mean accuracy over read-outs (ratio).")
    std: float = Field(description="Standard deviation over read-outs (ratio, population).")
    min: float = Field(description="Lowest accuracy over read-outs (ratio).")
    max: float = Field(description="Highest accuracy over read-outs (ratio).")
    values: list[float] = Field(description="Accuracy of each read-out (read seed 0…n−1), ratios.")


class AgeAccuracy(BaseModel):
    age: str = Field(description="The age as requested.")
    age_s: float = Field(description="Age in seconds.")
    gdc_on: AccuracyStats = Field(description="Accuracy with global drift compensation (mode `gdc_mode`).")
    gdc_off: AccuracyStats = Field(description="Accuracy without drift compensation.")


class SloBreach(BaseModel):
    status: Literal["breached", "breached_at_first", "not_breached"] = Field(
        description="'breached': crossed between two evaluated ages (interpolated on log-age); 'breached_at_first': "
        "already below at the first age > 0; 'not_breached': still meets it at the last age."
    )
    age_s: float | None = Field(description="Interpolated chip age of the breach, seconds; null when censored.")
    bracket_s: list[float | None] = Field(
        description="[low, high] chip ages in seconds between which the breach "
        "lies (the evaluated ages around it); high null = never "
        "within the evaluated ages."
    )
    seconds_until: float | None = Field(
        description="Wall-clock seconds from now until the breach at the chip's "
        "time scale (0: already breached; null: not predicted, or "
        "the chip does not age)."
    )


class EvaluateResponse(BaseModel):
    chip_id: str = Field(description="Chip evaluated.")
    samples: int = Field(description="Eval samples used.")
    readouts: int = Field(description="Read-outs per age (read seeds 0…n−1).")
    gdc_mode: str = Field(description="GDC mode of the 'on' numbers.")
    results: list[AgeAccuracy] = Field(description="One entry per requested age, in request order.")
    slo: SloSpec | None = Field(None, description="The SLO of the request (only with one).")
    fp_accuracy: float | None = Field(
        None,
        description="Floating-point model's accuracy on the samples used (ratio); set for the normalised_accuracy SLO.",
    )
    breach: dict[str, SloBreach] | None = Field(
        None, description="Time to SLO breach, 'gdc_on' and 'gdc_off' (only with an SLO)."
    )
    chip_age_s: float | None = Field(
        None,
        description="The chip's wall-clock age when evaluated, seconds "
        "(the origin of `seconds_until`; only with an SLO).",
    )
    seconds: float = Field(description="Wall time of the evaluation, seconds.")


# ----------------------------------------------------------------------------------- drift
class DriftLayer(BaseModel):
    name: str = Field(description="Analog layer (ONNX node) name.")
    rows: int = Field(description="Inputs of the crossbar matrix (count).")
    cols: int = Field(description="Outputs of the crossbar matrix (count).")
    tiles: int = Field(description="Crossbar tiles (count).")
    devices: int = Field(description="Physical devices (2 per weight).")
    alpha_mean: float = Field(description="GDC α, mean over tiles (dimensionless).")
    alpha_per_tile: list[float] = Field(description="GDC α of each tile (dimensionless).")
    g_ratio: float = Field(description="ΣG(t)/ΣG_prog over the layer's devices (ratio).")
    weight_error: float = Field(description="‖W(t)−W‖/‖W‖ without GDC (ratio).")
    weight_error_gdc: float = Field(description="‖α·W(t)−W‖/‖W‖ with GDC (ratio).")
    stuck_reset: int = Field(description="Devices of the layer stuck at 0 µS.")
    stuck_set: int = Field(description="Devices of the layer stuck at g_max.")
    mean_nu: float = Field(description="Mean drift exponent ν of healthy devices (dimensionless).")


class DriftResponse(BaseModel):
    chip_id: str = Field(description="Chip measured.")
    age_s: float = Field(description="Age of the read-out, seconds.")
    read_seed: int = Field(description="Read-out seed (1/f noise draw).")
    gdc: str = Field(description="GDC mode of the 'with GDC' numbers.")
    layers: list[DriftLayer] = Field(description="Per analog layer, in graph order.")
    weight_error: float = Field(description="Chip-wide ‖W(t)−W‖/‖W‖ without GDC (ratio).")
    weight_error_gdc: float = Field(description="Chip-wide relative weight error with GDC (ratio).")
    g_ratio: float = Field(description="Chip-wide ΣG(t)/ΣG_prog (ratio).")
    stuck_reset: int = Field(description="Devices stuck at 0 µS.")
    stuck_set: int = Field(description="Devices stuck at g_max.")
    stuck_fraction: float = Field(description="Stuck devices / devices (ratio).")
    mean_nu: float = Field(description="Mean drift exponent ν of healthy devices (dimensionless).")


# ----------------------------------------------------------------------------------- health, zoo
class Health(BaseModel):
    status: str = Field(description="'ok', 'starting' while chips load, 'stopping' once shutdown began.")
    chips: dict[str, int] = Field(description="Chips by state (ready, corrupt): counts.")


class ZooModel(BaseModel):
    """A zoo model; the zoo's index may add more scalar facts (architecture, training, sizes)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Name to program it by (POST /program `model`).")
    description: str | None = Field(None, description="What the model is and how it was trained.")
    has_eval_set: bool = Field(
        description="Whether the zoo has its labelled eval set (then /evaluate and the "
        "accuracy gauges work on chips programmed from it)."
    )
    n_eval: int | None = Field(None, description="Samples in the eval set.")
    fp_accuracy: float | None = Field(
        None, description="Accuracy of the digital (floating-point) model on the eval set (ratio)."
    )


class ZooList(BaseModel):
    models: list[ZooModel] = Field(description="The zoo's models, by name.")


# ----------------------------------------------------------------------------------- OIP v2
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
