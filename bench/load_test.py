"""HTTP load test of the service on loopback with a real load generator (wrk).

    python -m bench.load_test [--url URL] [--duration 10] [--rounds 3] [--connections 8] [--max-requests 200000]

Starts ``python -m service`` itself (state in bench/results/tmp/, port chosen free) unless
``--url`` points at a running server, then runs four scenarios against the ``default`` chip, each
bounded in time (``--duration`` seconds) and count (``--max-requests``), in ``--rounds`` interleaved
rounds (the report gives the median of each metric, so a burst of load from another process on a
shared machine spoils one round rather than the result):

- ``/infer`` JSON, batch 1 and batch 64;
- ``/v2/models/default/infer`` (Open Inference Protocol) with binary tensors in and out, batch 1 and 64.

Every request carries an explicit age (``1d``) and no seed (fresh per-MVM noise, as a real client),
so the read-out is cached and the numbers measure serving, not read-out computation. wrk runs
one thread (``-t1``) so the generator leaves the CPUs to the server. When ``wrk`` is not
installed (``apt-get install wrk``), a bounded asyncio/httpx generator is used instead (slower:
it competes with the server for the CPUs) and the results say so.

The default chip is the zoo's ``cnn-hwa`` when ``models/zoo`` has it; otherwise a stand-in with
the same architecture (untrained; exported with torch, which the benchmark, not the server,
imports) is built under bench/results/tmp/zoo. Results: load_test.{json,md} in a new folder runs/load_test/<time>/
(``--replace``: the committed bench/results/; models.outputs).
Targets (2 cores): batch 1 ≥ 400 requests/s with p99 ≤ 25 ms and no errors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, machine, output_dir, write
from models import outputs

REPO = Path(__file__).resolve().parent.parent
TMP = RESULTS / "tmp"
ZOO = REPO / "models" / "zoo"
MODEL = "cnn-hwa"
AGE = "1d"
TARGET_RPS, TARGET_P99_MS = 400.0, 25.0

LUA = r"""
wrk.method = "POST"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
{headers}
local max_requests = {max_requests}
local count = 0
local rate = {rate}  -- requests/s for the whole thread; 0 = as fast as the connections allow
if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef[[ typedef struct {{ long tv_sec; long tv_usec; }} agedchip_tv;
             int gettimeofday(agedchip_tv *tv, void *tz); ]]
  local tv = ffi.new("agedchip_tv")
  local function now_ms()
    ffi.C.gettimeofday(tv, nil)
    return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
  end
  local start, sent = nil, 0
  -- paced arrivals on a fixed schedule (start + k/rate), so the rate holds whatever the latency
  function delay()
    local t = now_ms()
    if start == nil then start = t end
    local due = start + sent * 1000 / rate
    sent = sent + 1
    if due > t then return due - t end
    return 0
  end
end
function response(status, headers, body)
  count = count + 1
  if count >= max_requests then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON:{{"requests":%d,"duration_us":%d,"bytes":%d,"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d}},"latency_us":{{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


# ----------------------------------------------------------------------------------- the model
def standin_zoo(root: Path) -> Path:
    """A zoo with an untrained model of the cnn-hwa architecture (same shapes, same cost)."""
    import io
    import warnings

    import torch

    from models.zoo_models import build

    root.mkdir(parents=True, exist_ok=True)
    if (root / f"{MODEL}.onnx").exists():
        return root
    net = build("cnn", seed=0).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, 8, 8),),
            buf,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    (root / f"{MODEL}.onnx").write_bytes(buf.getvalue())
    x = np.random.default_rng(0).random((450, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(root / f"{MODEL}.eval.npz", x=x, y=y.astype(np.int64))
    return root


# ----------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(zoo: Path, state: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "AGEDCHIP_PORT": str(port),
        "AGEDCHIP_HOST": "127.0.0.1",
        "AGEDCHIP_STATE_DIR": str(state),
        "AGEDCHIP_ZOO_DIR": str(zoo),
        "AGEDCHIP_DEFAULT_MODEL": MODEL,
        "AGEDCHIP_LOG_LEVEL": "warning",
        **extra_env,
    }
    log = open(state.parent / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {(state.parent / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become ready in 120 s")


# ----------------------------------------------------------------------------------- scenarios
def scenarios(batch_sizes: list[int], shape: list[int], input_name: str, rate: float) -> list[dict]:
    """Per route and batch: as fast as the connections allow (max throughput); at batch 1 also
    paced at ``rate`` requests/s (the latency target's load)."""
    out = []
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        x = rng.random((b, *shape)).astype(np.float32)
        body = json.dumps({"chip_id": "default", "inputs": x.tolist(), "age": AGE}).encode()
        out.append(
            {
                "name": f"infer-json-b{b}",
                "route": "/infer",
                "batch": b,
                "body": body,
                "headers": {"Content-Type": "application/json"},
            }
        )
        if b == 1 and rate > 0:
            out.append({**out[-1], "name": f"infer-json-b{b}@{rate:g}/s", "rate": rate})
    for b in batch_sizes:
        x = rng.random((b, *shape)).astype("<f4")
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": input_name,
                        "shape": [b, *shape],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "parameters": {"age": AGE, "binary_data_output": True},
            }
        ).encode()
        out.append(
            {
                "name": f"oip-binary-b{b}",
                "route": "/v2/models/default/infer",
                "batch": b,
                "body": header + x.tobytes(),
                "headers": {
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            }
        )
        if b == 1 and rate > 0:
            out.append({**out[-1], "name": f"oip-binary-b{b}@{rate:g}/s", "rate": rate})
    return out


def run_wrk(url: str, sc: dict, duration: float, connections: int, max_requests: int, workdir: Path) -> dict:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", sc["name"])
    body_path = workdir / f"{stem}.body"
    body_path.write_bytes(sc["body"])
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in sc["headers"].items())
    script = workdir / f"{stem}.lua"
    script.write_text(LUA.format(body=body_path, headers=headers, max_requests=max_requests, rate=sc.get("rate", 0)))
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, int(round(duration)))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url + sc["route"],
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"^JSON:(.*)$", res.stdout, flags=re.M)
    if not m:
        raise SystemExit(f"wrk failed: {res.stdout}\n{res.stderr}")
    raw = json.loads(m.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    lat = raw["latency_us"]
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "rps": raw["requests"] / seconds,
        "samples_per_s": raw["requests"] * sc["batch"] / seconds,
        "errors": errors,
        "error_kinds": raw["errors"],
        "p50_ms": lat["p50"] / 1e3,
        "p90_ms": lat["p90"] / 1e3,
        "p99_ms": lat["p99"] / 1e3,
        "max_ms": lat["max"] / 1e3,
        "mean_ms": lat["mean"] / 1e3,
    }


