"""The inference routes' hot path: POST /infer and the OIP infer routes as plain Starlette routes,
matched before every other route.

FastAPI's route machinery (a walk through the route table, dependency injection, the
per-route exception wrapper) was the largest share of a batch-1 request's event-loop work in a
profile; without it a batched batch-1 request takes about 0.7x the server CPU
(bench/results/load_code_ab.md). These endpoints run the same checks (the routes' declared
dependencies, in their order) and the same route functions, and let errors propagate to the
app's exception handlers, so answers are those of the FastAPI routes, byte for byte. The FastAPI
routes stay in the table for the OpenAPI document; a request for them never reaches them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from service.routes import infer, oip
from service.routes.deps import require_infer, require_json_body

Check = Callable[[Request], Awaitable[None]]
Handler = Callable[..., Awaitable[Response]]


class _Endpoint:
    """An ASGI endpoint (a class instance: Starlette calls it as an app, without a wrapper) that
    runs ``checks`` then ``handler(request, **path_params)`` and sends its response."""

    def __init__(self, checks: Sequence[Check], handler: Handler):
        self.checks, self.handler = tuple(checks), handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        for check in self.checks:
            await check(request)
        response = await self.handler(request, **scope["path_params"])
        await response(scope, receive, send)


class HotRoute(Route):
    """A POST route that names itself in the scope (``scope["route"]``) as FastAPI's routes do:
    the metrics label requests by its template without searching the table."""

    def __init__(self, path: str, endpoint: _Endpoint):
        super().__init__(path, endpoint, methods=["POST"], include_in_schema=False)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def hot_routes() -> list[Route]:
    """The inference routes, to put first in the app's route table."""
    return [
        HotRoute("/infer", _Endpoint((require_infer, require_json_body), infer.infer)),
        HotRoute("/v2/models/{model_name}/infer", _Endpoint((require_infer,), oip.infer)),
        HotRoute("/v2/models/{model_name}/versions/{model_version}/infer", _Endpoint((require_infer,), oip.infer_v)),
    ]
