"""HTTP load test of the service on loopback with a real load generator (wrk), and the A/B of
dynamic batching.

    python -m bench.load_test [--url URL] [--duration 10] [--rounds 3] [--connections 8 32] [--no-ab]

Starts two ``python -m service`` (state in bench/results/tmp/, ports chosen free) unless ``--url``
points at a running server: one with dynamic batching as configured by default
(``AGEDCHIP_BATCH_*``), one without (``AGEDCHIP_BATCH_MAX_SIZE=1``; ``--no-ab``: only the first).
Every scenario runs against both, interleaved in one process (A, B in even rounds, B, A in odd
ones), each bounded in time (``--duration`` seconds) and count (``--max-requests``), in
``--rounds`` rounds; the report gives the median of each metric, and per round the ratio
batching / no batching of throughput and of server CPU per request (median and range), so a
burst of load from another process on a shared machine spoils one round rather than the result:

- ``/infer`` JSON, batch 1 (as fast as the connections allow, once per ``--connections``
  count: more connections give batches room to grow) and batch 64;
- ``/v2/models/default/infer`` (Open Inference Protocol) with binary tensors in and out, batch 1 and 64;
- batch 1 of both routes also paced at ``--rate`` requests/s (the latency target's load).

Every request carries an explicit age (``1d``) and no seed (fresh per-MVM noise, as a real client),
so the read-out is cached and the numbers measure serving, not read-out computation. wrk runs
one thread (``-t1``) so the generator leaves the CPUs to the server. When ``wrk`` is not
installed (``apt-get install wrk``), a bounded asyncio/httpx generator is used instead (slower:
it competes with the server for the CPUs) and the results say so.

The default chip is the zoo's ``cnn-hwa`` when ``models/zoo`` has it; otherwise a stand-in with
the same architecture (untrained; exported with torch, which the benchmark, not the server,
imports) is built under bench/results/tmp/zoo. Results: load_test.{json,md} in a new folder runs/load_test/<time>/
(``--replace``: the committed bench/results/; models.outputs).
Targets (2 cores): batch 1 ≥ 400 requests/s with p99 ≤ 25 ms and no errors; with dynamic
batching, batch-1 throughput ≥ 3× without it at p99 ≤ 25 ms under 400 requests/s (issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import RESULTS, machine, output_dir, write
from bench.load_generators import run_httpx, run_wrk, warm_up
from bench.load_report import (
    AGE,
    BATCHING,
    NO_BATCHING,
    TARGET_BATCH_SPEEDUP,
    TARGET_P99_MS,
    TARGET_RPS,
    markdown,
    ratios,
    summarise,
)
from bench.load_server import (
    MODEL,
    TMP,
    ZOO,
    CpuMeter,
    batch_counts,
    cpu_busy,
    standin_zoo,
    start_server,
    stop_server,
    wait_refreshed,
)
from models import outputs

#: The environment of the server without dynamic batching (the other one gets none).
NO_BATCHING_ENV = {"AGEDCHIP_BATCH_MAX_SIZE": "1"}


def _infer_json(b: int, x: np.ndarray) -> dict:
    body = json.dumps({"chip_id": "default", "inputs": x.tolist(), "age": AGE}).encode()
    return {"route": "/infer", "batch": b, "body": body, "headers": {"Content-Type": "application/json"}}


def _oip_binary(b: int, x: np.ndarray, shape: list[int], input_name: str) -> dict:
    tensor = {
        "name": input_name,
        "shape": [b, *shape],
        "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }
    header = json.dumps({"inputs": [tensor], "parameters": {"age": AGE, "binary_data_output": True}}).encode()
    return {
        "route": "/v2/models/default/infer",
        "batch": b,
        "body": header + x.tobytes(),
        "headers": {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    }


def scenarios(
    batch_sizes: list[int], shape: list[int], input_name: str, rate: float, connections: list[int]
) -> list[dict]:
    """Per route and batch: as fast as the connections allow (max throughput; batch 1 once per
    connection count, named ``-c<n>`` beyond the first); at batch 1 also paced at ``rate``
    requests/s (the latency target's load)."""
    out = []
    rng = np.random.default_rng(0)
    for route in ("infer-json", "oip-binary"):
        for b in batch_sizes:
            x = rng.random((b, *shape)).astype("<f4")
            sc = _infer_json(b, x) if route == "infer-json" else _oip_binary(b, x, shape, input_name)
            counts = connections if b == 1 else connections[:1]
            for i, n in enumerate(counts):
                out.append({**sc, "name": f"{route}-b{b}" + (f"-c{n}" if i else ""), "connections": n})
            if b == 1 and rate > 0:
                out.append({**sc, "name": f"{route}-b{b}@{rate:g}/s", "rate": rate, "connections": connections[0]})
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="benchmark a running server (its chip 'default') instead of starting two")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    ap.add_argument("--connections", type=int, nargs="+", default=[8, 32], help="concurrent connections (default 8 32)")
    ap.add_argument("--max-requests", type=int, default=200_000, help="request cap per scenario")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes (default 1 64)")
    ap.add_argument(
        "--rate",
        type=float,
        default=TARGET_RPS,
        help=f"paced batch-1 scenarios at this many requests/s (default {TARGET_RPS:g}, the target; 0 = none)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all scenarios and servers (interleaved); the report gives the median per metric",
    )
    ap.add_argument("--no-ab", action="store_true", help="only the server with dynamic batching as configured")
    ap.add_argument("--only", nargs="*", help="run only these scenarios (names as in the table)")
    ap.add_argument("--generator", choices=["auto", "wrk", "httpx"], default="auto")
    ap.add_argument("--note", default="", help="free text added to the Markdown report")
    ap.add_argument("--no-write", action="store_true", help="print, do not write any file")
    outputs.add_arguments(ap, RESULTS)
    return ap


