"""Int8 "digits" of a weight matrix and the onnxruntime graphs that multiply by them (#14 §2, optional).

A tile's weights ``W`` (rows × cols) are written per column as ``W ≈ m·(Q1 + Q2/254 + Q3/254² + …)``
with int8 digits ``Q_i ∈ [−127, 127]`` and ``m = max|W[:, c]|/127``: ``Q1 = round(W/m)`` leaves a
remainder in [−½, ½], which the next digit resolves 254 times finer, and so on. The DAC's input codes
``x' = code/127`` (254 steps over [−1, 1], ``chipsim.periphery.dac``) are exact as uint8 ``code + 127``
with zero point 127, so each digit's product is an exact integer product (``MatMulInteger``) and only
the float combination ``Σ_i P_i·m/(127·254^(i−1))`` rounds.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Each further digit resolves the previous one's remainder 254 times finer (int8 ±127 spans ±½·254).
DIGIT_BASE = 254
#: int8 digits and DAC codes span ±127 (the pcm DAC's 254 steps over [−1, 1], DESIGN §3.3 item 6).
CODE_MAX = 127
#: uint8 code of DAC output 0 (x' = (u − 127)/127).
ZERO_POINT = 127


def int8_digits(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits (k, rows, cols) int8 and per-column ``m`` (cols,) float64 with
    ``w ≈ m·Σ_i digits[i]/254^i`` (i from 0). The error of every entry is at most
    ``½·m/254^(k−1)`` (half a step of the last digit); an all-zero column gets ``m = 1``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    w = np.asarray(w, dtype=np.float64)
    m = np.abs(w).max(axis=0) / CODE_MAX
    m = np.where(m > 0, m, 1.0)
    rest = w / m  # in [−127, 127]
    digits = np.empty((k, *w.shape), dtype=np.int8)
    for i in range(k):
        q = np.round(rest)  # |rest − q| ≤ ½, so (rest − q)·254 stays within ±127
        digits[i] = q.astype(np.int8)
        rest = (rest - q) * DIGIT_BASE
    return digits, m


def reconstruct(digits: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``m·Σ_i digits[i]/254^i`` in float64 (the weights the digits stand for)."""
    scales = float(DIGIT_BASE) ** -np.arange(len(digits), dtype=np.float64)
    return m * np.tensordot(scales, digits.astype(np.float64), axes=1)


