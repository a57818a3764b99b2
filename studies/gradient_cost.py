"""Extended STE vs gradients through the noise model, for the CNN (part of the accuracy report):
both train the ``cnn-hwa`` recipe from the same plain model, each in a fresh process (so peak
memory is its own): seconds per step, peak resident memory above the process's baseline, bytes
that autograd saves for the backward pass per step, and the final chip accuracy of both.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import resource
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from chipsim import get_profile
from chipsim.ages import YEAR_S
from studies.common import STUDY_NOISE, chip_accuracy


class RssSampler:
    """Peak increase of this process's *current* resident memory while active: RSS read from
    ``/proc/self/statm`` every ``interval_s`` by a background thread, minus RSS on entry.

    ``ru_maxrss`` alone cannot isolate training: its high-water mark is usually set while torch
    and onnxruntime are imported, before a small model trains. Sampling misses peaks shorter than
    the interval; at 5 ms against steps of 40–100 ms, over thousands of steps, the largest
    recurring peak is caught. Without /proc (not Linux) it falls back to the ru_maxrss difference.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").exists()

    def rss(self) -> int:
        if self._proc:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.base)


def run_in_child(target, args: tuple, what: str) -> Any:
    """Run ``target(*args, queue)`` in a fresh spawned process (its peak memory is its own) and
    return the one object it puts on the queue; ``RuntimeError`` naming ``what`` if it dies first."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:
        try:
            r = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{what} died (exit code {p.exitcode})") from None
    p.join()
    return r


def _ste_worker(mode: str, init_state: dict, steps: int | None, out_q) -> None:  # pragma: no cover - subprocess
    """Train the cnn-hwa recipe with gradient ``mode`` (a ``GradientMode`` name) in this (fresh)
    process; report back."""
    import torch

    torch.set_num_threads(1)
    from models import hwa
    from models.export import build_onnx
    from models.train import RECIPES, train
    from models.zoo_models import build

    init_state = {k: torch.from_numpy(v) for k, v in init_state.items()}
    recipe = RECIPES["cnn-hwa"]
    recipe = replace(recipe, noise=replace(recipe.noise, mode=mode))
    teacher = build("cnn", recipe.seed)
    teacher.load_state_dict(init_state)
    # Bytes autograd keeps for backward, per step (peak over the first steps): the activation
    # memory that the extended STE avoids. Counted with saved-tensor hooks, storage-deduplicated.
    saved: dict[str, int] = {"cur": 0, "peak": 0, "steps": 0}
    seen: set[int] = set()

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved["cur"] += t.untyped_storage().nbytes()
        return t

    # Warm up what both modes share (sklearn import and data loading, torch's first kernels), so
    # the peak RSS increase measures training alone.
    from models.data import load_split

    load_split("train"), load_split("val")
    teacher(torch.rand(64, 1, 8, 8)).sum().backward()
    teacher.zero_grad(set_to_none=True)
    with RssSampler() as rss:
        res = train(recipe, init=init_state, teacher=teacher, progress=False, max_steps=steps, desc=f"cnn-hwa[{mode}]")
    probe_model = build("cnn", recipe.seed)
    probe_model.load_state_dict(init_state)
    hwa.calibrate_input_ranges(probe_model, torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    ctx = hwa.HwaContext(recipe.noise, torch.Generator().manual_seed(0))
    hwa.attach(probe_model, ctx)
    probe_model.train()
    x = torch.rand(recipe.batch_size, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        seen.clear()
        saved["cur"] = 0
        ctx.new_batch(1.0, YEAR_S)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = probe_model(x).logsumexp(1).mean()
        saved["peak"] = max(saved["peak"], saved["cur"])
        loss.backward()
    del probe_model, loss

    model_bytes, _ = build_onnx(res.model)
    out_q.put(
        {
            "mode": mode,
            "steps": res.steps,
            "seconds": res.seconds,
            "seconds_per_step": res.seconds / max(1, res.steps),
            "rss_peak_increase_bytes": rss.increase,
            "rss_base_bytes": rss.base,
            "autograd_saved_bytes": saved["peak"],
            "onnx": model_bytes,
            "history": res.history,
        }
    )


def ste_study(steps: int | None, n_chips: int, eval_x: np.ndarray, eval_y: np.ndarray) -> list[dict[str, Any]]:
    """Run both gradient modes, one fresh process each, and evaluate both results on chips."""
    import torch

    from models.export import onnx_logits
    from models.torch_chip import GradientMode
    from models.train import RECIPES, train

    torch.set_num_threads(1)
    plain = train(RECIPES["cnn-plain"], progress=False)
    # numpy, not tensors: torch would pass tensors to the child through shared memory
    init = {k: v.detach().numpy().copy() for k, v in plain.model.state_dict().items()}
    results = []
    for mode in (GradientMode.STE, GradientMode.THROUGH_NOISE):
        r = run_in_child(_ste_worker, (mode, init, steps), f"STE study: the {mode!r} training process")
        model_bytes = r.pop("onnx")
        r["fp_accuracy"] = float((onnx_logits(model_bytes, eval_x).argmax(1) == eval_y).mean())
        r["chip_1y_gdc"] = age_study_at(model_bytes, eval_x, eval_y, n_chips, YEAR_S)
        results.append(r)
    return results


def age_study_at(model_bytes: bytes, x: np.ndarray, y: np.ndarray, n_chips: int, age_s: float) -> list[float]:
    """Accuracy of ``n_chips`` pcm chips (seeds 0…) at ``age_s``, GDC on."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    out = []
    for chip_seed in range(n_chips):
        rt = ChipRuntime(program_onnx(model_bytes, get_profile("pcm"), seed=chip_seed), threads=1, noise=STUDY_NOISE)
        out.append(chip_accuracy(rt, x, y, age_s, True))
    return out
