"""Programming and describing chips: POST /program (JSON form), the chip summary, GET /chips,
and the zoo (GET /zoo)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import ESTIMATE_DOC


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
    source: str = Field(
        description="'zoo', 'upload', or 'chip' (a fleet's chip programmed from another chip's model: "
        "POST /fleets with from_chip)."
    )
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


class DigitalWeightNode(BaseModel):
    node: str = Field(description="ONNX node name (its op type when unnamed).")
    op: str = Field(description="Its op type, e.g. Gather or Einsum.")
    parameters: int = Field(description="Elements of the weights it reads that are not on the chip.")


class TensorInfo(BaseModel):
    name: str = Field(description="Tensor name in the ONNX graph (the key of `inputs`/`outputs` in /infer).")
    dtype: str = Field(description="numpy dtype name, e.g. float32.")
    shape: list[int | None] = Field(description="Dimensions; null = dynamic (the batch).")


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
    digital_weight_nodes: list[DigitalWeightNode] = Field(
        default_factory=list,
        description="Weight-bearing nodes left digital (e.g. an embedding Gather), with their weights' "
        "parameters (counted in `digital_parameters`).",
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