def run_httpx(url: str, sc: dict, duration: float, connections: int, max_requests: int) -> dict:
    """Fallback generator: ``connections`` asyncio workers over one httpx client."""
    import asyncio

    import httpx

    async def main() -> dict:
        lat: list[float] = []
        errors = 0
        stop = time.perf_counter() + duration
        async with httpx.AsyncClient(
            base_url=url, timeout=5, limits=httpx.Limits(max_connections=connections)
        ) as client:

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop and len(lat) + errors < max_requests:
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(sc["route"], content=sc["body"], headers=sc["headers"])
                        ok = 200 <= r.status_code < 300
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        lat.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            seconds = time.perf_counter() - t0
        a = np.asarray(lat) * 1e3 if lat else np.zeros(1)
        n = len(lat) + errors
        return {
            "requests": n,
            "seconds": seconds,
            "rps": n / seconds,
            "samples_per_s": n * sc["batch"] / seconds,
            "errors": errors,
            "error_kinds": {},
            "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()),
            "mean_ms": float(a.mean()),
        }

    return asyncio.run(main())


def summarise(rs: list[dict]) -> dict:
    """Median of each metric over rounds; max latency, requests and errors over all rounds."""
    out = {
        k: float(np.median([r[k] for r in rs]))
        for k in (
            "rps",
            "samples_per_s",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "mean_ms",
            "seconds",
            "server_cores",
            "other_cores",
        )
    }
    out["max_ms"] = max(r["max_ms"] for r in rs)
    out.update(
        requests=sum(r["requests"] for r in rs),
        errors=sum(r["errors"] for r in rs),
        batch=rs[0]["batch"],
        paced_rate=rs[0].get("paced_rate", 0),
        rounds=rs,
    )
    return out


def warm_up(url: str, sc: dict, n: int = 30) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(n):
            r = c.post(sc["route"], content=sc["body"], headers=sc["headers"])
            if r.status_code != 200:
                raise SystemExit(f"{sc['name']}: warm-up request failed: {r.status_code} {r.text[:500]}")


