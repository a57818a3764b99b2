"""Rebuild a trained Fashion-MNIST model's ``model.pt`` from its exported ONNX file.

The studies' torch-side measurements (the robustness midpoint µ, whose noise hooks sit on the
torch layers) need ``model.pt``; the zoo commits only the ONNX files, and the ``model.pt`` of
training seed 0 was lost with its machine (docs/studies.md). The ONNX file holds every weight the
evaluation uses: the convolutions with their BatchNorm folded in, the linear layers (as Gemm
initializers under their torch names, or transposed MatMul initializers that
``agedchip.layers`` names), the DAC input ranges (``agedchip.input_ranges``) and the recipe
(``agedchip.recipe``). The rebuilt model carries each folded convolution as the convolution
followed by an identity BatchNorm (γ = 1, β = the folded bias, running mean 0, running variance
1 − ε, so γ/√(var + ε) = 1), which :func:`models.fmnist_models.export_copy` folds back to the
same network. It is an eval-time model: the training state (optimiser, the BatchNorm statistics
before folding) is not recoverable, and a written folder says so in ``rebuilt.json``. The µ
study (:mod:`studies.fmnist_midpoint`) rebuilds in memory (:func:`torch_from_onnx`) any model
without a ``model.pt``; the command writes one for other uses.

Checked before anything is written: the rebuilt model's folded copy under torch and the ONNX
file under onnxruntime agree on the first validation images (never the test set).

    python -m models.fmnist_rebuild models/zoo/fmnist/resnet-fmnist-plain.onnx --out /tmp/resnet-plain-s0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np

#: Largest |Δ logit| between the rebuilt torch model and onnxruntime, relative to the largest
#: |logit|: float32 summation order differs (onnxruntime's fused kernels), nothing else.
MAX_REL_DIFF = 1e-4
#: Validation images of the check.
CHECK_IMAGES = 500


class RebuildError(ValueError):
    """The ONNX file does not determine a model of the recipe's architecture."""


def _metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _transposed_initializers(onnx_model) -> set[str]:
    """Initializers that hold a weight as ``(in, out)``: the right operand of a MatMul, or of a
    Gemm without ``transB`` (torch's Linear keeps ``(out, in)``; a square weight shows no
    difference in shape, so the consuming node decides)."""
    inits = {i.name for i in onnx_model.graph.initializer}
    out = set()
    for node in onnx_model.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1:
            out.add(node.input[1])
        elif node.op_type == "Gemm" and len(node.input) > 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if not trans_b:
                out.add(node.input[1])
    return out & inits


def rebuilt_state(onnx_model, torch_model) -> dict:
    """The state dict of ``torch_model`` (built for the ONNX file's recipe) with every weight
    taken from ``onnx_model``; raises :class:`RebuildError` when a float entry has no source."""
    import torch
    from onnx import numpy_helper

    meta = _metadata(onnx_model)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    layers = json.loads(meta.get("agedchip.layers", "{}"))  # weight initializer → module
    ranges = json.loads(meta.get("agedchip.input_ranges", "{}"))  # weight initializer → r
    by_module = {mod: init for init, mod in layers.items()}
    state = {k: v.clone() for k, v in torch_model.state_dict().items()}
    filled: set[str] = set()
    transposed = _transposed_initializers(onnx_model)

    def put(key: str, value: np.ndarray, init: str | None = None) -> None:
        want = tuple(state[key].shape)
        arr = np.array(value, np.float32)  # a copy: the tensor must own writable memory
        if init in transposed:
            arr = np.ascontiguousarray(arr.T)  # a MatMul initializer holds Linear's (out, in) as (in, out)
        if arr.shape != want:
            raise RebuildError(f"{key}: the ONNX file holds shape {arr.shape}, the model needs {want}")
        state[key] = torch.from_numpy(arr)
        filled.add(key)

    for name, mod in torch_model.named_modules():
        prefix = f"{name}." if name else ""
        for conv, bn in getattr(mod, "CONV_BN", ()):
            w = f"{prefix}{conv}.weight"
            if w not in inits or f"{prefix}{conv}.bias" not in inits:
                raise RebuildError(f"{w}: no folded convolution of that name in the ONNX file")
            put(w, inits[w])
            folded_bias, eps, b = inits[f"{prefix}{conv}.bias"], getattr(mod, bn).eps, f"{prefix}{bn}."
            put(b + "bias", folded_bias)
            put(b + "weight", np.ones_like(folded_bias))
            put(b + "running_mean", np.zeros_like(folded_bias))
            put(b + "running_var", np.full_like(folded_bias, 1.0 - eps))
    for key in state:
        if key in filled or not state[key].is_floating_point():
            continue
        module, _, leaf = key.rpartition(".")
        if leaf == "input_range":
            init = by_module.get(module)
            if init is not None and init in ranges:
                put(key, np.float32(ranges[init]))
            continue  # a layer the export did not map keeps its default range
        if key in inits:
            put(key, inits[key], key)
        elif leaf == "weight" and module in by_module and by_module[module] in inits:
            put(key, inits[by_module[module]], by_module[module])
        else:
            raise RebuildError(f"{key}: not in the ONNX file (initializers, agedchip.layers)")
    return state


