"""The agedchip HTTP service (DESIGN §5–6): a thin FastAPI layer over chipsim.

``create_app(settings)`` builds the app; ``python -m service`` serves it with uvicorn.
Blocking work (inference, programming, evaluation, drift metrics, the gauge refresh) runs in
worker threads, never on the event loop; programming and evaluation have their own capacity
limiters so a slow one never holds the threads inference needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.routing import Match

from chipsim import PRESETS
from service import __version__
from service.background import Refresher
from service.durations import DurationError, parse_age
from service.errors import ApiError, error_body, install as install_errors, is_oip, validation_to_api_error
from service.metrics import Metrics
from service.recalibration import JobTable, router as recalibration_router
from service.registry import LoadedChip, ProgramSpec, Registry
from service.schemas import (
    ERROR_RESPONSES, ChipList, ChipSummary, DriftResponse, EvaluateRequest, EvaluateResponse, Health,
    InferRequest, InferResponse, ProgramJson, inline_schema,
)
from service.settings import Settings

log = logging.getLogger("agedchip.service")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
FORM_FILE_FIELDS = {"model", "calibration", "eval", "eval_data"}
FORM_TEXT_FIELDS = {"model", "zoo_model", "chip_id", "profile", "overrides", "seed", "time_scale"}


# ----------------------------------------------------------------------------------- JSON helpers
def _finite_list(arr: np.ndarray) -> list[Any]:
    """A nested list of an array; non-finite values become null (JSON has no NaN)."""
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        obj = arr.astype(object)
        obj[~np.isfinite(arr)] = None
        return obj.tolist()
    return arr.tolist()


def dumps(content: Any) -> bytes:
    return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


# ----------------------------------------------------------------------------------- middleware
class ServiceMiddleware:
    """Pure ASGI: request size limits (413 before parsing) and the HTTP metrics."""

    def __init__(self, app: Any, settings: Settings, metrics: Metrics, upload_paths: frozenset[str]):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.upload_paths = upload_paths

    def _template(self, scope: dict[str, Any]) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return path
        router = getattr(scope.get("app"), "router", None)
        if router is not None:  # rejected before routing (413): find the template ourselves
            for r in router.routes:
                try:
                    match, _ = r.matches(scope)
                except Exception:
                    continue
                if match == Match.FULL and getattr(r, "path", None):
                    return r.path
        return "unmatched"

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            limit = (self.settings.max_upload_bytes if scope["path"] in self.upload_paths
                     else self.settings.max_request_bytes)
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length")
            rejected: tuple[int, str, str | None] | None = None
            if length is not None:
                if not length.isdigit():
                    rejected = (400, "Content-Length must be a non-negative integer", None)
                elif int(length) > limit:
                    rejected = (413, f"request body of {int(length)} bytes exceeds the limit of {limit} bytes", "body")
            elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                # No declared length: read (and count) the body here, then replay it to the app.
                chunks, total, more = [], 0, True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > limit:
                        rejected = (413, f"request body exceeds the limit of {limit} bytes", "body")
                        break
                    chunks.append(chunk)
                    more = message.get("more_body", False)
                if rejected is None:
                    body = b"".join(chunks)
                    sent = False

                    async def replay() -> dict:
                        nonlocal sent
                        if not sent:
                            sent = True
                            return {"type": "http.request", "body": body, "more_body": False}
                        return await receive()

                    receive = replay
            if rejected is not None:
                code, message_text, field = rejected
                payload = dumps(error_body(code, message_text, field, oip=is_oip(scope["path"])))
                await send_wrapper({"type": "http.response.start", "status": code,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(payload)).encode()),
                                                (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": payload})
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(self._template(scope), method, status[0], time.perf_counter() - start)


# ----------------------------------------------------------------------------------- auth
def _given_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _check_key(request: Request, keys: list[str]) -> None:
    given = _given_key(request)
    ok = False
    if given is not None:
        g = given.encode()
        for k in keys:  # compare with every key, constant time each
            ok |= hmac.compare_digest(g, k.encode())
    if not ok:
        raise ApiError(401, "api_key: missing or wrong API key (send X-API-Key: <key> or Authorization: Bearer <key>)",
                       "api_key", headers={"WWW-Authenticate": "Bearer"})


def require_admin(request: Request) -> None:
    s: Settings = request.app.state.settings
    if s.api_key is not None:
        _check_key(request, [s.api_key.get_secret_value()])


def require_infer(request: Request) -> None:
    s: Settings = request.app.state.settings
    if s.infer_api_key is not None:
        keys = [s.infer_api_key.get_secret_value()]
        if s.api_key is not None:
            keys.append(s.api_key.get_secret_value())
        _check_key(request, keys)


# ----------------------------------------------------------------------------------- /program parsing
def _program_spec(fields: dict[str, Any], files: dict[str, tuple[bytes, str | None]]) -> ProgramSpec:
    """Validate the fields of POST /program (from JSON or a multipart form)."""
    try:
        req = ProgramJson.model_validate(fields)
    except ValidationError as err:
        raise validation_to_api_error(err) from None
    zoo = req.zoo_model or req.model
    if req.model and req.zoo_model and req.model != req.zoo_model:
        raise ApiError(422, "model: give either 'model' or 'zoo_model', not both", "model")
    preset, overrides = "pcm", {}
    if isinstance(req.profile, str):
        preset = req.profile
    elif isinstance(req.profile, dict):
        p = dict(req.profile)
        preset = p.pop("preset", None) or p.pop("name", None) or "pcm"
        nested = p.pop("overrides", None)
        if nested is not None and not isinstance(nested, dict):
            raise ApiError(422, "profile.overrides: must be an object of profile fields", "profile.overrides")
        overrides.update(nested or {})
        overrides.update(p)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ApiError(422, f"profile: unknown preset {preset!r}; known presets: {sorted(PRESETS)}", "profile")
    overrides.update(req.overrides or {})
    model_bytes, filename = files.get("model", (None, None))
    if model_bytes is not None and zoo:
        raise ApiError(422, "model: upload an ONNX file or name a zoo model, not both", "model")
    eval_bytes = (files.get("eval") or files.get("eval_data") or (None, None))[0]
    return ProgramSpec(
        model_bytes=model_bytes, model_filename=filename, zoo_model=None if model_bytes is not None else zoo,
        chip_id=req.chip_id, preset=preset, overrides=overrides, seed=req.seed, time_scale=req.time_scale,
        calibration=files.get("calibration", (None, None))[0], eval_data=eval_bytes,
    )


async def _parse_program_request(request: Request) -> ProgramSpec:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=8, max_fields=32)
        fields: dict[str, Any] = {}
        files: dict[str, tuple[bytes, str | None]] = {}
        try:
            for key, value in form.multi_items():
                if key in fields or key in files:
                    raise ApiError(422, f"{key}: given more than once", key)
                if isinstance(value, UploadFile):
                    if key not in FORM_FILE_FIELDS:
                        raise ApiError(422, f"{key}: unknown file field; file fields: {sorted(FORM_FILE_FIELDS)}", key)
                    files[key] = (await value.read(), value.filename)
                else:
                    if key not in FORM_TEXT_FIELDS:
                        raise ApiError(422, f"{key}: unknown field; fields: {sorted(FORM_TEXT_FIELDS | FORM_FILE_FIELDS)}",
                                       key)
                    if value == "":
                        continue
                    if key == "overrides" or (key == "profile" and value.lstrip().startswith("{")):
                        try:
                            value = json.loads(value)
                        except ValueError:
                            raise ApiError(422, f"{key}: not a valid JSON object", key) from None
                        if not isinstance(value, dict):
                            raise ApiError(422, f"{key}: must be a JSON object", key)
                    fields[key] = value
        finally:
            await form.close()
        return _program_spec(fields, files)
    if ctype in ("application/json", ""):
        body = await request.body()
        try:
            data = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            raise ApiError(422, "body: not valid JSON", "body") from None
        if not isinstance(data, dict):
            raise ApiError(422, "body: expected a JSON object", "body")
        return _program_spec(data, {})
    raise ApiError(415, f"content-type: expected multipart/form-data (ONNX upload) or application/json (zoo model), "
                   f"got {ctype!r}", "content-type")


PROGRAM_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string", "format": "binary",
                                  "description": "ONNX model file (weights inside, opset ≥ 13), or a zoo model name "
                                                 "as a text field."},
                        "zoo_model": {"type": "string", "description": "Zoo model name (instead of an upload)."},
                        "chip_id": {"type": "string", "description": "Id of the new chip (a-z, 0-9, '-', '_'; "
                                                                     "≤ 63 characters). Default: <model>-<hex>."},
                        "profile": {"type": "string", "description": "Preset name (ideal, pcm-reference, pcm, "
                                                                     "pcm-faulty, reram; default pcm) or a JSON "
                                                                     "object {\"preset\": …, field: value…}."},
                        "overrides": {"type": "string", "description": "JSON object of profile fields to override, "
                                                                       "e.g. {\"drift_scale\": 2}."},
                        "seed": {"type": "integer", "description": "Programming seed (default random)."},
                        "time_scale": {"type": "number", "description": "Chip seconds per wall-clock second for "
                                                                         "requests without an age (default 1)."},
                        "calibration": {"type": "string", "format": "binary",
                                        "description": ".npz with 'x' (or one array per input name): calibrates DAC "
                                                       "input ranges of layers without learned ranges."},
                        "eval": {"type": "string", "format": "binary",
                                 "description": ".npz with inputs ('x' or per input name) and integer labels 'y': "
                                                "the chip's eval set (evaluate, accuracy gauges)."},
                    },
                }
            },
            "application/json": {"schema": ProgramJson.model_json_schema()},
        },
    }
}


# ----------------------------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. Chips are loaded (and the default chip programmed) at startup."""
    settings = settings or Settings()
    registry = Registry(settings)
    metrics = Metrics(registry)
    infer_limiter = anyio.CapacityLimiter(settings.infer_concurrency or os.cpu_count() or 2)
    program_limiter = anyio.CapacityLimiter(settings.program_concurrency)
    eval_limiter = anyio.CapacityLimiter(settings.eval_concurrency)
    refresher = Refresher(registry, settings, limiter=eval_limiter)
    state: dict[str, Any] = {"started": False}

    def startup() -> None:
        registry.load_all()
        ensure_default_chip(registry, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(startup)
        gc.collect()
        gc.freeze()  # long-lived startup objects leave the GC's generations: shorter pauses under load
        task = asyncio.create_task(refresher.run())
        state["started"] = True
        try:
            yield
        finally:
            refresher.stop()
            await anyio.to_thread.run_sync(app.state.recalibration_jobs.shutdown)  # cancels jobs: no half chip
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    app = FastAPI(
        title="agedchip",
        version=__version__,
        description="Deploy neural networks on an emulated, ageing analog in-memory-computing (PCM) chip. "
                    "Ages are seconds after programming or durations ('1h', '30d', '1y' = 365 d, ISO-8601 'P1Y'). "
                    "Errors: `{\"error\": {\"status\", \"field\", \"message\"}}`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.refresher = refresher
    app.state.recalibration_jobs = JobTable(registry, settings)
    install_errors(app)
    app.include_router(recalibration_router)  # POST /chips/{id}/recalibrate, /jobs

    # ------------------------------------------------------------------ programming
    @app.post("/program", status_code=201, response_model=ChipSummary, responses=ERROR_RESPONSES,
              openapi_extra=PROGRAM_OPENAPI, dependencies=[Depends(require_admin)], tags=["chips"],
              summary="Program a new chip from an ONNX upload or a zoo model")
    async def program(request: Request) -> JSONResponse:
        """Compile the model, program its analog layers onto a new chip (sampling programming noise,
        drift exponents and faults once), publish it atomically and return its summary. The ONNX file
        is stored once by its sha256 digest and shared by chips."""
        spec = await _parse_program_request(request)
        summary = await anyio.to_thread.run_sync(lambda: registry.program(spec).summary(), limiter=program_limiter)
        return JSONResponse(summary, status_code=201, headers={"Location": f"/chips/{summary['chip_id']}"})

    # ------------------------------------------------------------------ inference
    def _infer(body: bytes) -> bytes:
        try:
            req = InferRequest.model_validate_json(body)  # parsed here, in the worker thread
        except ValidationError as err:
            raise validation_to_api_error(err) from None
        chip = registry.get(req.chip_id)
        res = chip.infer(req.inputs, req.age, read_seed=req.read_seed, gdc=req.gdc, seed=req.seed)
        content: dict[str, Any] = {
            "chip_id": chip.chip_id, "age_s": res.age_s, "age_source": res.age_source, "gdc": res.gdc,
            "gdc_applied": res.gdc != "off", "read_seed": res.read_seed, "seed": res.seed, "batch": res.batch,
            "outputs": {o["name"]: _finite_list(np.asarray(v)) for o, v in zip(chip.runtime.outputs, res.outputs)},
            "argmax": None, "accuracy": None, "alpha": res.alpha,
        }
        labelled = correct = 0
        if chip.classifier:
            logits = np.asarray(res.outputs[0])
            pred = logits.argmax(axis=1)
            content["argmax"] = pred.tolist()
            if req.labels is not None:
                if len(req.labels) != res.batch:
                    raise ApiError(422, f"labels: {len(req.labels)} labels for a batch of {res.batch}", "labels")
                y = np.asarray(req.labels, dtype=np.int64)
                if np.any(y < 0) or np.any(y >= logits.shape[1]):
                    raise ApiError(422, f"labels: class indices must be in [0, {logits.shape[1] - 1}]", "labels")
                labelled, correct = res.batch, int(np.count_nonzero(pred == y))
                content["accuracy"] = correct / labelled
        elif req.labels is not None:
            raise ApiError(422, "labels: the model is not a classifier ((batch, classes) output); omit labels",
                           "labels")
        chip.count(res.batch, labelled, correct)
        return dumps(content)

    @app.post("/infer", response_model=InferResponse, responses=ERROR_RESPONSES,
              dependencies=[Depends(require_infer)], tags=["inference"], summary="Run a chip at an age",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": inline_schema(InferRequest)}}}})
    async def infer(request: Request) -> Response:
        """Inference on a chip at an age (default: its wall-clock age × time scale). The same request
        with the same `seed` returns identical outputs. `labels` update the chip's live accuracy.
        The JSON body is parsed off the event loop."""
        body = await anyio.to_thread.run_sync(_infer, await request.body(), limiter=infer_limiter)
        return Response(body, media_type="application/json")

    # ------------------------------------------------------------------ chips
    @app.get("/chips", response_model=ChipList, tags=["chips"], summary="List chips (ready and corrupt)")
    async def list_chips() -> JSONResponse:
        return JSONResponse({"chips": registry.listing()})

    @app.get("/chips/{chip_id}", response_model=ChipSummary, responses=ERROR_RESPONSES, tags=["chips"],
             summary="A chip's summary")
    async def get_chip(chip_id: str) -> JSONResponse:
        chip = registry.get(chip_id)
        return JSONResponse(await anyio.to_thread.run_sync(chip.summary))

    @app.delete("/chips/{chip_id}", status_code=204, responses=ERROR_RESPONSES, tags=["chips"],
                dependencies=[Depends(require_admin)], summary="Delete a chip")
    async def delete_chip(chip_id: str) -> Response:
        await anyio.to_thread.run_sync(registry.delete, chip_id)
        return Response(status_code=204)

    def _evaluate(chip: LoadedChip, req: EvaluateRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        ages = []
        for i, a in enumerate(req.ages):
            try:
                ages.append((str(a), parse_age(a, f"ages.{i}")))
            except DurationError as err:
                raise ApiError(422, str(err), err.field) from None
        if req.readouts > settings.max_eval_readouts:
            raise ApiError(422, f"readouts: at most {settings.max_eval_readouts} (AGEDCHIP_MAX_EVAL_READOUTS)",
                           "readouts")
        eval_set = chip.eval_set()
        if eval_set is None or not chip.classifier:
            why = "has no labelled eval set" if eval_set is None else "is not a classifier"
            raise ApiError(409, f"chip_id: chip {chip.chip_id!r} {why}; program it with labelled eval data "
                           "(multipart field 'eval': .npz with 'x' and integer labels 'y') or from a zoo model "
                           "that ships one", "chip_id")
        if req.samples is not None:
            eval_set = eval_set.subset(req.samples)
        on_mode = req.gdc_mode or chip.runtime.gdc_mode(True)
        results = []
        for label, age_s in ages:
            stats = {}
            for key, mode in (("gdc_on", on_mode), ("gdc_off", "off")):
                vals = [chip.accuracy(eval_set, age_s, r, mode) for r in range(req.readouts)]
                stats[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "min": float(min(vals)),
                              "max": float(max(vals)), "values": vals}
            results.append({"age": label, "age_s": age_s, **stats})
        return {"chip_id": chip.chip_id, "samples": len(eval_set), "readouts": req.readouts, "gdc_mode": on_mode,
                "results": results, "seconds": time.perf_counter() - t0}

    @app.post("/chips/{chip_id}/evaluate", response_model=EvaluateResponse, responses=ERROR_RESPONSES,
              dependencies=[Depends(require_infer)], tags=["chips"],
              summary="Accuracy vs age on the chip's eval set, GDC on and off")
    async def evaluate(chip_id: str, req: EvaluateRequest) -> JSONResponse:
        """For each age: accuracy mean ± std over `readouts` read-outs (read seeds 0…n−1, per-MVM noise
        seeded alike, so results are reproducible), with and without GDC."""
        chip = registry.get(chip_id)
        return JSONResponse(await anyio.to_thread.run_sync(_evaluate, chip, req, limiter=eval_limiter))

    @app.get("/chips/{chip_id}/drift", response_model=DriftResponse, responses=ERROR_RESPONSES, tags=["chips"],
             summary="Drift metrics per layer at an age")
    async def drift(
        chip_id: str,
        age: str | None = Query(None, description="Age: seconds or a duration ('1h', '30d', 'P1Y'); default the "
                                                  "chip's current age."),
        read_seed: int = Query(0, ge=0, le=2**63 - 1, description="Read-out seed (1/f noise draw)."),
        gdc: str | None = Query(None, description="GDC mode of the 'with GDC' numbers: global, column, exact "
                                                  "(default: the profile's)."),
    ) -> JSONResponse:
        chip = registry.get(chip_id)
        if gdc is not None and gdc not in ("global", "column", "exact"):
            raise ApiError(422, f"gdc: expected global, column or exact, got {gdc!r}", "gdc")
        try:
            age_s = chip.wall_age() if age is None else parse_age(age)
        except DurationError as err:
            raise ApiError(422, str(err), "age") from None

        def work() -> dict[str, Any]:
            return {"chip_id": chip.chip_id, **chip.drift(age_s, read_seed, gdc)}

        return JSONResponse(await anyio.to_thread.run_sync(work, limiter=eval_limiter))

    @app.get("/zoo", tags=["chips"], summary="Models of the zoo (programmable by name)")
    async def zoo() -> JSONResponse:
        return JSONResponse({"models": await anyio.to_thread.run_sync(registry.zoo.listing)})

    # ------------------------------------------------------------------ operations
    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "chips": registry.counts()})

    @app.get("/readyz", response_model=Health, tags=["operations"], summary="Readiness (chips loaded)",
             responses={503: {"model": Health}})
    async def readyz() -> JSONResponse:
        ready = state["started"] and registry.loaded
        return JSONResponse({"status": "ok" if ready else "starting", "chips": registry.counts()},
                            status_code=200 if ready else 503)

    from service.oip import install as install_oip

    install_oip(app, registry, settings, infer_limiter)

    app.add_middleware(ServiceMiddleware, settings=settings, metrics=metrics, upload_paths=frozenset({"/program"}))
    return app


def ensure_default_chip(registry: Registry, settings: Settings) -> None:
    """Program the zoo's default model as chip `default_chip_id` when the store has no such chip."""
    if not settings.default_model:
        return
    chip_id = settings.default_chip_id
    if chip_id in registry.corrupt():
        log.warning("default chip %r is corrupt; not re-programming it (delete it to get a fresh one)", chip_id)
        return
    if any(c.chip_id == chip_id for c in registry.ready()):
        return
    if settings.default_model not in registry.zoo.names():
        log.warning("default model %r is not in the zoo at %s; no default chip (POST /program to create chips)",
                    settings.default_model, settings.zoo_dir)
        return
    try:
        registry.program(ProgramSpec(zoo_model=settings.default_model, chip_id=chip_id,
                                     preset=settings.default_profile, seed=settings.default_seed,
                                     time_scale=settings.default_time_scale))
        log.info("programmed the default chip %r from zoo model %r (%s, time scale %g)", chip_id,
                 settings.default_model, settings.default_profile, settings.default_time_scale)
    except ApiError as err:
        log.error("could not program the default chip: %s", err.message)
    except Exception:
        log.exception("could not program the default chip")


__all__ = ["create_app", "ensure_default_chip"]
