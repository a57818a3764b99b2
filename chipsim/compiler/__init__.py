"""The ONNX compiler: program any ONNX model onto the chip (DESIGN §3.6).

Shaped like onnxruntime's static quantisation tool: walk the graph, hand each weight-bearing
node to a per-op rewriter from a registry (``MatMul``, ``Gemm``, ``Conv``, ``ConvTranspose``,
``LSTM``, ``GRU``, ``RNN``), calibrate the DAC input ranges, and leave every other node untouched.
A weight read by several nodes (or by a recurrence at every step) is one analog layer read
several times. Each analog layer becomes standard ONNX ops:

    clip to ±r → DAC code round(x/(r·step))
      → per tile: the products x'@W, x'@(ramp⊙W), |x'|@|W|, x'²@|W| with the read-out weights
        (graph inputs, so a new age needs no new session; one grouped Conv for Conv tiles)
        → IR drop + per-MVM weight read noise and output noise → ADC code → × α_k·r·s_col·step
      → Σ over tiles → + bias (digital)

Noise enters as graph inputs drawn by the runtime, so a request with a seed is reproducible.
A ``MatMul`` between two activations (attention's QKᵀ and AV) stays digital.

Modules, in the order a model passes through them:

- :mod:`.loader` — parse and check the model, constants, shapes, input/output specs;
- :mod:`.calibration` — DAC input ranges (given, metadata, calibration data, default);
- :mod:`.rewriters` — the registry and one module per op family (matmul: MatMul/Gemm; conv:
  Conv/ConvTranspose; recurrent: LSTM/GRU/RNN);
- :mod:`.lowering` — one analog layer's periphery as ONNX ops (with :mod:`.graph_builder`);
  :mod:`.lean` and :mod:`.folding` the default, leaner form of the same arithmetic (graph format
  4: sign analysis, the next DAC scale folded into the ADC scale, MaxPool before the ADC rounding),
  :mod:`.layers` the choice between them (:class:`~chipsim.modes.GraphLowering`);
- :mod:`.driver` — ``compile_model`` and ``program_onnx``;
- :mod:`.plan` — layer plans and the compiled model (also read by the runtime);
- :mod:`.weight_packing` — the runtime's weight and scale inputs, mirroring the lowering;
- :mod:`.tile_bounds`, :mod:`.tile_drops` — per read-out, the lean ops its weights prove negligible.
"""

from chipsim.compiler.calibration import (
    CALIBRATION_QUANTILE,
    DEFAULT_INPUT_RANGE,
    META_INPUT_RANGES,
    calibrate_ranges,
)
from chipsim.compiler.driver import compile_model, program_onnx
from chipsim.compiler.loader import MAX_MODEL_BYTES, MIN_OPSET, load_model, model_inputs
from chipsim.compiler.lowering import adc_scale_step, input_unit, is_linear, part_factors, tile_parts
from chipsim.compiler.plan import GRAPH_FORMAT, WEIGHT_INPUTS, CompiledModel, CompileError, LayerPlan, load_plans
from chipsim.compiler.rewriters import REWRITERS, UNMAPPABLE, OpRewriter, register

__all__ = [
    "CALIBRATION_QUANTILE",
    "DEFAULT_INPUT_RANGE",
    "GRAPH_FORMAT",
    "MAX_MODEL_BYTES",
    "META_INPUT_RANGES",
    "MIN_OPSET",
    "REWRITERS",
    "UNMAPPABLE",
    "WEIGHT_INPUTS",
    "CompileError",
    "CompiledModel",
    "LayerPlan",
    "OpRewriter",
    "adc_scale_step",
    "calibrate_ranges",
    "compile_model",
    "input_unit",
    "is_linear",
    "load_model",
    "load_plans",
    "model_inputs",
    "part_factors",
    "program_onnx",
    "register",
    "tile_parts",
]
