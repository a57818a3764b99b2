"""The load test's report: the median of each metric over rounds, the dynamic batching A/B
ratios (per round, then median and range), and the Markdown."""

from __future__ import annotations

import numpy as np

AGE = "1d"
TARGET_RPS, TARGET_P99_MS = 400.0, 25.0
#: Batch-1 throughput with dynamic batching over without (issue 14), and its latency bound.
TARGET_BATCH_SPEEDUP = 3.0
#: Label of each server of the A/B in the report: dynamic batching on (the defaults), off.
BATCHING, NO_BATCHING = "batching", "no batching"


def summarise(rs: list[dict]) -> dict:
    """Median of each metric over rounds; max latency, requests and errors over all rounds."""
    keys = ("rps", "samples_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "seconds")
    keys += ("server_cores", "other_cores", "cpu_ms_per_request", "mean_batch")
    out = {k: float(np.median([r[k] for r in rs])) for k in keys if all(r.get(k) is not None for r in rs)}
    out["max_ms"] = max(r["max_ms"] for r in rs)
    out.update(
        requests=sum(r["requests"] for r in rs),
        errors=sum(r["errors"] for r in rs),
        batch=rs[0]["batch"],
        connections=rs[0]["connections"],
        paced_rate=rs[0].get("paced_rate", 0),
        rounds=rs,
    )
    return out


def ratios(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """Per scenario run on both servers: batching / no batching of requests/s and of server CPU
    per request, round by round (the rounds interleave A and B), as median [min, max]."""
    out = {}
    for name, by_server in runs.items():
        on, off = by_server.get(BATCHING), by_server.get(NO_BATCHING)
        if not on or not off:
            continue
        rps = [a["rps"] / b["rps"] for a, b in zip(on, off)]
        cpu = [a["cpu_ms_per_request"] / b["cpu_ms_per_request"] for a, b in zip(on, off) if b["cpu_ms_per_request"]]
        out[name] = {
            "rps_ratio": _spread(rps),
            "cpu_per_request_ratio": _spread(cpu) if cpu else None,
            "p99_ms": {
                BATCHING: float(np.median([a["p99_ms"] for a in on])),
                NO_BATCHING: float(np.median([b["p99_ms"] for b in off])),
            },
        }
    return out


def _spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values)), "rounds": values}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def _target(r: dict) -> str:
    if r["batch"] == 1 and r.get("paced_rate"):
        ok = r["p99_ms"] <= TARGET_P99_MS and r["errors"] == 0 and r["rps"] >= 0.97 * r["paced_rate"]
        return f"p99 ≤ {TARGET_P99_MS:g} ms at {r['paced_rate']:g}/s, 0 errors {'✅' if ok else '❌'}"
    if r["batch"] == 1:
        ok = r["rps"] >= TARGET_RPS and r["errors"] == 0
        return f"max ≥ {TARGET_RPS:g}/s, 0 errors {'✅' if ok else '❌'}"
    return ""


def _header(data: dict) -> list[str]:
    m = data["machine"]
    return [
        "# HTTP load test",
        "",
        f"`{data['command']}` · {m['date']} · {m['cpus']} CPUs (shared by server and generator, and on this host "
        f"with other agents' jobs: absolute numbers are indicative) · generator: {data['generator']} "
        f"({data['duration_s']:g} s per scenario and round, ≤ {data['max_requests']} requests) · median of "
        f"{data['rounds']} rounds, the servers interleaved within each round (A, B, then B, A) · model: "
        f"{data['model']} ({data['model_source']}) · profile pcm · age {AGE} · onnxruntime threads per request: "
        f"{data['server_env'].get('AGEDCHIP_ORT_THREADS', '1')} · dynamic batching: {data['batching']} · CPU busy "
        f"from other processes before / after the run: {_pct(data['cpu_busy_before'])} / "
        f"{_pct(data['cpu_busy_after'])}",
        "",
    ]


def _table(data: dict) -> list[str]:
    lines = [
        "| scenario | server | batch | connections | requests (all rounds) | requests/s | samples/s | p50 (ms) | "
        "p90 (ms) | p99 (ms) | max (ms) | errors | server CPU per request (ms) | requests per batch | "
        "server cores | other processes' cores | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, by_server in data["scenarios"].items():
        for server, r in by_server.items():
            batch = f"{r['mean_batch']:.1f}" if r.get("mean_batch") is not None else "–"
            lines.append(
                f"| {name} | {server} | {r['batch']} | {r['connections']} | {r['requests']} | {r['rps']:.0f} | "
                f"{r['samples_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['max_ms']:.1f} | {r['errors']} | {r.get('cpu_ms_per_request', float('nan')):.2f} | {batch} | "
                f"{r['server_cores']:.2f} | {r['other_cores']:.2f} | {_target(r)} |"
            )
    return lines


def _ab(data: dict) -> list[str]:
    if not data.get("ratios"):
        return []
    lines = [
        "",
        "## Dynamic batching: A/B",
        "",
        f"Per round, batching / no batching, then median [min–max] over the {data['rounds']} rounds. Target "
        f"(issue 14): batch-1 throughput ≥ {TARGET_BATCH_SPEEDUP:g}× without batching, at p99 ≤ "
        f"{TARGET_P99_MS:g} ms under {TARGET_RPS:g} requests/s.",
        "",
        "| scenario | requests/s ratio | server CPU per request ratio | p99 batching (ms) | p99 no batching (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in data["ratios"].items():
        q, c = r["rps_ratio"], r["cpu_per_request_ratio"]
        cpu = f"{c['median']:.2f} [{c['min']:.2f}–{c['max']:.2f}]" if c else "n/a"
        lines.append(
            f"| {name} | {q['median']:.2f}× [{q['min']:.2f}–{q['max']:.2f}] | {cpu} | "
            f"{r['p99_ms'][BATCHING]:.1f} | {r['p99_ms'][NO_BATCHING]:.1f} |"
        )
    return lines


def markdown(data: dict) -> str:
    lines = _header(data) + _table(data) + _ab(data)
    if data.get("note"):
        lines += ["", data["note"]]
    return "\n".join(lines) + "\n"
