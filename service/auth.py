"""API keys: the management key guards programming, deleting and recalibrating; the inference
key guards inference, evaluation and jobs (the management key is accepted there too). An unset
key leaves its routes open. Keys come as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``
and are compared in constant time. The FastAPI dependencies are in :mod:`service.routes.deps`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from service.problems import Unauthorized
from service.settings import Settings


def given_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries (``headers``: case-insensitive, as Starlette's), if any."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _check_key(headers: Mapping[str, str], keys: list[str]) -> None:
    given = given_key(headers)
    ok = False
    if given is not None:
        g = given.encode()
        for k in keys:  # compare with every key, constant time each
            ok |= hmac.compare_digest(g, k.encode())
    if not ok:
        raise Unauthorized(
            "api_key", "api_key: missing or wrong API key (send X-API-Key: <key> or Authorization: Bearer <key>)"
        )


def check_admin(settings: Settings, headers: Mapping[str, str]) -> None:
    if settings.api_key is not None:
        _check_key(headers, [settings.api_key.get_secret_value()])


def check_infer(settings: Settings, headers: Mapping[str, str]) -> None:
    if settings.infer_api_key is not None:
        keys = [settings.infer_api_key.get_secret_value()]
        if settings.api_key is not None:
            keys.append(settings.api_key.get_secret_value())
        _check_key(headers, keys)