def _model(nodes, inputs, inits, out_cols: int, ms: bool = True, rank: int = 2) -> bytes:
    out = helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, ["m", out_cols] if rank == 2 else ["n", out_cols, "h", "w"]
    )
    graph = helper.make_graph(nodes, "product", inputs, [out], initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def float_graph(w: np.ndarray) -> bytes:
    """Today's product: ``y = x' @ W`` on float32 DAC outputs ``x'`` (m, rows)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", w.shape[0]])
    init = [numpy_helper.from_array(w.astype(np.float32), "w")]
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], init, w.shape[1], ms=False)


def _digit_scales(m: np.ndarray, k: int) -> list[np.ndarray]:
    """Per digit, the float32 column scale of its integer product (codes are x'·127)."""
    return [(m / CODE_MAX / float(DIGIT_BASE) ** i).astype(np.float32) for i in range(k)]


def int8_graph(w: np.ndarray, k: int, form: str = "fused", cast: bool = False) -> bytes:
    """``y ≈ x' @ W`` from k int8 digits of ``W`` on uint8 codes ``u = 127·x' + 127`` (m, rows).

    ``form``: ``fused`` — one com.microsoft ``MatMulIntegerToFloat`` per digit, then ``Sum``;
    ``pattern`` — ``MatMulInteger`` → ``Cast`` → ``Mul`` per digit (onnxruntime's fusion may turn it
    into the fused op; see :func:`optimized_ops`); ``wide`` — the digits side by side in one
    ``MatMulIntegerToFloat`` (rows × k·cols), then a reshape and a sum over the digits.
    ``cast``: the input is the float32 code ``u`` (what the DAC's Round gives) and the graph casts it.
    """
    rows, cols = w.shape
    digits, m = int8_digits(w, k)
    scales = _digit_scales(m, k)
    dtype = TensorProto.FLOAT if cast else TensorProto.UINT8
    x = helper.make_tensor_value_info("x", dtype, ["m", rows])
    nodes = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8)] if cast else []
    a = "u" if cast else "x"
    inits = [
        numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "azp"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    if form == "wide":
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(np.concatenate(list(digits), axis=1)), "q"),
            numpy_helper.from_array(np.concatenate(scales), "s"),
            numpy_helper.from_array(np.array([-1, k, cols], np.int64), "shape"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ]
        nodes += [
            helper.make_node("MatMulIntegerToFloat", [a, "q", "one", "s", "azp"], ["p"], domain="com.microsoft"),
            helper.make_node("Reshape", ["p", "shape"], ["p3"]),
            helper.make_node("ReduceSum", ["p3", "axis"], ["y"], keepdims=0),
        ]
        return _model(nodes, [x], inits, cols)
    terms = []
    for i in range(k):
        inits += [numpy_helper.from_array(digits[i], f"q{i}"), numpy_helper.from_array(scales[i], f"s{i}")]
        if form == "fused":
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat", [a, f"q{i}", "one", f"s{i}", "azp"], [f"t{i}"], domain="com.microsoft"
                )
            )
        elif form == "pattern":
            nodes += [
                helper.make_node("MatMulInteger", [a, f"q{i}", "azp"], [f"p{i}"]),
                helper.make_node("Cast", [f"p{i}"], [f"f{i}"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"f{i}", f"s{i}"], [f"t{i}"]),
            ]
        else:
            raise ValueError(f"unknown form {form!r}")
        terms.append(f"t{i}")
    nodes.append(helper.make_node("Sum", terms, ["y"]))
    return _model(nodes, [x], inits, cols, ms=form == "fused")


def optimized_ops(model: bytes, path) -> list[str]:
    """The op types of ``model`` after onnxruntime's graph optimisation (written to ``path``)."""
    import onnxruntime as ort

    from chipsim.ort_session import PROVIDERS, session_options

    opts = session_options(1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(model, opts, providers=PROVIDERS)
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def conv_float_graph(w: np.ndarray, attrs: dict) -> bytes:
    """Today's Conv tile: ``Conv(x', W)`` on float32 DAC outputs (N, C, H, W); ``w`` (cols, C, kh, kw)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w.shape[1], "h", "w"])
    init = [numpy_helper.from_array(w.astype(np.float32), "w")]
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], [x], init, w.shape[0], ms=False, rank=4)


def conv_int8_graph(w: np.ndarray, k: int, attrs: dict) -> bytes:
    """The Conv tile from k int8 digits (per output channel): ``ConvInteger`` → ``Cast`` → ``Mul``
    per digit on the uint8 codes, then ``Sum`` (onnxruntime has no fused ConvInteger-to-float)."""
    cols = w.shape[0]
    digits, m = int8_digits(w.reshape(cols, -1).T, k)
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", w.shape[1], "h", "w"])
    inits = [numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "azp")]
    nodes, terms = [], []
    for i, s in enumerate(_digit_scales(m, k)):
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(digits[i].T.reshape(w.shape)), f"q{i}"),
            numpy_helper.from_array(s.reshape(1, cols, 1, 1), f"s{i}"),
        ]
        nodes += [
            helper.make_node("ConvInteger", ["x", f"q{i}", "azp"], [f"p{i}"], **attrs),
            helper.make_node("Cast", [f"p{i}"], [f"f{i}"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"f{i}", f"s{i}"], [f"t{i}"]),
        ]
        terms.append(f"t{i}")
    nodes.append(helper.make_node("Sum", terms, ["y"]))
    return _model(nodes, [x], inits, cols, ms=False, rank=4)
