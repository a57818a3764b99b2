"""What a program request carries, resolved and checked before any work (DESIGN §4): the
profile, the ONNX model (a zoo model, an upload, or an uploaded archive), the eval set against the
inputs the model declares, and the chip's cost (tiles, devices, tensor sizes) against the limits.
Shared by /program (and its dry run, which stops here) and POST /fleets. Errors are
:mod:`service.problems`.
"""

from __future__ import annotations

from typing import Any

from chipsim import ProfileError, get_profile
from chipsim.compiler import model_inputs
from chipsim.compiler.archive import ArchiveLimitError, ArchiveLimits, is_archive, model_from_archive
from chipsim.compiler.bounds import AllocationLimits
from chipsim.compiler.inspection import inspect_model
from chipsim.model_inputs import ModelInputs
from chipsim.profiles import ChipProfile
from service import program_cost
from service.datasets import EvalSet, calibration_feeds, check_eval_set, load_npz, parse_eval_set
from service.problems import InvalidField, invalid_value
from service.program_request import ProgramSpec
from service.settings import Settings
from service.zoo import Zoo

#: The setting behind each bound of an uploaded archive, named in the error that it refuses.
ARCHIVE_SETTINGS = {"max_members": "AGEDCHIP_MAX_ARCHIVE_MEMBERS", "max_bytes": "AGEDCHIP_MAX_ARCHIVE_BYTES"}


class ProgramInputs:
    """The checks and look-ups of programming, for one service's settings and zoo."""

    def __init__(self, settings: Settings, zoo: Zoo):
        self.settings = settings
        self.zoo = zoo

    def profile(self, spec: ProgramSpec) -> ChipProfile:
        """The request's profile (preset and overrides); InvalidField names the field at fault."""
        try:
            return get_profile(spec.preset, **spec.overrides)
        except ProfileError as err:
            raise InvalidField(f"profile.{err.field}" if err.field else "profile", str(err)) from None

    def model_bytes(self, spec: ProgramSpec) -> tuple[bytes, bytes | None]:
        """The ONNX model of a request (a zoo model, an upload, or the model of an uploaded
        archive with its external data inside) and its eval set's bytes (or None)."""
        if spec.zoo_model is not None:
            return self.zoo.model_bytes(spec.zoo_model), spec.eval_data or self.zoo.eval_bytes(spec.zoo_model)
        assert spec.model_bytes is not None
        model_bytes = spec.model_bytes
        if is_archive(model_bytes):
            limits = ArchiveLimits(
                max_members=self.settings.max_archive_members, max_bytes=self.settings.max_archive_bytes
            )
            try:
                model_bytes = model_from_archive(model_bytes, limits)
            except ArchiveLimitError as err:
                raise InvalidField("model", f"{err} ({ARCHIVE_SETTINGS[err.limit]})") from None
            except ValueError as err:  # CompileError
                raise invalid_value(err, default_field="model") from None
        return model_bytes, spec.eval_data

    def check_source(self, spec: ProgramSpec) -> None:
        """The request names a zoo model that exists, or uploads a model."""
        if spec.zoo_model is not None:
            self.zoo.check_name(spec.zoo_model)
        elif not spec.model_bytes:
            raise InvalidField(
                "model",
                "model: upload an ONNX file (multipart field 'model') or name a zoo model "
                f"(available: {self.zoo.names()})",
            )

    def dry_run(self, spec: ProgramSpec) -> dict[str, Any]:
        """What programming the request would do (analog and digital nodes, refusals), as JSON;
        nothing is programmed or stored. Blocking: call from a worker thread."""
        self.check_source(spec)
        profile = self.profile(spec)
        model_bytes, eval_bytes = self.model_bytes(spec)
        self.check_cost(model_bytes, profile, tile_rows_given="tile_rows" in spec.overrides)
        calib = calibration_feeds(load_npz(spec.calibration, "calibration")) if spec.calibration is not None else None
        eval_set = self.eval_set(model_bytes, eval_bytes) if eval_bytes is not None else None
        try:
            report = inspect_model(
                model_bytes,
                profile,
                spec.preset,
                calibration=calib,
                eval_inputs=eval_set.feeds if eval_set is not None else None,
                limits=self.allocation_limits(),
            )
        except ValueError as err:  # calibration data that does not fit the model
            raise invalid_value(err, default_field="model") from None
        return {"dry_run": True, **report.to_json()}

    def allocation_limits(self) -> AllocationLimits:
        """What a model may allocate (issue #15): its tensors at the largest batch served."""
        s = self.settings
        return AllocationLimits(
            batch=s.max_batch, max_tensor_elements=s.max_tensor_elements, max_total_elements=s.max_graph_elements
        )

    def check_cost(self, model_bytes: bytes, profile: ChipProfile, tile_rows_given: bool) -> None:
        """Refuse a chip over AGEDCHIP_MAX_TILES or AGEDCHIP_MAX_DEVICES before any work. Tiles
        are blamed on ``profile.tile_rows`` when the request set it, else on the model."""
        cost = program_cost.estimate(model_bytes, profile.tile_rows)
        if cost is None:
            return
        limit = self.settings.max_tiles
        if cost.tiles > limit:
            field = "profile.tile_rows" if tile_rows_given else "model"
            raise InvalidField(
                field,
                f"{field}: the model maps onto {cost.tiles} tiles with tile_rows="
                f"{profile.tile_rows}, more than the limit of {limit} (AGEDCHIP_MAX_TILES); raise "
                "tile_rows or use a smaller model",
            )
        if cost.devices > self.settings.max_devices:
            raise InvalidField(
                "model",
                f"model: its analog weights need {cost.devices} devices, more than the limit "
                f"of {self.settings.max_devices} (AGEDCHIP_MAX_DEVICES)",
            )

    def eval_set(self, model_bytes: bytes, eval_bytes: bytes) -> EvalSet:
        """The eval set of a chip to program, checked against the inputs its model declares."""
        try:
            declared = model_inputs(model_bytes)
        except ValueError as err:  # CompileError
            raise invalid_value(err, default_field="model") from None
        eval_set = parse_eval_set(eval_bytes, [i["name"] for i in declared], self.settings.max_eval_samples)
        check_eval_set(eval_set, ModelInputs(declared))
        return eval_set
