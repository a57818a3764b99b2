"""The hardening study's report (issue #18): verdicts on synthetic results whose truth is known,
and a page and summary that recompute from the JSON alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from studies import hardening as HS
from studies import hardening_summary as HSum
from studies import hardening_train as HT
from studies.common import AGE_SCHEDULE
from studies.hardening_report import markdown
from studies.hardening_summary import kendall_tau, public, summarise, verdict
from studies.noise_midpoint import Sweep, logistic

SIGMAS = np.logspace(-2, 1, 16)
#: True midpoints of the synthetic arms (σ units) and their chip accuracy at every age.
TRUTH = {"plain": (0.1, 0.80), "qat-constant": (0.3, 0.85), "noisy": (0.1, 0.80)}


def _raw(mode: str, seed: int, n: int = 300) -> dict:
    mu, chip = TRUTH[mode]
    rng = np.random.default_rng(10 * list(TRUTH).index(mode) + seed)
    p = logistic(np.log(SIGMAS), 0.9, np.log(mu), 4.0, 0.1)  # accuracy 0.9 → chance 0.1
    correct = rng.random((len(SIGMAS), 3, n)) < p[:, None, None]
    table = {g: {a: list(rng.binomial(1000, chip, 4) / 1000) for a in AGE_SCHEDULE} for g in ("gdc_on", "gdc_off")}
    return {
        "arch": "resnet",
        "mode": mode,
        "seed": seed,
        "run": f"runs/resnet-{mode}-s{seed}",
        "eval": {},
        "fp_accuracy": 0.9,
        "sweep": Sweep(SIGMAS, (0, 1, 2), correct).to_json(),
        "chip": table,
        "training": {
            "arch_kwargs": {"widths": [8, 16, 32], "blocks": 1},
            "epochs": 3,
            "steps": 1290,
            "n_weights": 18824,
            "train_seconds": 100.0 + 10 * seed,
            "val_fp": 0.85 + 0.01 * seed,
            "hardening": {"train_sigma": 0.1, "qat_delay_fraction": 0.25},
        },
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("hardening")
    raw = {f"resnet-{m}-s{s}": _raw(m, s) for m in TRUTH for s in (0, 1)}
    config = {
        "sigmas": list(SIGMAS),
        "noise_seeds": [0, 1, 2],
        "n_images": 300,
        "chip_images": 1000,
        "n_chips": 4,
        "profile": "pcm",
        "chance": 0.1,
        "command": "synthetic",
        "runs": "runs",
        "label": "synthetic",
        # 60 replicates instead of 200 keep the fast lane fast; percentile intervals of 60
        # replicates still separate µ ratios of 3 (the verdict test)
        "n_boot": 60,
    }
    HS.write_report(raw, config, out)
    return out


@pytest.mark.slow  # runs the hardening study on synthetic runs (the `written` fixture)
def test_verdicts_follow_the_known_truth(written):
    doc = json.loads((written / "hardening.json").read_text())
    claims = {c["id"]: c for c in doc["summary"]["claims"]}
    arms = doc["summary"]["arms"]
    for mode, (mu, _) in TRUTH.items():  # each arm's interval covers its true midpoint
        lo, hi = arms[f"resnet/{mode}"]["mu_ci"]
        assert lo < mu < hi, (mode, lo, hi)
    # µ 0.3 vs 0.1 with 2 seeds × 3 noise seeds × 300 images: the ratio's interval is far from 1,
    # and the chip gap (0.85 vs 0.80, 8 chips × 1000 images) is ~20 binomial σ
    assert claims["qat-helps"]["verdict"] == "reproduced" and claims["qat-helps"]["chip_verdict"] == "reproduced"
    assert 2.0 < claims["qat-helps"]["ratio"] < 4.5
    assert (
        claims["noisy-beats-qat"]["verdict"] == "reversed" and claims["noisy-beats-qat"]["chip_verdict"] == "reversed"
    )
    assert claims["qat-after-noise"]["verdict"] == "no data"  # noisy-then-qat was not run
    assert claims["skips-plain"]["verdict"] == "no data"
    assert verdict([0.9, 1.2], 1.0) == "not reproduced" and verdict([float("nan")] * 2, 1.0) == "no data"


@pytest.mark.slow  # recomputes the whole report's bootstraps
def test_report_recomputes_from_its_json(written):
    doc = json.loads((written / "hardening.json").read_text())
    assert json.dumps(public(summarise(doc["raw"], 0.1, doc["config"]["n_boot"]))) == json.dumps(doc["summary"])
    assert markdown(doc) == (written / "hardening.md").read_text()
    assert (written / "hardening.png").stat().st_size > 10_000
    doc["raw"]["resnet-plain-s0"]["fp_accuracy"] = 0.5  # an edited raw number changes the summary
    assert json.dumps(public(summarise(doc["raw"], 0.1, 60))) != json.dumps(doc["summary"])
    text = (written / "hardening.md").read_text()
    assert "| resnet | plain | 2 | 90.0 |" in text and "**reproduced**" in text and "**reversed**" in text


def test_kendall_tau_of_known_orders():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)


def test_runner_trains_plain_first_and_resumes(tmp_path):
    order = HT.plan(tmp_path, ["resnet"], ["hwa", "noisy", "plain"], [0])
    assert [m for _, m, _, _ in order] == ["plain", "noisy", "hwa"]
    (tmp_path / "resnet-noisy-s0").mkdir()
    (tmp_path / "resnet-noisy-s0" / "checkpoint.pt").write_bytes(b"")
    cmd = HT.command("resnet", "noisy", 0, tmp_path / "resnet-noisy-s0", tmp_path / "t", 1, ["--epochs", "1"])
    assert "--resume" in cmd and "--teacher" not in cmd and cmd[-1] == "--resume"
    cmd = HT.command("resnet", "hwa", 0, tmp_path / "resnet-hwa-s0", tmp_path / "t", 1, [])
    assert cmd[-2:] == ["--teacher", str(tmp_path / "t")] and "--resume" not in cmd
    with pytest.raises(SystemExit, match="include plain"):
        HT.main(["--runs", str(tmp_path), "--modes", "hwa", "--dry-run"])


COMMITTED = HS.OUT_DIR / "hardening.json"


def _committed() -> dict:
    if not COMMITTED.is_file():
        pytest.skip(f"{COMMITTED} not generated yet")
    return json.loads(COMMITTED.read_text())


def test_committed_page_renders_from_its_json():
    doc = _committed()
    assert markdown(doc) == (HS.OUT_DIR / "hardening.md").read_text()


@pytest.mark.slow  # refits every committed run with 200 bootstrap replicates
def test_committed_summary_recomputes_from_its_raw_results():
    doc = _committed()
    n_boot = doc["config"].get("n_boot", HSum.N_BOOT)
    _assert_same(public(summarise(doc["raw"], doc["config"]["chance"], n_boot)), doc["summary"], "summary")


def _assert_same(got, want, path: str) -> None:
    """Equal structure, keys, strings and integers; floats to a relative 1e-6. The fits are
    least-squares optimisations whose last digits differ between CPUs (an AMD EPYC refit differs
    from the committed one by at most 1.2e-8 relative), while a real change of a number in the
    committed summary (its third significant digit, as rendered) is 1e-3 or more."""
    assert type(got) is type(want) or {type(got), type(want)} <= {int, float}, path
    if isinstance(want, dict):
        assert list(got) == list(want), path
        for k in want:
            _assert_same(got[k], want[k], f"{path}/{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), path
    else:
        assert got == want, path


def test_resume_reuses_the_raw_results_of_the_report_in_out(tmp_path, monkeypatch):
    monkeypatch.setattr(HS, "CACHE_DIR", tmp_path / "cache")
    run = tmp_path / "runs" / "resnet-plain-s0"  # no model.pt: evaluating it would fail
    cfg = {"sigmas": [0.1], "n_images": 3}
    old = {**_raw("plain", 0), "run": str(run), "eval": cfg}
    (tmp_path / "hardening.json").write_text(json.dumps({"raw": {"resnet-plain-s0": old}}))
    assert HS.collect([run], tmp_path, cfg, resume=True, threads=1) == {"resnet-plain-s0": old}
    with pytest.raises(SystemExit, match="model.pt"):  # other settings: evaluated again
        HS.collect([run], tmp_path, {**cfg, "n_images": 4}, resume=True, threads=1)


def test_cache_option_keeps_raw_results_where_it_says(tmp_path, monkeypatch):
    # --cache (a folder in git) must receive new results and serve them to a later --resume
    monkeypatch.setattr(HS, "CACHE_DIR", tmp_path / "default-cache")
    run, cache, cfg = tmp_path / "runs" / "resnet-plain-s1", tmp_path / "kept", {"sigmas": [0.1], "n_images": 3}
    calls = []

    def fake_eval(run_dir, c, threads):
        calls.append(run_dir)
        return {**_raw("plain", 1), "run": str(run_dir), "eval": c}

    monkeypatch.setattr(HS, "evaluate_run", fake_eval)
    monkeypatch.setattr(HS, "training_record", lambda run_dir: {"epochs": 15})
    first = HS.collect([run], tmp_path / "out", cfg, resume=True, threads=1, cache=cache)
    assert calls == [run] and (cache / "resnet-plain-s1.json").is_file()
    assert not (tmp_path / "default-cache").exists()
    again = HS.collect([run], tmp_path / "out", cfg, resume=True, threads=1, cache=cache)
    assert calls == [run] and again == first  # read back, not evaluated again


def test_runs_come_from_several_folders_and_only_the_study_s_arms(tmp_path):
    def run(folder, name, arch, mode):
        d = tmp_path / folder / name
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"")
        (d / "recipe.json").write_text(json.dumps({"arch": arch, "mode": mode}))
        return d

    kept = [
        run("fmnist", "resnet-fmnist-plain-s1", "resnet", "plain"),
        run("fmnist", "resnet-fmnist-hwa-s1", "resnet", "hwa"),
        run("hardening", "resnet-noskip-fmnist-plain-s1", "resnet-noskip", "plain"),
        run("hardening", "resnet-qat-constant-s1", "resnet", "qat-constant"),
    ]
    run("fmnist", "resnet-fmnist-recipe-s1", "resnet", "recipe")  # #12's control: not an arm here
    run("fmnist", "vit-fmnist-plain-s1", "vit", "plain")
    (tmp_path / "hardening" / "unfinished").mkdir()  # no model.pt yet
    assert HS.find_runs(tmp_path / "fmnist", tmp_path / "hardening") == sorted(kept)
    assert HS.find_runs(tmp_path / "fmnist") == sorted(kept[:2])


def test_pooled_mu_draws_only_from_successful_bootstrap_fits():
    # noise_midpoint keeps failed replicates as NaN (for pairing); the pooled µ must skip them
    fits = [{"mu": 1.0, "boot_mu": [math.nan, 1.0, 1.0]}, {"mu": 4.0, "boot_mu": [4.0, math.nan, 4.0]}]
    pooled = HSum.pooled_mu(fits, np.random.default_rng(0), n_boot=50)
    assert pooled["mu"] == pytest.approx(2.0)  # geometric mean of 1 and 4
    assert all(np.isfinite(pooled["boot_log_mu"])) and 1.0 <= pooled["mu_ci"][0] <= pooled["mu_ci"][1] <= 4.0
    assert HSum.pooled_mu([{"mu": 1.0, "boot_mu": [math.nan]}], np.random.default_rng(0))["boot_log_mu"] == []


def test_training_table_gives_each_arms_recipe_and_seed_means():
    raw = {f"resnet-{m}-s{s}": _raw(m, s, n=10) for m in ("plain", "qat-constant") for s in (0, 1)}
    from studies.hardening_report import _training_table

    rows = [r for r in _training_table({"raw": raw}) if r.startswith("| resnet")]
    # seeds 0 and 1: train seconds 100 and 110 → 105; validation 85 % and 86 % → 85.5
    assert rows == [
        "| resnet | plain | 0, 1 | [8, 16, 32] × 1 | 18824 | 3 | 1290 | – | – | 105 | 85.5 |",
        "| resnet | qat-constant | 0, 1 | [8, 16, 32] × 1 | 18824 | 3 | 1290 | 0.25 | – | 105 | 85.5 |",
    ]
    for r in raw.values():
        del r["training"]  # results from before the record: no table rather than a wrong one
    assert _training_table({"raw": raw}) == []
