"""Pure ASGI middleware: shutdown (503), request size limits (413 before parsing) and the HTTP
metrics.

While the service is stopping (``stopping`` set by the server's signal handler), requests other
than the probes and the scrape get a JSON 503 with ``Retry-After`` and ``Connection: close``; a
request whose task the server cancels at the end of its graceful shutdown answers the same JSON
503 instead of the server's text/plain 500. A client that leaves before its answer is recorded
as 499 (a 4xx), never as a server error. The app's route table is read duck-typed (``routes``,
``matches(scope)``, ``path``) to label requests rejected before routing with their template.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from service.errors import error_body, is_oip, retry_after
from service.jsonio import dumps
from service.metrics import CLIENT_CLOSED, Metrics
from service.problems import SHUTDOWN_RETRY_S, SHUTTING_DOWN
from service.settings import Settings

log = logging.getLogger("agedchip.service")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class _ClientGone(Exception):
    """The client disconnected while its body was being read: nothing to answer."""


class ServiceMiddleware:
    """Bodies over the limit are refused with 413 before any route reads them (``upload_paths``
    get ``max_upload_bytes``, others ``max_request_bytes``); every request is counted and timed.
    ``open_paths`` (probes, metrics) are served while the service stops."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        metrics: Metrics,
        upload_paths: frozenset[str],
        stopping: threading.Event,
        open_paths: frozenset[str] = frozenset(),
    ):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.upload_paths = upload_paths
        self.stopping = stopping
        self.open_paths = open_paths

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
                if match.name == "FULL" and getattr(r, "path", None):  # starlette.routing.Match.FULL
                    return r.path
        return "unmatched"

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        status, started = [500], [False]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        async def refuse(code: int, message_text: str, field: str | None, extra: list[tuple[bytes, bytes]]) -> None:
            payload = dumps(error_body(code, message_text, field, oip=is_oip(scope["path"])))
            await send_wrapper(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                        (b"connection", b"close"),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})

        shutdown_headers = [(b"retry-after", retry_after(SHUTDOWN_RETRY_S).encode())]
        try:
            if self.stopping.is_set() and scope["path"] not in self.open_paths:
                await refuse(503, SHUTTING_DOWN, None, shutdown_headers)
                return
            upload = scope["path"] in self.upload_paths
            limit = self.settings.max_upload_bytes if upload else self.settings.max_request_bytes
            setting = "AGEDCHIP_MAX_UPLOAD_BYTES" if upload else "AGEDCHIP_MAX_REQUEST_BYTES"
            try:
                rejected, receive = await self._limit(scope, receive, limit, setting)
            except _ClientGone:
                status[0] = CLIENT_CLOSED
                return
            if rejected is not None:
                await refuse(*rejected, [])
                return
            try:
                await self.app(scope, receive, send_wrapper)
            except asyncio.CancelledError:
                # The server cancels the requests still running when its graceful shutdown times
                # out (after its signal handler set `stopping`): answer them in JSON and end the
                # task normally, instead of letting the server log an error and send a text 500.
                if not self.stopping.is_set() or started[0]:
                    raise
                log.warning("%s %s cancelled by the shutdown", method, scope["path"])
                await refuse(503, SHUTTING_DOWN, None, shutdown_headers)
        finally:
            self.metrics.observe(self._template(scope), method, status[0], time.perf_counter() - start)

    @staticmethod
    async def _limit(
        scope: dict[str, Any], receive: Receive, limit: int, setting: str
    ) -> tuple[tuple[int, str, str | None] | None, Receive]:
        """(status, message, field) when the body is refused, and the ``receive`` to read it with:
        a body without a declared length is read (and counted) here, then replayed to the app.
        Raises :class:`_ClientGone` if the client left meanwhile."""
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return (400, "Content-Length must be a non-negative integer", None), receive
            if int(length) > limit:
                return (
                    413,
                    f"request body of {int(length)} bytes exceeds the limit of {limit} bytes ({setting})",
                    "body",
                ), receive
            return None, receive
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return None, receive
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                return (413, f"request body exceeds the limit of {limit} bytes ({setting})", "body"), receive
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay
