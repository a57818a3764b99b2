"""One run of the Fashion-MNIST STE study (:mod:`studies.fmnist_ste`), in its own process: HWA
fine-tuning of a plain run with one gradient mode and seed, measured while it trains.

What is measured:

- per optimiser step, the wall clock (``time.perf_counter``) and this process's CPU time
  (``time.process_time``), both in seconds, at the end of every step; a step's cost is the
  difference between consecutive ends (data, augmentation, chip draw, forward, backward, update,
  clipping), so the first step (no predecessor) and any step whose interval spans an epoch's end
  (validation) are left out by :func:`step_costs`, and so are the first ``warmup`` steps;
- the peak increase of resident memory over the whole training (:class:`RssSampler` of
  :mod:`studies.gradient_cost`), after a warm-up forward/backward and the data loading that both
  modes share;
- bytes autograd saves for the backward pass of one training forward (batch of the recipe's
  size, noise at full strength, 1 y), counted with saved-tensor hooks and deduplicated by storage,
  on the start model after training ends (so the hooks cost the timed steps nothing).

A run killed part-way resumes from its last epoch's checkpoint (``models.fmnist_training``'s
``--resume``, which continues to the same weights). Each process is one *segment*: after every
epoch's checkpoint it rewrites its timings into ``timing.json`` beside it, so the finished run's
time per step is the median over every segment's kept steps and its peak memory the largest
segment's; steps of an epoch that was redone are timed only where they were checkpointed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

#: Steps at the start of a run left out of the time per step (first kernels, allocator growth).
WARMUP_STEPS = 5


def step_costs(
    ends: list[tuple[float, float]], steps_per_epoch: int, warmup: int = WARMUP_STEPS, first_step: int = 0
) -> dict:
    """Wall and CPU seconds of each kept step from the (wall, cpu) time at the end of every step.

    Step ``k`` (1-based, counted in this process) costs ``ends[k-1] - ends[k-2]``; kept are
    ``k > max(1, warmup)`` whose interval contains no epoch's end (``first_step + k - 1`` a
    multiple of ``steps_per_epoch``; ``first_step``: steps done before, by a resumed run)."""
    wall, cpu = [], []
    for k in range(max(2, warmup + 1), len(ends) + 1):
        if (first_step + k - 1) % steps_per_epoch == 0:
            continue
        wall.append(ends[k - 1][0] - ends[k - 2][0])
        cpu.append(ends[k - 1][1] - ends[k - 2][1])
    return {"wall": wall, "cpu": cpu}


def _median(v: list[float]) -> float | None:
    return float(statistics.median(v)) if v else None


def _saved_bytes(model, x, y, config, repeats: int = 3) -> int:
    """Peak over ``repeats`` forwards of the bytes autograd saves for backward (storage-deduplicated)."""
    import torch
    import torch.nn.functional as F

    from models import hwa as H

    ctx = H.HwaContext(config, torch.Generator().manual_seed(0))
    H.attach(model, ctx)
    model.train()
    seen: set[int] = set()
    cur = [0]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            cur[0] += t.untyped_storage().nbytes()
        return t

    peak = 0
    for _ in range(repeats):
        seen.clear()
        cur[0] = 0
        ctx.new_batch(1.0, H.YEAR_S)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), y)
        peak = max(peak, cur[0])
        loss.backward()
        model.zero_grad(set_to_none=True)
    H.attach(model, None)
    return peak


@contextlib.contextmanager
def clocked_steps(FT, ends: list[tuple[float, float]]):
    """Within the block, the trainer's optimiser step appends its (wall, CPU) end time to
    ``ends``: :func:`models.fmnist_training.train` records times per epoch only, and has no
    per-step hook (it is at its size limit). Restored on exit."""
    inner = FT._optimiser_step

    def timed(*a, **k):
        inner(*a, **k)
        ends.append((time.perf_counter(), time.process_time()))

    FT._optimiser_step = timed
    try:
        yield ends
    finally:
        FT._optimiser_step = inner


TIMING = "timing.json"


def merge_segments(segments: list[dict]) -> dict:
    """One run's costs from its segments (one per process, as :class:`SegmentLog` records them):
    every segment's kept steps pooled, the largest peak RSS increase and its base."""
    wall = [w for seg in segments for w in seg["wall"]]
    cpu = [c for seg in segments for c in seg["cpu"]]
    top = max(segments, key=lambda seg: seg["rss_peak_increase_bytes"])
    return {
        "steps": max(seg["first_step"] + seg["steps"] for seg in segments),
        "segments": len(segments),
        "timed_steps": len(wall),
        "wall_s_per_step": _median(wall),
        "cpu_s_per_step": _median(cpu),
        "rss_peak_increase_bytes": top["rss_peak_increase_bytes"],
        "rss_base_bytes": top["rss_base_bytes"],
    }


