"""What the API's models share: the GDC modes a request may name, the age type, the
field documentation of ages and GDC, and the inlining of a model's schema for a route."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, StrictFloat, StrictInt, StrictStr

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

#: Opens the description of an energy or latency figure.
ESTIMATE_DOC = "An estimate from operation counts priced by a published-chip cost model (docs/energy.md). "


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