def torch_from_onnx(onnx_path: Path, check_images: int = CHECK_IMAGES, arch_kwargs: dict | None = None):
    """(eval-mode torch model, recipe, check record) rebuilt from ``onnx_path``, after checking
    that its folded copy gives the ONNX file's logits on the first ``check_images`` validation
    images (:data:`MAX_REL_DIFF`); raises :class:`RebuildError` otherwise. ``arch_kwargs``: the
    architecture's size when not the default (the ONNX metadata does not record it)."""
    import onnx
    import torch

    from chipsim.ort_session import cpu_session
    from models import fmnist_data as D
    from models import fmnist_models as FM
    from models.fmnist_recipe import FmnistRecipe

    data = Path(onnx_path).read_bytes()
    model = onnx.load_from_string(data)
    meta = _metadata(model)
    if "agedchip.recipe" not in meta:
        raise RebuildError(f"{onnx_path}: no agedchip.recipe metadata (not written by models.train_fmnist)")
    recipe = FmnistRecipe.from_json(json.loads(meta["agedchip.recipe"]))
    net = FM.build(recipe.arch, recipe.seed, **(arch_kwargs or {}))
    net.load_state_dict(rebuilt_state(model, net))
    net.eval()
    val = D.load_split("val", check_images)
    sess = cpu_session(data, 1)
    ref = sess.run(None, {sess.get_inputs()[0].name: val.x})[0]
    with torch.no_grad():
        got = FM.export_copy(net)(torch.from_numpy(val.x)).numpy()
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    if rel > MAX_REL_DIFF:
        raise RebuildError(f"{onnx_path}: the rebuilt model differs from the ONNX file by {rel:.2e} (> {MAX_REL_DIFF})")
    check = {
        "split": "val",
        "images": int(len(val.x)),
        "max_rel_logit_diff": rel,
        "limit": MAX_REL_DIFF,
        "val_accuracy_onnx": float((ref.argmax(1) == val.y).mean()),
    }
    return net, recipe, check


def rebuild(onnx_path: Path, out: Path, check_images: int = CHECK_IMAGES, arch_kwargs: dict | None = None) -> dict:
    """Write ``out/model.pt`` (what ``models.train_fmnist.load_model`` reads), ``out/recipe.json``
    and ``out/rebuilt.json`` (what was done and the check) for ``onnx_path``; returns the
    ``rebuilt.json`` record."""
    import torch

    net, recipe, check = torch_from_onnx(onnx_path, check_images, arch_kwargs)
    record = {
        "rebuilt_from": str(onnx_path),
        "onnx_sha256": hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest(),
        "how": "python -m models.fmnist_rebuild: weights from the ONNX file, BatchNorm as identity after the folded "
        "convolutions; not the training run's model.pt (its optimiser and BatchNorm statistics are not recoverable)",
        "check": check,
    }
    out.mkdir(parents=True, exist_ok=True)
    saved = {
        "state_dict": net.state_dict(),
        "recipe": json.dumps(recipe.to_json()),
        "arch_kwargs": json.dumps(arch_kwargs or {}),
    }
    tmp = out / f"model.pt.{os.getpid()}.tmp"
    torch.save(saved, tmp)
    os.replace(tmp, out / "model.pt")
    (out / "recipe.json").write_text(json.dumps(recipe.to_json(), indent=1) + "\n")
    (out / "rebuilt.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.fmnist_rebuild", description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path, help="an ONNX file written by models.train_fmnist")
    ap.add_argument("--out", type=Path, required=True, help="folder for model.pt, recipe.json and rebuilt.json")
    args = ap.parse_args(argv)
    if (args.out / "model.pt").exists():
        raise SystemExit(f"{args.out / 'model.pt'} exists: rebuild into an empty folder")
    try:
        rec = rebuild(args.onnx, args.out)
    except RebuildError as e:
        raise SystemExit(str(e)) from None
    print(f"{args.out}: rebuilt, max relative logit difference {rec['check']['max_rel_logit_diff']:.1e}")


if __name__ == "__main__":
    main()
