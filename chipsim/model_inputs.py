"""Checking the inputs a request feeds a chip's model against the model's declared inputs."""

from __future__ import annotations

from typing import Any

import numpy as np


class InputError(ValueError):
    """Inference input that does not fit the model; ``field`` names the culprit."""

    def __init__(self, message: str, field: str = "inputs"):
        super().__init__(message)
        self.field = field


class ModelInputs:
    """The inputs of a model as its chip records them (``meta["inputs"]``: name, numpy dtype
    name, shape with ``None`` or a name for dynamic dimensions)."""

    def __init__(self, inputs: list[dict[str, Any]]):
        self.inputs = inputs
        self.names = {i["name"] for i in inputs}
        # (name, dtype, declared shape, [(axis, size) of its fixed dimensions]) per input
        self._specs = [
            (
                i["name"],
                np.dtype(i["dtype"]),
                i["shape"],
                [(d, w) for d, w in enumerate(i["shape"]) if isinstance(w, int) and w > 0],
            )
            for i in inputs
        ]

    def check(self, inputs: np.ndarray | dict[str, Any]) -> dict[str, np.ndarray]:
        """Validate and convert user inputs (one array for a single-input model, or name → array)
        to contiguous arrays of the declared dtypes; raises :class:`InputError` naming the input."""
        if not isinstance(inputs, dict):
            if len(self.inputs) != 1:
                raise InputError(
                    f"inputs: the model has {len(self.inputs)} inputs "
                    f"{[i['name'] for i in self.inputs]}; pass an object of name → array"
                )
            inputs = {self.inputs[0]["name"]: inputs}
        if inputs.keys() - self.names:
            raise InputError(
                f"inputs: unknown input(s) {sorted(inputs.keys() - self.names)}; the model takes {sorted(self.names)}"
            )
        feeds = {}
        batch = None
        for name, dtype, shape, fixed in self._specs:
            if name not in inputs:
                raise InputError(f"inputs.{name}: missing", field=f"inputs.{name}")
            try:
                arr = np.asarray(inputs[name], dtype=dtype)
            except (ValueError, TypeError):
                raise InputError(
                    f"inputs.{name}: not a numeric array of {dtype} (ragged nesting or non-numbers)",
                    field=f"inputs.{name}",
                ) from None
            if arr.ndim != len(shape):
                raise InputError(
                    f"inputs.{name}: expected {len(shape)} dimensions {shape}, got shape {list(arr.shape)}",
                    field=f"inputs.{name}",
                )
            for d, want in fixed:
                if arr.shape[d] != want:
                    raise InputError(
                        f"inputs.{name}: dimension {d} must be {want}, got {arr.shape[d]} (shape "
                        f"{list(arr.shape)}, expected {shape})",
                        field=f"inputs.{name}",
                    )
            if arr.size == 0 or arr.shape[0] == 0:
                raise InputError(f"inputs.{name}: empty batch", field=f"inputs.{name}")
            # min and max propagate NaN and hold any ±inf: no temporary array as isfinite(arr) makes
            if arr.dtype.kind == "f" and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
                raise InputError(f"inputs.{name}: contains NaN or infinity", field=f"inputs.{name}")
            if batch is not None and arr.shape[0] != batch:
                raise InputError(f"inputs.{name}: batch {arr.shape[0]} differs from {batch}", field=f"inputs.{name}")
            batch = arr.shape[0]
            feeds[name] = np.ascontiguousarray(arr)
        return feeds
