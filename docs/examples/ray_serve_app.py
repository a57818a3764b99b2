"""Ray Serve: every chip of one read-only agedchip store behind one deployment, multiplexed by
chip id (docs/scale-out.md).

    serve run docs.examples.ray_serve_app:app          # or: serve build … -o serve.yaml
    curl localhost:8000/ -H 'serve_multiplexed_model_id: default' \\
         -d '{"inputs": [[[[0.5, …]]]], "age_s": 86400, "seed": 1}'

A replica keeps the runtimes of its most recently used chips (``max_num_models_per_replica``)
and Serve routes a request to a replica that already holds its chip when it can. Chips are
immutable and verified when loaded, so a cached runtime never goes stale; the store is opened
read-only (one writer — ``python -m service`` — programs, any replica serves). Every replica
must see the store at ``AGEDCHIP_STATE_DIR`` (a shared volume) and have agedchip installed.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve
from starlette.requests import Request

from chipsim.fleet import open_chip_store
from chipsim.runtime import ChipRuntime

STORE = os.environ.get("AGEDCHIP_STATE_DIR", "/mnt/chips")
CHIPS_PER_REPLICA = 8


def load_runtime(store, chip_id: str, threads: int = 1) -> ChipRuntime:
    """A verified chip's runtime (raises chipsim's ChipNotFoundError / ChipCorruptError)."""
    return ChipRuntime(store.load(chip_id), threads=threads)


def infer(runtime: ChipRuntime, chip_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """``{"inputs", "age_s", "read_seed"?, "gdc"?, "seed"?}`` → outputs, as ``POST /infer``."""
    outputs = runtime.run(
        body["inputs"],
        float(body["age_s"]),
        read_seed=int(body.get("read_seed", 0)),
        gdc=body.get("gdc", True),
        seed=body.get("seed"),
    )
    return {"chip_id": chip_id, "age_s": float(body["age_s"]), "outputs": [o.tolist() for o in outputs]}


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8)
class ChipServer:
    def __init__(self, store_root: str = STORE, ort_threads: int = 1):
        self.store = open_chip_store(store_root, read_only=True)
        self.threads = ort_threads

    @serve.multiplexed(max_num_models_per_replica=CHIPS_PER_REPLICA)
    async def get_runtime(self, chip_id: str) -> ChipRuntime:
        return await asyncio.to_thread(load_runtime, self.store, chip_id, self.threads)

    async def __call__(self, request: Request) -> dict[str, Any]:
        chip_id = serve.get_multiplexed_model_id()  # the "serve_multiplexed_model_id" header
        runtime = await self.get_runtime(chip_id)
        body = await request.json()
        return await asyncio.to_thread(infer, runtime, chip_id, body)  # keep the replica's event loop free


app = ChipServer.bind()
