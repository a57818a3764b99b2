"""RSS growth per new age with the CPU arena of onnxruntime sessions on vs off (issue #15, finding 3).

    python -m bench.arena_rss

One configuration per fresh process, interleaved on, off, on, off; 2000x2000 MatMul on pcm,
binding initializers, batch 1 and 1024, 4 new ages (bench.serving_costs.memory_child). Prints
RSS growth per analog weight per age and what the read-out cache charges."""

import json
import subprocess
import sys

CHILD = r"""
import json, sys, gc
import chipsim.ort_session as o
import chipsim.runtime as r
arena = sys.argv[1] == "on"; batch = int(sys.argv[2])
base_opts = o.session_options
def opts(threads=None):
    so = base_opts(threads); so.enable_cpu_mem_arena = arena; return so
def cpu_session(model, threads=None):
    return o.ort.InferenceSession(model, opts(threads), providers=o.PROVIDERS)
r.cpu_session = cpu_session
from bench.serving_costs import memory_child
res = memory_child("initializers", batch, 2000, 4)
print(json.dumps(res))
"""
rows = []
for rep in range(2):
    for batch in (1, 1024):
        for arena in ("on", "off"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, arena, str(batch)], capture_output=True, text=True, check=True
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            last = res["steps"][-1]
            per = [s["bytes_per_weight_per_age"] for s in res["steps"]]
            acc = last["accounted_bytes"] / last["ages"] / res["weights"]
            print(
                f"rep{rep} batch={batch} arena={arena}: B/weight/age after 1..4 ages {[round(p, 1) for p in per]}, cache accounts {acc:.1f}, s/age {[round(s['seconds'], 2) for s in res['steps']]}",
                flush=True,
            )
