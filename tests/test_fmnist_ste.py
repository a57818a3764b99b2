"""The Fashion-MNIST STE study (issue #12): the trainer's ``--gradient`` flag, the autograd memory
of the two gradients, the step clock, the run cache and the page re-derived from its JSON. Tiny
ResNets, a few steps and a few hundred images only."""

from __future__ import annotations

import copy
import json
import re
import statistics

import numpy as np
import pytest
import torch

from models import fmnist_data as D
from models import fmnist_models as FM
from models import hwa as H
from models import train_fmnist as T
from models.fmnist_recipe import FmnistRecipe, TrainMode, default_recipe
from models.report import split_suite
from models.torch_chip import GradientMode
from studies import fmnist_ste as S
from studies.fmnist_ste_report import COSTS, render_markdown
from studies.fmnist_ste_worker import _saved_bytes, merge_segments, step_costs

TINY = {"widths": [4, 8, 8], "blocks": 1}
STE, THR = str(GradientMode.STE), str(GradientMode.THROUGH_NOISE)


def need_data() -> None:
    if not D.available():
        pytest.skip(f"Fashion-MNIST not installed ({D.data_dir()}): bash docker/ci/install-fmnist.sh")


def _teacher(folder):
    """A plain run folder holding an untrained tiny ResNet's ``model.pt`` (what load_model reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    net = FM.build("resnet", 0, **TINY)
    torch.save(
        {
            "state_dict": net.state_dict(),
            "recipe": json.dumps(FmnistRecipe("resnet").to_json()),
            "arch_kwargs": json.dumps(TINY),
        },
        folder / "model.pt",
    )
    return folder


# ----------------------------------------------------------------------------- the flag
def test_gradient_flag_is_refused_without_the_chip_in_the_loop(tmp_path):
    with pytest.raises(SystemExit, match="--gradient applies to the chip-in-the-loop modes"):
        T.main(["--arch", "resnet", "--mode", "plain", "--gradient", THR, "--out", str(tmp_path / "p")])
    with pytest.raises(SystemExit):  # through-chip is a diagnostic, no training choice
        T.main(["--arch", "resnet", "--mode", "hwa", "--gradient", str(GradientMode.THROUGH_CHIP)])
    assert not (tmp_path / "p").exists()


def test_an_old_recipe_without_a_gradient_loads_as_ste():
    d = default_recipe("resnet", TrainMode.HWA).to_json()
    del d["noise"]["mode"]
    assert FmnistRecipe.from_json(json.loads(json.dumps(d))).noise.mode is GradientMode.STE


@pytest.mark.parametrize("mode", ["hwa", "recipe"])
def test_gradient_flag_reaches_the_training_config_and_the_recipe(tmp_path, monkeypatch, mode):
    need_data()
    seen = []
    real = T.train

    def spy(recipe, *a, **k):
        seen.append(recipe.noise)
        return real(recipe, *a, **k)

    monkeypatch.setattr(T, "train", spy)
    out = tmp_path / "run"
    argv = ["--arch", "resnet", "--mode", mode, "--teacher", str(_teacher(tmp_path / "plain")), "--gradient", THR]
    argv += ["--limit-train", "128", "--limit-val", "64", "--batch-size", "64", "--max-steps", "1"]
    T.main([*argv, "--emu-val", "0", "--no-export", "--no-progress", "--out", str(out)])
    assert isinstance(seen[0], H.HwaConfig) and seen[0].mode is GradientMode.THROUGH_NOISE
    assert json.loads((out / "recipe.json").read_text())["noise"]["mode"] == THR
    assert T.load_model(out)[1].noise.mode is GradientMode.THROUGH_NOISE


# ----------------------------------------------------------------------------- measurements
def test_through_noise_keeps_more_for_backward_than_the_extended_ste():
    # STE runs the noise model under no_grad, so autograd keeps only the clean layer's tensors;
    # through-noise keeps the noise model's intermediates too: strictly more, on any model.
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    saved = {}
    for mode in (GradientMode.STE, GradientMode.THROUGH_NOISE):
        model = FM.build("resnet", 0, **TINY)
        H.calibrate_input_ranges(model, x)
        saved[mode] = _saved_bytes(model, x, y, H.HwaConfig(mode=mode))
    clean = FM.build("resnet", 0, **TINY)
    H.calibrate_input_ranges(clean, x)
    assert saved[GradientMode.THROUGH_NOISE] > saved[GradientMode.STE] > 0


def test_step_costs_skip_warmup_and_epoch_ends():
    # step k ends at wall 10·k + k², CPU k: step k costs 10 + 2k − 1 wall and 1 CPU
    ends = [(10.0 * k + k * k, float(k)) for k in range(1, 13)]
    c = step_costs(ends, steps_per_epoch=5, warmup=2)
    # kept: k = 3 … 12 except k = 6 and 11 (intervals spanning the ends of epochs 1 and 2)
    kept = [k for k in range(3, 13) if k not in (6, 11)]
    assert c["wall"] == [10.0 + 2 * k - 1 for k in kept] and c["cpu"] == [1.0] * len(kept)


def test_step_costs_of_a_resumed_segment_skip_the_run_s_epoch_ends():
    # a segment resumed after step 8 of a 5-step epoch: the run's epoch ends fall after steps 10
    # and 15, i.e. between this segment's steps 2|3 and 7|8 (k = 3 and 8 spans them)
    ends = [(float(k), float(k)) for k in range(1, 11)]
    c = step_costs(ends, steps_per_epoch=5, warmup=0, first_step=8)
    assert len(c["wall"]) == 10 - 1 - 2  # no predecessor for k = 1; k = 3, 8 left out
    fresh = step_costs(ends, steps_per_epoch=5, warmup=0)
    assert len(fresh["wall"]) == 10 - 1 - 1  # k = 6 only


def test_segments_pool_their_steps_and_keep_the_largest_peak():
    def seg(first, wall, cpu, peak, base):
        return {"first_step": first, "steps": 8, "wall": wall, "cpu": cpu}, peak, base

    segs = [
        {**s, "rss_peak_increase_bytes": peak, "rss_base_bytes": base}
        for s, peak, base in (seg(0, [1.0, 1.0], [1.0, 1.0], 5, 50), seg(8, [3.0] * 3, [2.0] * 3, 9, 60))
    ]
    m = merge_segments(segs)
    assert m["steps"] == 16 and m["segments"] == 2 and m["timed_steps"] == 5
    assert m["wall_s_per_step"] == 3.0 and m["cpu_s_per_step"] == 2.0  # medians of the pooled 5 steps
    assert (m["rss_peak_increase_bytes"], m["rss_base_bytes"]) == (9, 60)


@pytest.mark.slow  # trains a tiny ResNet 16 + 8 + 8 steps in this process
def test_a_killed_run_resumes_to_the_same_model_and_pools_its_timings(tmp_path):
    need_data()
    from studies.fmnist_ste_worker import TIMING, train_run

    teacher = _teacher(tmp_path / "plain")
    spec = {"teacher": str(teacher), "seed": 0, "mode": STE, "limit_train": 512, "limit_val": 64, "batch_size": 64}
    whole = train_run({**spec, "max_steps": 16, "folder": str(tmp_path / "whole")})
    # the first process stops after one epoch (8 steps) and leaves its checkpoint, as a kill would
    cut = tmp_path / "cut"
    train_run({**spec, "max_steps": 8, "folder": str(cut)})
    (cut / "model.onnx").unlink()
    resumed = train_run({**spec, "max_steps": 16, "folder": str(cut)})
    assert (cut / "model.onnx").read_bytes() == (tmp_path / "whole" / "model.onnx").read_bytes()
    assert (whole["segments"], resumed["segments"]) == (1, 2) and whole["steps"] == resumed["steps"] == 16
    # whole: steps 6…16 but 9 (spans the epoch's end) = 10; resumed: 6…8 in each segment = 6
    assert (whole["timed_steps"], resumed["timed_steps"]) == (10, 6)
    segs = json.loads((cut / TIMING).read_text())["segments"]
    assert [(s["first_step"], s["steps"]) for s in segs] == [(0, 8), (8, 8)]


@pytest.mark.slow  # trains a tiny ResNet 7 steps per gradient mode, in this process
def test_a_run_measures_its_steps_and_restores_the_trainer(tmp_path):
    need_data()
    from models import fmnist_training as FT
    from studies.fmnist_ste_worker import train_run

    before = FT._optimiser_step
    teacher = _teacher(tmp_path / "plain")
    spec = {"teacher": str(teacher), "seed": 0, "max_steps": 7, "limit_train": 512, "limit_val": 64}
    res = {m: train_run({**spec, "mode": m, "batch_size": 64, "folder": str(tmp_path / m)}) for m in (STE, THR)}
    assert FT._optimiser_step is before
    for m, r in res.items():
        assert r["steps"] == 7 and r["timed_steps"] == 2  # steps 6 and 7 (5 warm-up, step 1 has no start)
        assert r["cpu_s_per_step"] > 0 and (tmp_path / m / "model.onnx").is_file()
        assert r["recipe"]["noise"]["mode"] == m
    assert res[THR]["autograd_saved_bytes"] > res[STE]["autograd_saved_bytes"]


# ----------------------------------------------------------------------------- cache and order
def _fake_spawn(calls):
    def spawn(spec):
        calls.append((spec.mode, spec.seed))
        net = FM.build("resnet", spec.seed, **TINY).eval()
        from models.export import build_onnx

        data, _ = build_onnx(FM.export_copy(net), {}, example=torch.zeros(2, 1, 28, 28))
        S.Path(spec.folder).mkdir(parents=True, exist_ok=True)
        (S.Path(spec.folder) / "model.onnx").write_bytes(data)
        fast = 0.1 if spec.mode == STE else 0.15
        rec = default_recipe("resnet", TrainMode.HWA).to_json()
        return {
            "recipe": rec,
            "steps": spec.max_steps,
            "steps_per_epoch": 8,
            "timed_steps": 1,
            "wall_s_per_step": fast * 2,
            "cpu_s_per_step": fast + spec.seed / 100,
            "rss_peak_increase_bytes": 2**20 * (10 + spec.seed),
            "rss_base_bytes": 2**28,
            "autograd_saved_bytes": 2**20 * (3 if spec.mode == STE else 9),
        }

    return spawn


def test_runs_are_interleaved_cached_and_an_interrupted_one_redone(tmp_path, monkeypatch):
    need_data()
    calls: list = []
    monkeypatch.setattr(S, "_spawn", _fake_spawn(calls))
    teacher = _teacher(tmp_path / "plain")
    argv = ["--teacher", str(teacher), "--seeds", "0", "1", "--max-steps", "4", "--chips", "1", "--images", "60"]
    argv += ["--n-boot", "20", "--cache", str(tmp_path / "cache"), "--limit-train", "512"]
    out = S.main([*argv, "--out", str(tmp_path / "r1")])
    assert calls == [(STE, 0), (THR, 0), (STE, 1), (THR, 1)]
    first = json.loads((out / "results.json").read_text())

    def refuse(*a, **k):
        raise AssertionError("a cached run was recomputed")

    real_eval = S.evaluate_model
    monkeypatch.setattr(S, "_spawn", refuse)
    monkeypatch.setattr(S, "evaluate_model", refuse)
    again = S.main([*argv, "--out", str(tmp_path / "r2")])
    assert json.loads((again / "results.json").read_text())["runs"] == first["runs"]
    # a run without train.json (killed while training) is cleared and trained again, alone
    digest = S.teacher_digest(teacher)
    folder = S.run_folder(tmp_path / "cache", digest, THR, 1, 4, "-lt512")
    (folder / "train.json").unlink()
    (folder / "stale.txt").write_text("half a run")
    calls.clear()
    monkeypatch.setattr(S, "_spawn", _fake_spawn(calls))
    monkeypatch.setattr(S, "evaluate_model", real_eval)
    S.main([*argv, "--out", str(tmp_path / "r3")])
    assert calls == [(THR, 1)] and not (folder / "stale.txt").exists()
    # one with a checkpoint (killed after an epoch) keeps its folder and resumes; once finished,
    # the checkpoint goes
    (folder / "train.json").unlink()
    (folder / "checkpoint.pt").write_bytes(b"epoch 1")
    seen = []
    fake = _fake_spawn(calls)
    monkeypatch.setattr(S, "_spawn", lambda spec: seen.append((folder / "checkpoint.pt").read_bytes()) or fake(spec))
    calls.clear()
    S.main([*argv, "--out", str(tmp_path / "r4")])
    assert calls == [(THR, 1)] and seen == [b"epoch 1"] and not (folder / "checkpoint.pt").exists()


def test_modes_split_one_seed_over_processes_and_the_full_run_reuses_them(tmp_path, monkeypatch):
    need_data()
    calls: list = []
    monkeypatch.setattr(S, "_spawn", _fake_spawn(calls))
    teacher = _teacher(tmp_path / "plain")
    argv = ["--teacher", str(teacher), "--seeds", "2", "--max-steps", "4", "--chips", "1", "--images", "60"]
    argv += ["--n-boot", "20", "--cache", str(tmp_path / "cache"), "--limit-train", "512"]
    # each "process" trains and evaluates its own mode only, and writes no page
    assert S.main([*argv, "--modes", THR, "--out", str(tmp_path / "r1")]) == tmp_path / "cache"
    assert S.main([*argv, "--modes", STE, "--out", str(tmp_path / "r1")]) == tmp_path / "cache"
    assert calls == [(THR, 2), (STE, 2)] and not (tmp_path / "r1").exists()
    digest = S.teacher_digest(teacher)
    for mode in (STE, THR):
        assert list(S.run_folder(tmp_path / "cache", digest, mode, 2, 4, "-lt512").glob("chips-*.json"))
    # the run with all modes (the default) recomputes nothing and writes the page of both
    monkeypatch.setattr(S, "_spawn", lambda spec: pytest.fail(f"{spec.mode} was trained again"))
    monkeypatch.setattr(S, "evaluate_model", lambda *a: pytest.fail("a cached evaluation was redone"))
    out = S.main([*argv, "--out", str(tmp_path / "r2")])
    assert sorted(r["mode"] for r in json.loads((out / "results.json").read_text())["runs"]) == sorted([STE, THR])
    with pytest.raises(SystemExit):
        S.main([*argv, "--modes", "sideways"])


def test_suite_dispatch_knows_the_ste_study():
    assert split_suite(["--suite", "fmnist-ste", "--max-steps", "3"]) == ("fmnist-ste", ["--max-steps", "3"])


# ----------------------------------------------------------------------------- the page
def _synthetic_results(n_seeds: int = 3, chips: int = 4, n: int = 200) -> dict:
    rng = np.random.default_rng(1)
    runs = []
    for seed in range(n_seeds):
        for mode, p in ((STE, 0.80), (THR, 0.83)):
            bits = {"fp": rng.random(n) < p + 0.05, **{a: rng.random((chips, n)) < p for a in S.AGES}}
            runs.append(
                {
                    "mode": mode,
                    "seed": seed,
                    "cpu_s_per_step": float(rng.uniform(1, 2) * (1.4 if mode == THR else 1)),
                    "wall_s_per_step": float(rng.uniform(2, 4)),
                    "rss_peak_increase_bytes": int(rng.integers(100, 200) * 2**20),
                    "autograd_saved_bytes": int((30 if mode == THR else 10) * 2**20 + rng.integers(0, 1000)),
                    "fp_accuracy": float(bits["fp"].mean()),
                    "chip_accuracy": {a: [float(c.mean()) for c in bits[a]] for a in S.AGES},
                    "bits": bits,
                }
            )
    meta = {
        "teacher": "t", "teacher_digest": "0" * 12, "arch": "resnet", "max_steps": 200, "batch_size": 128,
        "steps_per_epoch": 430, "train_images": 55000, "full_epochs": 5, "ramp_steps": 860,
        "seeds": list(range(n_seeds)), "chips": chips, "images": n, "profile": "pcm", "ages": list(S.AGES),
        "warmup_steps": 5, "n_boot": 200, "command": "python -m studies.fmnist_ste …",
    }  # fmt: skip
    return S.build_results(runs, meta)


def _cells(page: str, label: str) -> list[str]:
    row = next(line for line in page.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")[1:]]


def _nums(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


def test_every_number_of_the_page_is_rederived_from_the_runs():
    res = _synthetic_results()
    page = render_markdown(res)
    runs = {(r["mode"], r["seed"]): r for r in res["runs"]}
    seeds = res["meta"]["seeds"]
    ages = res["meta"]["ages"]
    # table 1: median [min, max] over seeds, recomputed from each run's raw number
    fields = [(k, label, f, d) for k, label, f, d in COSTS] + [("fp_accuracy", "FP accuracy (%)", 100, 2)]
    for key, label, f, d in fields:
        for cell, mode in zip(_cells(page, label), (STE, THR)):
            v = [runs[(mode, s)][key] * f for s in seeds]
            assert _nums(cell) == pytest.approx([statistics.median(v), min(v), max(v)], abs=0.51 * 10**-d)
    for age in ages:
        for cell, mode in zip(_cells(page, f"chip accuracy at {age}, GDC on (%, mean over chips)"), (STE, THR)):
            v = [100 * np.mean(runs[(mode, s)]["chip_accuracy"][age]) for s in seeds]
            assert _nums(cell) == pytest.approx([statistics.median(v), min(v), max(v)], abs=0.0051)
    # table 2: the paired ratios, and the exact sign test by scipy (a second implementation)
    from scipy.stats import binomtest

    ratio_rows = [line for line in page.split("## Cost ratio")[1].splitlines() if line.startswith("| ")][1:]
    for (key, label, _, _), row in zip(COSTS, ratio_rows):
        assert row.startswith(f"| {label} |")
        per, spread, p, sig = [c.strip() for c in row.strip("|").split("|")[1:]]
        r = [runs[(THR, s)][key] / runs[(STE, s)][key] for s in seeds]
        assert _nums(per) == pytest.approx(r, abs=5e-4)
        assert _nums(spread) == pytest.approx([statistics.median(r), min(r), max(r)], abs=5e-4)
        above = sum(x > 1 for x in r)
        p_ref = binomtest(above, len(r), 0.5).pvalue
        assert float(p) == pytest.approx(p_ref, abs=5e-5) and (sig == "yes") == (p_ref < 0.05)
    # table 3: the differences are the paired mean differences; intervals contain them
    for age in ages:
        diff, interval, sig = _cells(page, f"chip accuracy at {age}, GDC on")
        d = np.mean(
            [
                np.mean(runs[(THR, s)]["chip_accuracy"][age]) - np.mean(runs[(STE, s)]["chip_accuracy"][age])
                for s in seeds
            ]
        )
        assert float(diff) == pytest.approx(100 * d, abs=0.0051)
        lo, hi = _nums(interval)
        assert lo <= float(diff) <= hi and (sig == "yes") == (lo > 0 or hi < 0)
    diff, _, _ = _cells(page, "FP accuracy")
    d = np.mean([runs[(THR, s)]["fp_accuracy"] - runs[(STE, s)]["fp_accuracy"] for s in seeds])
    assert float(diff) == pytest.approx(100 * d, abs=0.0051)
    # the reduced length in words
    assert "200 optimiser steps of 128 images, that is 0.47 epochs" in page and "full 5 epochs (2150 steps)" in page


def test_a_full_length_study_says_so():
    res = _synthetic_results()
    res["meta"]["max_steps"] = 5 * 430
    page = render_markdown(res)
    assert "**Full length.**" in page and "full 5 epochs (2150 optimiser steps" in page
    assert "Reduced length" not in page and "stopped early" not in page


def test_the_page_names_the_resumed_runs():
    res = _synthetic_results()
    assert "Resumed" not in render_markdown(res)
    res["runs"][3]["segments"] = 2
    assert f"Resumed after an interruption: {THR} s1 (2 processes);" in render_markdown(res)


def test_an_edited_number_changes_the_page():
    res = _synthetic_results()
    edited = copy.deepcopy(res)
    edited["analysis"]["per_mode"][THR]["cpu_s_per_step"]["median"] += 0.1
    assert render_markdown(edited) != render_markdown(res)


def test_committed_page_is_rendered_from_committed_json():
    if not (S.OUT_DIR / "results.json").is_file():
        pytest.skip(f"{S.OUT_DIR} not committed yet (the lead runs the real study)")
    assert (
        render_markdown(json.loads((S.OUT_DIR / "results.json").read_text())) == (S.OUT_DIR / "README.md").read_text()
    )