class SegmentLog:
    """This process's segment of a run, kept in ``timing.json`` beside the run's checkpoint: the
    wrapped ``run.end_epoch`` (of a :class:`models.fmnist_training.Run`) rewrites the file after
    each epoch's checkpoint with the earlier processes' segments and this one's (steps so far,
    their kept costs, the RSS peak so far of ``rss``, an active :class:`RssSampler`)."""

    def __init__(self, run, ends: list[tuple[float, float]], rss, steps_per_epoch: int):
        self.path = run.out / TIMING
        self.earlier: list[dict] = json.loads(self.path.read_text())["segments"] if self.path.is_file() else []
        self.mine: dict | None = None
        inner = run.end_epoch

        def end_epoch(rec: dict, state: dict) -> None:
            inner(rec, state)
            first = state["step"] - len(ends)
            self.mine = {"first_step": first, "steps": len(ends), **step_costs(ends, steps_per_epoch, first_step=first)}
            self.mine.update(rss_peak_increase_bytes=rss.increase, rss_base_bytes=rss.base)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"segments": self.segments()}) + "\n")
            os.replace(tmp, self.path)

        run.end_epoch = end_epoch

    def segments(self) -> list[dict]:
        return [*self.earlier, *([self.mine] if self.mine else [])]


def train_run(spec: dict) -> dict:
    """Train and measure the run ``spec`` (keys of :class:`studies.fmnist_ste.RunSpec`, as a dict);
    writes ``model.onnx`` into ``spec["folder"]`` and returns the measurements."""
    import torch

    torch.set_num_threads(1)
    from models import fmnist_data as D
    from models import fmnist_models as FM
    from models import fmnist_training as FT
    from models.export import build_onnx
    from models.fmnist_recipe import TrainMode, default_recipe
    from models.train_fmnist import load_model
    from studies.gradient_cost import RssSampler

    folder = Path(spec["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    teacher, t_recipe, kwargs = load_model(Path(spec["teacher"]))
    recipe = default_recipe(t_recipe.arch, TrainMode.HWA)
    recipe = replace(recipe, seed=spec["seed"], noise=replace(recipe.noise, mode=spec["mode"]))
    for key in ("batch_size", "epochs"):
        if spec.get(key):
            recipe = replace(recipe, **{key: spec[key]})
    tr = D.load_split("train", spec.get("limit_train"))
    D.load_split("val", spec.get("limit_val"))
    # shared warm-up: torch's first kernels and the data in memory before the baseline is taken
    x0 = torch.from_numpy(tr.x[: recipe.batch_size])
    teacher(x0).sum()
    start = FM.build(t_recipe.arch, t_recipe.seed, **kwargs)
    start.load_state_dict(teacher.state_dict())
    steps_per_epoch = math.ceil(len(tr.x) / recipe.batch_size)
    ends: list[tuple[float, float]] = []
    run = FT.Run(folder)
    with clocked_steps(FT, ends), RssSampler() as rss:
        log = SegmentLog(run, ends, rss, steps_per_epoch)
        model = FT.train(
            recipe,
            run,
            teacher=teacher,
            arch_kwargs=kwargs,
            limit_train=spec.get("limit_train"),
            limit_val=spec.get("limit_val"),
            emu_val=0,
            max_steps=spec["max_steps"],
            resume=True,
            progress=False,
        )
    if log.mine:  # its peak over the whole training, the last epoch's end and the saving included
        log.mine["rss_peak_increase_bytes"] = rss.increase
    from models import hwa as H

    H.calibrate_input_ranges(start, torch.from_numpy(tr.x[: FT.CALIBRATION_IMAGES]))
    saved = _saved_bytes(start, x0, torch.from_numpy(tr.y[: recipe.batch_size]).long(), recipe.noise)
    model_bytes, _ = build_onnx(FM.export_copy(model), {}, example=torch.zeros(2, *D.INPUT_SHAPE))
    (folder / "model.onnx").write_bytes(model_bytes)
    return {
        "recipe": recipe.to_json(),
        **merge_segments(log.segments()),
        "steps_per_epoch": steps_per_epoch,
        "autograd_saved_bytes": saved,
    }


def worker(spec: dict, out_q) -> None:  # pragma: no cover - runs in a spawned process
    """Entry point of the spawned process: :func:`train_run`, its result (or error text) on ``out_q``."""
    try:
        out_q.put({"ok": train_run(spec)})
    except BaseException as err:  # the parent reports it with the run's name
        out_q.put({"error": f"{type(err).__name__}: {err}"})
        raise
