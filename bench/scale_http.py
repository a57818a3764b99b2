"""A large model through the HTTP service: upload, programming and the first requests, with the
server's resident memory (issue #20: models up to 500M weights on 24 GB).

    python -m bench.scale_http --replace                    # 8×7906² MLP, 500M weights, ~15 min
    python -m bench.scale_http --width 1118 --out /tmp/s    # 10M weights, a minute: a quick look

``bench.scale`` measures the library path in one process; this runs what a user runs: the model
saved with its weights as external data in a ``.tar`` (:func:`bench.scale_models.mlp_archive`,
the same MLP), ``python -m service`` with the README's settings for a model of that size, the
archive streamed to ``POST /program`` by ``httpx`` (the client never holds it), then ``POST
/infer`` at a new age (the first read-out) and again at that age (the read-out cached). The
server's RSS is sampled every 0.2 s from ``/proc/<pid>/status`` and its peak (``VmHWM``) reset
before each phase (``/proc/<pid>/clear_refs``), so each phase reports its own peak. Results go to
``bench/results/scale_http.{json,md}`` (``--replace``) or a new folder under ``runs/``.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, output_dir, proc_status_bytes, write
from bench.load_server import REPO, start_server, stop_server
from bench.scale_models import MLP_LAYERS, mlp_archive
from models import outputs

NAME = "scale_http"
GIB = 1 << 30
#: Target (issue #20): a 500M-weight model on a 24 GB host.
HOST_BYTES = 24 * 10**9


class RssMeter:
    """The server's RSS, sampled on a thread; :meth:`phase` resets its peak first."""

    def __init__(self, pid: int, period_s: float = 0.2):
        self.pid, self.period_s, self.max_sampled = pid, period_s, 0
        self._reset_ok = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.max_sampled = max(self.max_sampled, proc_status_bytes("VmRSS", self.pid))
            except (OSError, RuntimeError):
                return

    def rss(self) -> int:
        return proc_status_bytes("VmRSS", self.pid)

    def reset(self) -> bool:
        """Reset VmHWM to the current RSS (Linux ≥ 4.0; needs the right to write the server's file)."""
        self.max_sampled = self.rss()
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def peak(self) -> int:
        """The phase's peak: VmHWM, or the largest sample where it could not be reset."""
        return max(proc_status_bytes("VmHWM", self.pid), self.max_sampled) if self._reset_ok else self.max_sampled

    def phase(self) -> None:
        self._reset_ok = self.reset()

    def close(self) -> None:
        self._stop.set()


def settings_for(weights: int, archive_bytes: int, memory_budget: int = 23 * 10**9) -> dict[str, str]:
    """The README's settings for a model of ``weights`` float32 weights in an archive of
    ``archive_bytes`` (upload and archive limits above its size, two devices per weight) and the
    memory guard's budget, bytes."""
    return {
        "AGEDCHIP_MAX_UPLOAD_BYTES": str(archive_bytes + (64 << 20)),
        "AGEDCHIP_MAX_ARCHIVE_BYTES": str(archive_bytes + (32 << 20)),
        "AGEDCHIP_MAX_DEVICES": str(2 * weights + 1_000_000),
        "AGEDCHIP_MEMORY_BUDGET": str(memory_budget),
        "AGEDCHIP_REFRESH_SECONDS": "0",  # the refresher's own read-outs would mix into the phases
    }


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(width: int, layers: int, work: Path, memory_budget: int = 23 * 10**9) -> dict:
    import httpx

    weights = width * width * layers
    tar = work / "mlp.tar"
    _, build_s = _timed(lambda: mlp_archive(width, tar, layers))
    state = work / "state"
    state.mkdir()
    env = settings_for(weights, tar.stat().st_size, memory_budget)
    proc, url = start_server(REPO / "models" / "zoo", state, env)
    meter = RssMeter(proc.pid)
    out: dict = {
        "width": width,
        "layers": layers,
        "weights": weights,
        "archive_bytes": tar.stat().st_size,
        "archive_build_s": round(build_s, 1),
        "settings": env,
    }
    try:
        out["rss_idle_bytes"] = meter.rss()
        with httpx.Client(base_url=url, timeout=None) as c:
            meter.phase()
            with open(tar, "rb") as f:
                r, secs = _timed(
                    lambda: c.post(
                        "/program",
                        files={"model": ("mlp.tar", f, "application/x-tar")},
                        data={"profile": "pcm", "chip_id": "big"},
                    )
                )
            out["program"] = {"status": r.status_code, "seconds": round(secs, 1), "peak_rss_bytes": meter.peak()}
            if r.status_code != 201:
                out["program"]["error"] = r.text[:2000]
                return out
            out["rss_after_program_bytes"] = meter.rss()
            x = np.random.default_rng(0).random((1, width), dtype=np.float32).tolist()
            for name, age in (("first_new_age", "1d"), ("same_age_again", "1d"), ("second_new_age", "1y")):
                meter.phase()
                r, secs = _timed(lambda: c.post("/infer", json={"chip_id": "big", "inputs": x, "age": age}))
                row = {"age": age, "status": r.status_code, "seconds": round(secs, 2), "peak_rss_bytes": meter.peak()}
                if r.status_code != 200:
                    row["error"] = r.text[:2000]
                out[name] = row
            out["rss_end_bytes"] = meter.rss()
    finally:
        meter.close()
        stop_server(proc)
    return out


