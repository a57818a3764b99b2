"""service.jsonio: orjson's bytes decode to what the standard library would encode, and the
fallback keeps what orjson refuses encodable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from service.jsonio import dumps, finite_list


def test_same_document_as_the_standard_library():
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    content = {"chip_id": "c", "age_s": 86400.0, "seed": None, "gdc_applied": True, "outputs": {"y": x.tolist()}}
    out = dumps(content)
    assert b" " not in out  # compact
    assert json.loads(out) == json.loads(json.dumps(content))  # floats round-trip exactly


def test_non_finite_floats_become_null():
    assert json.loads(dumps({"a": [1.0, math.nan, math.inf, -math.inf]})) == {"a": [1.0, None, None, None]}
    arr = np.array([[1.0, np.nan], [np.inf, 2.0]], np.float32)
    assert json.loads(dumps({"o": finite_list(arr)})) == {"o": [[1.0, None], [None, 2.0]]}


def test_what_orjson_refuses_falls_back():
    big = 2**70  # beyond orjson's 64-bit integers
    assert json.loads(dumps({"seed": big, "x": math.nan, 3: [1.5]})) == {"seed": big, "x": None, "3": [1.5]}


def test_unknown_objects_raise_type_error():
    with pytest.raises(TypeError):
        dumps({"a": object()})
