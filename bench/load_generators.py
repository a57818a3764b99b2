"""Load generators of the HTTP load test: wrk through a Lua script (fixed body, optional paced
arrivals, a JSON summary), and a bounded asyncio/httpx fallback."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np

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


def warm_up(url: str, sc: dict, n: int = 30) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(n):
            r = c.post(sc["route"], content=sc["body"], headers=sc["headers"])
            if r.status_code != 200:
                raise SystemExit(f"{sc['name']}: warm-up request failed: {r.status_code} {r.text[:500]}")
