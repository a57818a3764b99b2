"""The report of :mod:`bench.scale`: its markdown table and notes, and ``--merge``'s rows kept
from an earlier run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

TARGET_NS_PER_WEIGHT = 200.0
TARGET_PEAK_OVER_DISK = 3.0
TARGET_FIRST_B_PER_WEIGHT = 40.0


def _gib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f}"


def _per_weight(m: dict) -> str:
    """Peak RSS at the first new age over the RSS before programming, bytes per analog weight."""
    b = m["peak_rss_first_new_age_bytes"]
    if b is None:
        return "n/a"
    per = (b - m["rss_before_program_bytes"]) / m["weights"]
    return f"{per:.0f}{_mark(per, TARGET_FIRST_B_PER_WEIGHT)}"


def _readout_per_weight(m: dict) -> str:
    """Peak RSS at the first new age over the RSS just before it (the chip programmed), bytes per
    analog weight: the read-out's own increment, which ``service.memory.readout_cost`` estimates."""
    before = m.get("rss_before_first_new_age_bytes")
    if before is None or m["peak_rss_first_new_age_bytes"] is None:
        return "n/a"
    return f"{(m['peak_rss_first_new_age_bytes'] - before) / m['weights']:.1f}"


def _cpu_ns(m: dict) -> str:
    """Programming's CPU time per weight: on a host shared with other jobs, what an idle core would take."""
    cpu = m.get("cpu_ns_per_weight")
    return "n/a" if cpu is None else f"{cpu:.0f}{_mark(cpu, TARGET_NS_PER_WEIGHT)}"


def _seconds(s: float | None) -> str:
    return "not run" if s is None else f"{s:.2f}"


def _mark(value: float, target: float) -> str:
    return " ✓" if value <= target else " ✗"


def _archive_notes(models: list[dict]) -> list[str]:
    """A line per model uploaded as an archive: what unpacking it cost, before programming."""
    gb = 2**30
    return [
        f"\n{m['model']}: uploaded as a .tar of {m['archive_bytes'] / gb:.2f} GiB (the model with its weights as "
        f"external data, as a user uploads a model too large for one file), unpacked by "
        f"`chipsim.compiler.archive.model_from_archive` in {m['archive_s']:.1f} s at a peak RSS of "
        f"{m['peak_rss_archive_bytes'] / gb:.2f} GiB; the RSS before programming holds the model's "
        f"{m['onnx_bytes'] / gb:.2f} GiB of ONNX bytes it returned."
        for m in models
        if "archive_s" in m
    ]