def _generator(choice: str) -> str:
    """The load generator for ``--generator``: ``auto`` takes wrk when it is installed."""
    generator = choice
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "httpx"
    if generator == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use --generator httpx")
    return generator


def _one_run(args, generator: str, url: str, sc: dict, meter: CpuMeter, work: Path) -> dict:
    before, batches_before = meter.snapshot(), batch_counts(url)
    if generator == "wrk":
        r = run_wrk(url, sc, args.duration, sc["connections"], args.max_requests, work)
    else:
        r = run_httpx(url, sc, args.duration, sc["connections"], args.max_requests)
    r.update(meter.usage(before, meter.snapshot()))
    n_batches, n_merged = (a - b for a, b in zip(batch_counts(url), batches_before))
    r.update(
        batch=sc["batch"],
        connections=sc["connections"],
        paced_rate=sc.get("rate", 0),
        # server CPU per request, ms: insensitive to how much CPU other processes leave the server
        cpu_ms_per_request=1e3 * r["server_cores"] * r["seconds"] / r["requests"] if r["requests"] else None,
        mean_batch=n_merged / n_batches if n_batches else None,
    )
    return r


def _rounds(args, generator: str, servers: dict[str, tuple[str, CpuMeter]], chosen: list[dict], work: Path):
    """``args.rounds`` rounds over the scenarios, each on every server (alternating the order);
    returns scenario → server → its runs."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for rnd in range(args.rounds):
        for sc in chosen:
            order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
            for label in order:
                url, meter = servers[label]
                r = _one_run(args, generator, url, sc, meter, work)
                runs.setdefault(sc["name"], {}).setdefault(label, []).append(r)
                batch = f"{r['mean_batch']:4.1f}" if r["mean_batch"] else "   –"
                print(
                    f"round {rnd + 1} {sc['name']:>20} {label:>11}: {r['rps']:7.0f} req/s "
                    f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  "
                    f"CPU/request {r['cpu_ms_per_request'] or 0:5.2f} ms  batch {batch}  "
                    f"cores: server {r['server_cores']:.2f} other {r['other_cores']:.2f}",
                    flush=True,
                )
    # the no-batching server is listed second, as B
    return {name: {k: by[k] for k in servers if k in by} for name, by in runs.items()}


def _start(args, work: Path) -> tuple[dict[str, tuple[str, CpuMeter]], list, str]:
    """The servers to measure (label → (url, CPU meter)), their processes, and the model's source."""
    if args.url:
        return {"running server": (args.url.rstrip("/"), CpuMeter(None))}, [], "running server"
    if (ZOO / f"{MODEL}.onnx").exists():
        zoo, source = ZOO, "zoo"
    else:
        zoo, source = standin_zoo(TMP / "zoo"), "stand-in: untrained, same architecture (zoo absent)"
    wanted = {BATCHING: {}} if args.no_ab else {BATCHING: {}, NO_BATCHING: NO_BATCHING_ENV}
    servers, procs = {}, []
    for label, env in wanted.items():
        state = work / label.replace(" ", "-") / "state"
        state.mkdir(parents=True)
        proc, url = start_server(zoo, state, env)
        procs.append(proc)
        servers[label] = (url, CpuMeter(proc.pid))
    return servers, procs, source


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    generator = _generator(args.generator)
    server_env = {k: v for k, v in os.environ.items() if k.startswith("AGEDCHIP_") and "KEY" not in k}
    TMP.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=TMP, prefix="load-"))
    procs: list = []
    try:
        servers, procs, model_source = _start(args, work)
        import httpx

        for url, _ in servers.values():
            wait_refreshed(url)
        busy_before = cpu_busy()
        first = next(iter(servers.values()))[0]
        meta = httpx.get(first + "/v2/models/default", timeout=10).json()
        inp = meta["inputs"][0]
        shape = [int(d) for d in inp["shape"][1:]]
        rate = args.rate if generator == "wrk" else 0.0
        chosen = [
            sc
            for sc in scenarios(args.batch, shape, inp["name"], rate, args.connections)
            if not args.only or sc["name"] in args.only
        ]
        for sc in chosen:
            for url, _ in servers.values():
                warm_up(url, sc)
        runs = _rounds(args, generator, servers, chosen, work)
        busy_after = cpu_busy()
    finally:
        for proc in procs:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    data = {
        "command": "python -m bench.load_test " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "generator": generator,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "max_requests": args.max_requests,
        "model": MODEL,
        "model_source": model_source,
        "age": AGE,
        "server_env": server_env,
        "batching": "A/B (defaults vs AGEDCHIP_BATCH_MAX_SIZE=1)" if len(servers) == 2 else "as configured",
        "targets": {"batch1_rps": TARGET_RPS, "batch1_p99_ms": TARGET_P99_MS, "batching_speedup": TARGET_BATCH_SPEEDUP},
        "scenarios": {name: {label: summarise(rs) for label, rs in by.items()} for name, by in runs.items()},
        "ratios": ratios(runs),
        "note": args.note,
        "cpu_busy_before": busy_before,
        "cpu_busy_after": busy_after,
    }
    md = markdown(data)
    print(md)
    if not args.no_write:
        for p in write("load_test", data, md, output_dir("load_test", args)):
            print("wrote", p)


if __name__ == "__main__":
    main()