def _gib(b: int | None) -> str:
    return "–" if b is None else f"{b / GIB:.2f}"


def render(res: dict) -> str:
    r = res["result"]
    w = r["weights"]
    lines = [
        "# A large model through the HTTP service",
        "",
        f"`{res['command']}` · {res['when']} · {res['machine']} · "
        f"CPU busy from other processes at the start: {res['cpu_busy_before']}",
        "",
        f"Model: MLP {r['layers']}×{r['width']}², {w / 1e6:.1f}M float32 weights, uploaded as a .tar of "
        f"{r['archive_bytes'] / 1e9:.2f} GB (the model with its weights as external data; built in "
        f"{r['archive_build_s']} s). Server settings: "
        + ", ".join(f"`{k}={v}`" for k, v in r["settings"].items())
        + f". Server RSS idle (the default chip loaded): {_gib(r['rss_idle_bytes'])} GiB.",
        "",
        "| phase | HTTP status | seconds | peak server RSS (GiB) | peak − idle, B/weight |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("program", "POST /program (upload, unpack, compile, program, store)"),
        ("first_new_age", "POST /infer, first request at 1 d (the first read-out)"),
        ("same_age_again", "POST /infer at 1 d again (read-out cached)"),
        ("second_new_age", "POST /infer at 1 y (a second read-out)"),
    ):
        p = r.get(key)
        if p is None:
            continue
        extra = (p["peak_rss_bytes"] - r["rss_idle_bytes"]) / w
        lines.append(f"| {label} | {p['status']} | {p['seconds']} | {_gib(p['peak_rss_bytes'])} | {extra:.1f} |")
    peak = max(
        r[k]["peak_rss_bytes"] for k in ("program", "first_new_age", "same_age_again", "second_new_age") if k in r
    )
    ok = all(r.get(k, {}).get("status") in (200, 201) for k in ("program", "first_new_age"))
    lines += [
        "",
        f"Peak server RSS over the run: {_gib(peak)} GiB ({peak / 1e9:.1f} GB); target (issue #20): a model of up "
        f"to 500M weights served on a 24 GB host: {'met' if ok and peak < HOST_BYTES and w >= 500e6 else 'not shown'} "
        f"by this run ({'programmed and answered' if ok else 'refused or failed'}, {w / 1e6:.0f}M weights).",
        "",
        "A refused request (503 from the memory guard, 413 from a size limit) is listed with its status; its "
        "message is in the JSON.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scale_http", description=__doc__)
    ap.add_argument("--width", type=int, default=7906, help="MLP width (default 7906: 500M weights with 8 layers)")
    ap.add_argument("--layers", type=int, default=MLP_LAYERS)
    ap.add_argument(
        "--memory-budget",
        type=int,
        default=23 * 10**9,
        help="AGEDCHIP_MEMORY_BUDGET of the server, bytes (23 GB, the README's)",
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (archive, store; default a temp folder)")
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    out = output_dir(NAME, args)
    from bench.load_server import cpu_busy

    busy = cpu_busy()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        result = run(args.width, args.layers, Path(tmp), args.memory_budget)
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    res = {
        "command": f"python -m bench.scale_http {argv_text}".strip(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "cpu_busy_before": "n/a" if busy is None else f"{busy:.0%}",
        "result": result,
    }
    write(NAME, res, render(res), out)
    print(render(res))


if __name__ == "__main__":
    main()