def markdown(data: dict) -> str:
    info = data["machine"]
    gb = 2**30
    lines = [
        "# Scale: programming, memory, first request, throughput\n",
        f"`{info['command']}` · {info['date']} · {info['cpus']} CPUs (shared with other processes) · "
        f"onnxruntime {info['onnxruntime']} · profile 'pcm' · one fresh process per model\n",
        f"Targets: programming ≤ {TARGET_NS_PER_WEIGHT:.0f} ns/weight; peak RSS while programming ≤ "
        f"{TARGET_PEAK_OVER_DISK:.0f}× the chip's own files on disk; peak RSS at the first request ≤ "
        f"{TARGET_FIRST_B_PER_WEIGHT:.0f} B/weight over the RSS before programming.\n",
        "| model | weights | program (s) | ns/weight | CPU ns/weight | peak RSS program (GiB) | chip files (GiB) | peak/chip files | "
        "(peak − RSS before)/chip files | store (GiB) | peak/store | binding | runtime build (s) | "
        "first request, new age (s) | 2nd new age (s) | peak RSS 1st new age (GiB) | B/weight | "
        "read-out B/weight | peak RSS through 2nd new age (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in data["models"]:
        pf = m.get("peak_rss_first_requests_bytes")
        own = m["peak_rss_program_bytes"] / m["chip_disk_bytes"]
        grown = (m["peak_rss_program_bytes"] - m["rss_before_program_bytes"]) / m["chip_disk_bytes"]
        lines.append(
            f"| {m['model']} | {m['weights'] / 1e6:.1f}M | {m['program_s']:.1f} | {m['ns_per_weight']:.0f}"
            f"{_mark(m['ns_per_weight'], TARGET_NS_PER_WEIGHT)} | {_cpu_ns(m)} | {m['peak_rss_program_bytes'] / gb:.2f} | "
            f"{m['chip_disk_bytes'] / gb:.2f} | {own:.2f}{_mark(own, TARGET_PEAK_OVER_DISK)} | "
            f"{grown:.2f}{_mark(grown, TARGET_PEAK_OVER_DISK)} | "
            f"{m['store_disk_bytes'] / gb:.2f} | {m['peak_over_disk']:.2f} | {m.get('binding', 'n/a')} | "
            f"{m['runtime_build_s']:.2f} | "
            f"{m['first_request_new_age_s']:.2f} | {_seconds(m.get('second_new_age_s'))} | "
            f"{_gib(m['peak_rss_first_new_age_bytes'])} | {_per_weight(m)} | {_readout_per_weight(m)} | {_gib(pf)} |"
        )
    lines += [
        "",
        "Peak RSS while programming includes the interpreter and imports (RSS before programming: "
        + ", ".join(f"{m['model']} {m['rss_before_program_bytes'] / gb:.2f} GiB" for m in data["models"])
        + "), and the model's bytes read from its file. Chip files: the chip's own folder (its two "
        "device arrays, 8 B/weight); store: the whole temporary ChipStore after `save` (with the "
        "shared blobs: the model and its target weights). ns/weight is wall time; CPU ns/weight the "
        "process's CPU time while programming (on a host shared with other jobs, wall time also "
        "counts the waits for a core). B/weight: peak RSS at the first request at a new age minus "
        "the RSS before programming, per analog weight (the chip's state included); read-out B/weight: "
        "over the RSS just before the first request instead (the chip programmed; n/a: not recorded "
        "by the run that measured the row). 'not run': a "
        f"model above {data.get('first_age_only_above', 0) / 1e6:.0f}M weights stops after its first "
        "new age (no second age, no throughput session: see the module docstring).",
        *_archive_notes(data["models"]),
        *_measured_notes(data),
        "",
        "## Throughput, analog ('pcm', fixed age, fresh noise) / digital (onnxruntime, original model), "
        f"1 thread, {data['rounds']} interleaved rounds\n",
        "| model | batch | analog samples/s (median) | digital samples/s (median) | ratio median | ratio range |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in data["models"]:
        for b, t in m["throughput"].items():
            lines.append(
                f"| {m['model']} | {b} | {statistics.median(t['analog_samples_per_s']):.2f} | "
                f"{statistics.median(t['digital_samples_per_s']):.2f} | {t['ratio_median']:.3f} | "
                f"{t['ratio_range'][0]:.3f}–{t['ratio_range'][1]:.3f} |"
            )
    if data.get("not_run"):
        lines += ["", "## Not run\n"]
        for s in data["not_run"]:
            lines.append(
                f"- MLP width {s['width']} ({s['weights'] / 1e6:.0f}M weights): predicted peak RSS "
                f"{s['predicted_peak_bytes'] / gb:.1f} GiB > {data['max_peak_gb']} GB."
            )
    return "\n".join(lines) + "\n"


def merged_models(path: Path, models: list[dict]) -> list[dict]:
    """The rows of the results at ``path`` (if any), each replaced by this run's row of the same
    model, then this run's other rows; a kept row keeps the date and command that measured it."""
    if not path.exists():
        return models
    old = json.loads(path.read_text())
    new = {m["model"]: m for m in models}
    out = []
    for m in old["models"]:
        m.setdefault("measured", {"date": old["machine"]["date"], "command": old["machine"]["command"]})
        out.append(new.pop(m["model"], m))
    return out + list(new.values())


def _measured_notes(data: dict) -> list[str]:
    """A line per row measured by another command than the one in the header (``--merge``)."""
    own = data["machine"]["command"]
    return [
        f"\n{m['model']}: measured by `{m['measured']['command']}` · {m['measured']['date']}."
        for m in data["models"]
        if m.get("measured", {}).get("command", own) != own
    ]
