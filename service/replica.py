"""A read-only replica follows the writer of its state folder (``AGEDCHIP_READ_ONLY``, docs/scale-out.md).

Every ``AGEDCHIP_READ_ONLY_RELIST_SECONDS`` it re-lists the store on a worker thread
(:meth:`Registry.relist`): chips the writer published since (atomically, so a listed chip is
complete) are loaded and verified, chips it deleted are forgotten. A failed pass (the shared
volume briefly unreachable) is logged and retried at the next period; the chips already loaded
keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import anyio

from service.registry import Registry

log = logging.getLogger("agedchip.service")


async def follow_writer(registry: Registry, interval_s: float, stopping: threading.Event) -> None:
    """Re-list ``registry``'s store every ``interval_s`` seconds until ``stopping`` is set."""
    limiter = anyio.CapacityLimiter(1)  # its own thread: never a place in the request lines
    while not stopping.is_set():
        await asyncio.sleep(interval_s)
        if stopping.is_set():
            return
        try:
            await anyio.to_thread.run_sync(registry.relist, limiter=limiter)
        except Exception:
            log.exception("re-listing the store failed; retrying in %g s", interval_s)