class CpuMeter:
    """CPU seconds used by everything, by the server process and by this process's children
    (the load generator) between ``start`` and ``stop``: the rest is other tenants' load."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def _total_busy(self) -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / self.tick

    def _server(self) -> float:
        if self.server_pid is None:
            return 0.0
        with open(f"/proc/{self.server_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def _own(self) -> float:
        import resource

        ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime

    def snapshot(self) -> tuple[float, float, float, float]:
        try:
            return time.perf_counter(), self._total_busy(), self._server(), self._own()
        except OSError:
            return time.perf_counter(), 0.0, 0.0, 0.0

    def usage(self, a: tuple, b: tuple) -> dict:
        """Cores used on average: server, generator (+ this script), other processes."""
        dt = max(b[0] - a[0], 1e-9)
        server, own, total = (b[2] - a[2]) / dt, (b[3] - a[3]) / dt, (b[1] - a[1]) / dt
        return {"server_cores": server, "generator_cores": own, "other_cores": max(0.0, total - server - own)}


def cpu_busy(seconds: float = 2.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat): other tenants' load when idle."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle

    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
    except OSError:
        return None
    return 1 - (i1 - i0) / max(t1 - t0, 1)


# ----------------------------------------------------------------------------------- report
def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# HTTP load test",
        "",
        f"`{data['command']}` · {m['date']} · {m['cpus']} CPUs (shared by server and generator) · "
        f"generator: {data['generator']} ({data['connections']} connections, {data['duration_s']:g} s per scenario "
        f"and round, ≤ {data['max_requests']} requests) · median of {data['rounds']} interleaved rounds · model: {data['model']} ({data['model_source']}) · profile pcm · "
        f"age {AGE} · onnxruntime threads per request: {data['server_env'].get('AGEDCHIP_ORT_THREADS', '1')} · "
        f"CPU busy from other processes before / after the run: {_pct(data['cpu_busy_before'])} / "
        f"{_pct(data['cpu_busy_after'])}",
        "",
        "| scenario | batch | requests (all rounds) | requests/s | samples/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) "
        "| errors | server cores | other processes' cores | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in data["scenarios"].items():
        target = ""
        if r["batch"] == 1 and r.get("paced_rate"):
            ok = r["p99_ms"] <= TARGET_P99_MS and r["errors"] == 0 and r["rps"] >= 0.97 * r["paced_rate"]
            target = f"p99 ≤ {TARGET_P99_MS:g} ms at {r['paced_rate']:g}/s, 0 errors {'✅' if ok else '❌'}"
        elif r["batch"] == 1:
            ok = r["rps"] >= TARGET_RPS and r["errors"] == 0
            target = f"max ≥ {TARGET_RPS:g}/s, 0 errors {'✅' if ok else '❌'}"
        lines.append(
            f"| {name} | {r['batch']} | {r['requests']} | {r['rps']:.0f} | {r['samples_per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['errors']} | "
            f"{r['server_cores']:.2f} | {r['other_cores']:.2f} | {target} |"
        )
    if data.get("note"):
        lines += ["", data["note"]]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="benchmark a running server (its chip 'default') instead of starting one")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    ap.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
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
        help="rounds over all scenarios (interleaved); the report gives the median per metric, so a "
        "burst of load from other processes on a shared machine spoils one round, not the result",
    )
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


def _rounds(
    args: argparse.Namespace, generator: str, url: str, chosen: list[dict], meter: CpuMeter, work: Path
) -> dict[str, list[dict]]:
    """``args.rounds`` rounds over the ``chosen`` scenarios, interleaved; returns each scenario's runs."""
    runs: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for sc in chosen:
            before = meter.snapshot()
            if generator == "wrk":
                r = run_wrk(url, sc, args.duration, args.connections, args.max_requests, work)
            else:
                r = run_httpx(url, sc, args.duration, args.connections, args.max_requests)
            r.update(meter.usage(before, meter.snapshot()))
            r["batch"] = sc["batch"]
            r["paced_rate"] = sc.get("rate", 0)
            runs.setdefault(sc["name"], []).append(r)
            print(
                f"round {rnd + 1} {sc['name']:>16}: {r['rps']:7.0f} req/s {r['samples_per_s']:8.0f} samples/s  "
                f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  max {r['max_ms']:6.1f} ms  "
                f"errors {r['errors']}  cores: server {r['server_cores']:.2f} other {r['other_cores']:.2f}",
                flush=True,
            )
    return runs


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    generator = _generator(args.generator)

    proc = None
    server_env = {k: v for k, v in os.environ.items() if k.startswith("AGEDCHIP_") and "KEY" not in k}
    TMP.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=TMP, prefix="load-"))
    try:
        if args.url:
            url, model_source = args.url.rstrip("/"), "running server"
        else:
            if (ZOO / f"{MODEL}.onnx").exists():
                zoo, model_source = ZOO, "zoo"
            else:
                zoo, model_source = standin_zoo(TMP / "zoo"), "stand-in: untrained, same architecture (zoo absent)"
            (work / "state").mkdir()
            proc, url = start_server(zoo, work / "state", {})
        import httpx

        # let the background refresher finish its one-off work (the accuracy schedule) first
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "agedchip_chip_eval_accuracy{" in httpx.get(url + "/metrics", timeout=10).text:
                break
            time.sleep(0.5)
        busy_before = cpu_busy()
        meta = httpx.get(url + "/v2/models/default", timeout=10).json()
        inp = meta["inputs"][0]
        shape = [int(d) for d in inp["shape"][1:]]
        rate = args.rate if generator == "wrk" else 0.0
        chosen = [
            sc for sc in scenarios(args.batch, shape, inp["name"], rate) if not args.only or sc["name"] in args.only
        ]
        for sc in chosen:
            warm_up(url, sc)
        meter = CpuMeter(proc.pid if proc is not None else None)
        runs = _rounds(args, generator, url, chosen, meter, work)
        results = {name: summarise(rs) for name, rs in runs.items()}
        busy_after = cpu_busy()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
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
        "targets": {"batch1_rps": TARGET_RPS, "batch1_p99_ms": TARGET_P99_MS},
        "scenarios": results,
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
