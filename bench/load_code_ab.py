"""Interleaved A/B of two versions of the serving code under the load test's batch-1 scenarios:
did a change to the HTTP path cut the server's work per request?

    python -m bench.load_code_ab --before REV [--rounds 3] [--duration 10]

Exports ``service/`` and ``chipsim/`` of git revision ``REV`` into a temporary folder and starts,
from that tree and from this one, a server with dynamic batching (the defaults) and one without
(``AGEDCHIP_BATCH_MAX_SIZE=1``): four ``python -m service`` on loopback, the default chip as in
:mod:`bench.load_test`. wrk drives batch-1 ``/infer`` JSON and OIP binary at 8 connections on
every server within each round (in one order, then reversed). Per round it takes the ratio
after/before of server CPU per request (the number to read on a shared host) and, per tree,
batching/no batching of requests/s; the report gives their median [min–max] over rounds.
Prints Markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from bench.load_generators import run_wrk, warm_up
from bench.load_server import REPO, TMP, ZOO, CpuMeter, start_server, stop_server, wait_refreshed
from bench.load_test import NO_BATCHING_ENV, _infer_json, _oip_binary

CONNECTIONS = 8
MODES = {"batching": {}, "no batching": NO_BATCHING_ENV}


def export_tree(rev: str, dest: Path) -> Path:
    """The serving code (service/, chipsim/) of git revision ``rev``, extracted under ``dest``."""
    tar = subprocess.run(["git", "archive", rev, "service", "chipsim"], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(dest, filter="data")
    return dest


def scenarios() -> list[dict]:
    x = np.random.default_rng(0).random((1, 1, 8, 8)).astype("<f4")
    return [
        {**_infer_json(1, x), "name": "infer-json-b1", "connections": CONNECTIONS},
        {**_oip_binary(1, x, [1, 8, 8], "input"), "name": "oip-binary-b1", "connections": CONNECTIONS},
    ]


def _med(values: list[float]) -> str:
    return f"{np.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def report(runs: dict[tuple[str, str, str], list[dict]], rev: str, args) -> str:
    """Markdown: per scenario the medians per server, then the per-round ratios."""
    lines = [
        f"# Serving code A/B: {rev} (before) against the working tree (after)",
        "",
        f"`python -m bench.load_code_ab --before {rev} --rounds {args.rounds} --duration {args.duration:g}` · "
        f"wrk, {CONNECTIONS} connections, batch 1 · median [min–max] over {args.rounds} interleaved rounds",
        "",
        "| scenario | CPU/request after/before, batching | same, no batching | batching/no batching "
        "requests/s, before | same, after |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(k[0] for k in runs):

        def cpu(tree: str, mode: str) -> list[float]:
            return [r["cpu_ms_per_request"] for r in runs[(name, tree, mode)]]

        def rps(tree: str, mode: str) -> list[float]:
            return [r["rps"] for r in runs[(name, tree, mode)]]

        cells = [_med([a / b for a, b in zip(cpu("after", mode), cpu("before", mode))]) for mode in MODES]
        cells += [_med([a / b for a, b in zip(rps(t, "batching"), rps(t, "no batching"))]) for t in ("before", "after")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| scenario | tree | server | requests/s | CPU/request (ms) | other processes' cores |",
        "|---|---|---|---:|---:|---:|",
    ]
    for (name, tree, mode), rs in runs.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in ("rps", "cpu_ms_per_request", "other_cores")}
        lines.append(
            f"| {name} | {tree} | {mode} | {med['rps']:.0f} | {med['cpu_ms_per_request']:.3f} | {med['other_cores']:.2f} |"
        )
    return "\n".join(lines)


def _measure(url: str, meter: CpuMeter, sc: dict, args, work: Path) -> dict:
    before = meter.snapshot()
    r = run_wrk(url, sc, args.duration, CONNECTIONS, args.max_requests, work)
    r.update(meter.usage(before, meter.snapshot()))
    r["cpu_ms_per_request"] = 1e3 * r["server_cores"] * r["seconds"] / max(r["requests"], 1)
    return r


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision of the code to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per scenario, server and round")
    ap.add_argument("--max-requests", type=int, default=200_000)
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    TMP.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=TMP, prefix="code-ab-"))
    trees = {"before": export_tree(args.before, work / "before"), "after": REPO}
    servers, procs = {}, []
    try:
        for tree, root in trees.items():
            for mode, env in MODES.items():
                state = work / f"{tree}-{mode.replace(' ', '-')}" / "state"
                state.mkdir(parents=True)
                proc, url = start_server(ZOO, state, env, repo=root)
                procs.append(proc)
                servers[(tree, mode)] = (url, CpuMeter(proc.pid))
        chosen = scenarios()
        for url, _ in servers.values():
            wait_refreshed(url)
            for sc in chosen:
                warm_up(url, sc)
        runs: dict[tuple[str, str, str], list[dict]] = {}
        for rnd in range(args.rounds):
            for sc in chosen:
                order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
                for key in order:
                    r = _measure(*servers[key], sc, args, work)
                    runs.setdefault((sc["name"], *key), []).append(r)
                    print(
                        f"round {rnd + 1} {sc['name']} {key}: {r['rps']:.0f} req/s, CPU/request "
                        f"{r['cpu_ms_per_request']:.3f} ms, other cores {r['other_cores']:.2f}",
                        flush=True,
                    )
    finally:
        for proc in procs:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    print(report(runs, args.before, args))


if __name__ == "__main__":
    main()
