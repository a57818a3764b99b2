"""Where a fleet's model comes from (``POST /fleets``): a zoo model (``model``) or the model an
existing chip was programmed from (``from_chip``), exactly one. The chip's ONNX and eval set are the
bytes stored with it, so a fleet "of this chip" is programmed from what that chip was: an upload
becomes a fleet without uploading it again. Problems name the request field at fault."""

from __future__ import annotations

from dataclasses import dataclass

from service.chip_evaluation import EVAL_ATTACHMENT
from service.problems import Conflict, InvalidField, NotFound, Problem
from service.registry import Registry

#: The chip attachment holding the ONNX model a chip was programmed from (chipsim.program).
MODEL_ATTACHMENT = "model.onnx"
#: ``model_source`` in a fleet chip's metadata (beside the registry's "zoo" and "upload").
FROM_ZOO, FROM_CHIP = "zoo", "chip"


@dataclass(frozen=True)
class ModelSource:
    """The model a fleet programs: ``name`` labels it (at most 64 characters), ``kind`` says where it
    came from, ``chip_id`` the chip it was taken from (``from_chip`` only)."""

    name: str
    kind: str
    model_bytes: bytes
    eval_bytes: bytes | None
    chip_id: str | None = None

    def meta(self) -> dict[str, str]:
        """What every chip of the fleet records about its model's origin."""
        return {"model_source": self.kind, **({"source_chip": self.chip_id} if self.chip_id else {})}


def model_source(registry: Registry, model: str | None, from_chip: str | None) -> ModelSource:
    """The source a request names; InvalidField when it names none or both."""
    if model is not None and from_chip is not None:
        raise InvalidField("from_chip", "from_chip: give a zoo model (model) or a chip (from_chip), not both")
    if from_chip is not None:
        return _chip_source(registry, from_chip)
    if model is None:
        raise InvalidField("model", "model: field required: a zoo model name (GET /zoo), or give from_chip")
    zoo = registry.zoo
    zoo.check_name(model)
    return ModelSource(model, FROM_ZOO, zoo.model_bytes(model), zoo.eval_bytes(model))


def _chip_source(registry: Registry, chip_id: str) -> ModelSource:
    try:
        served = registry.get(chip_id)
    except (InvalidField, NotFound, Conflict) as problem:  # the registry names the field chip_id
        raise _renamed(problem) from None
    chip = served.chip
    if chip.meta.get("parent"):
        raise InvalidField(
            "from_chip",
            f"from_chip: chip {chip_id!r} was made by recalibrating {chip.meta['parent']!r}; its re-written "
            "layer is in no model, so it cannot seed a fleet (use its parent, or program the retrained model)",
        )
    model_bytes = chip.attachments.get(MODEL_ATTACHMENT)
    if model_bytes is None:
        raise Conflict("from_chip", f"from_chip: chip {chip_id!r} was stored without its ONNX model")
    return ModelSource(served.model_name[:64], FROM_CHIP, model_bytes, chip.attachments.get(EVAL_ATTACHMENT), chip_id)


def _renamed(problem: Problem) -> Problem:
    message = problem.message.removeprefix("chip_id: ")
    return type(problem)("from_chip", f"from_chip: {message}", problem.retry_after_s)
