"""The Fashion-MNIST study (issue #12): bootstrap, cell cache, model discovery, and the committed
report re-derived from its JSON. Tiny models and a few dozen images only."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from models.report import split_suite
from studies import fmnist_eval as E
from studies.fmnist_report import render_markdown
from studies.fmnist_stats import binomial_coverage, chip_mean, draw
from studies.fmnist_study import OUT_DIR, age_label
from tests.fmnist_helpers import lstm_page_meta

REPORT = OUT_DIR / "README.md"
RESULTS = OUT_DIR / "results.json"


# ----------------------------------------------------------------------------- bootstrap
@pytest.mark.slow  # 200 × 200 bootstrap replicates
def test_bootstrap_interval_of_a_binomial_covers_its_truth_at_the_stated_rate():
    # 200 samples of 400 Bernoulli(0.9) images, 200 replicates each. A correct 95 % interval covers
    # p in Binomial(200, 0.95) of them: mean 190, sd 3.1; [180, 198] (0.90–0.99) holds with
    # probability > 99.5 % (P(X < 180) ≈ 0.1 %, P(X > 198) ≈ 0.04 %). Seeded, so deterministic;
    # the percentile bootstrap of a proportion runs slightly below nominal, inside that band.
    rate = binomial_coverage(p=0.9, n=400, trials=200, b=200, seed=0)
    assert 0.90 <= rate <= 0.99


def test_chip_variation_widens_the_interval_and_pairing_narrows_a_gap():
    rng = np.random.default_rng(0)
    n = 2000
    # 4 chips with true accuracies 0.6 … 0.9: the chip level dominates the uncertainty
    p = np.array([0.6, 0.7, 0.8, 0.9])
    c = rng.random((1, 4, n)) < p[None, :, None]
    rep = draw(n, 4, [0], 400, rng)
    est = chip_mean(c, [0], rep)
    lo, hi = est.interval()
    # images alone: sd of a mean of 8000 Bernoulli ≈ 0.005 → width ≈ 0.02; chips: sd of the mean
    # of 4 chips spread ±0.11 ≈ 0.056 → width ≈ 0.2. Require well above the image-only width.
    assert hi - lo > 0.1
    # the same chips with 1 % of images flipped to correct: the paired gap is known to be ≤ 1 %
    d = c.copy()
    d[:, :, : n // 100] = True
    gap = chip_mean(d, [0], rep) - est
    glo, ghi = gap.interval()
    assert 0 <= glo <= gap.value <= ghi <= 0.01


# ----------------------------------------------------------------------------- the committed report
def _results() -> dict:
    # committed with the repository (python -m models.report --suite fmnist --replace writes it)
    assert RESULTS.is_file() and REPORT.is_file(), f"{OUT_DIR}: README.md and results.json are committed"
    return json.loads(RESULTS.read_text())


def test_committed_page_is_rendered_from_committed_json():
    # every number of the page comes from results.json: an edited number fails here
    assert render_markdown(_results()) == REPORT.read_text()


def test_an_edited_number_changes_the_page():
    res = _results()
    page = render_markdown(res)
    edited = copy.deepcopy(res)
    edited["analysis"]["rows"][0]["accuracy"]["mean"] += 0.01
    assert render_markdown(edited) != page
    # and the page carries the row's number
    r = res["analysis"]["rows"][0]["accuracy"]
    assert f"{r['mean']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]" in page


def test_committed_numbers_are_consistent_with_their_definitions():
    a = _results()["analysis"]
    fp = {(r["arch"], r["mode"]): r["accuracy"]["mean"] for r in a["fp"]}
    for r in a["rows"]:
        own = fp[(r["arch"], r["mode"])]
        acc = r["accuracy"]["mean"]
        assert r["robustness"]["mean"] == pytest.approx(own - acc, abs=0.011)  # two roundings of 0.005
        assert r["normalised"]["mean"] == pytest.approx(acc / own, abs=2e-4)
        for v in (r["accuracy"], r["robustness"]):
            assert v["lo"] <= v["hi"] and v["significant"] == (v["lo"] > 0 or v["hi"] < 0)
    rows = {(r["arch"], r["mode"], r["arm"], r["age"], r["gdc"]): r for r in a["rows"]}
    for g in a["gaps"]:
        if g["kind"] == "gap_to_fp":
            acc = rows[(g["arch"], "hwa", "max", g["age"], "on")]["accuracy"]["mean"]
            assert g["value"]["mean"] == pytest.approx(fp[(g["arch"], "plain")] - acc, abs=0.011)
    t = {x["name"].split(":")[0]: x for x in a["targets"]}
    for name, x in t.items():
        if x["met"] is None:
            continue
        v = x["value"]
        if "1 y without GDC" in name:
            assert x["met"] == (v["lo"] > 0)
        elif "1 y" in name:
            assert x["met"] == (v["hi"] <= 1.0)
        else:
            assert x["met"] == (v["mean"] >= 92.0)


def test_page_says_demonstration_when_it_is_one():
    res = _results()
    page = REPORT.read_text()
    if res["meta"]["demonstration"]:
        assert "Pipeline demonstration, not a result" in page
    assert re.search(r"Rasch et al\., Nat\. Commun\. 14:5282 \(2023\)", page)


# ----------------------------------------------------------------------------- discovery and cache
def _tiny_model(folder, mode: str, seed: int):
    torch = pytest.importorskip("torch")
    from models import fmnist_models as FM
    from models.export import build_onnx

    m = FM.build("resnet", seed, widths=[2, 4, 4], blocks=1).eval()
    recipe = {"arch": "resnet", "mode": mode, "seed": seed, "clip_sigma": 2.5}
    meta = {"agedchip.recipe": recipe, "agedchip.dataset": "Fashion-MNIST (test)"}
    data, _ = build_onnx(FM.export_copy(m), meta, example=torch.zeros(2, 1, 28, 28))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"resnet-fmnist-{mode}.onnx").write_bytes(data)
    return data


def test_models_are_found_by_their_metadata(tmp_path):
    _tiny_model(tmp_path / "a", "plain", 0)
    _tiny_model(tmp_path / "b", "hwa", 0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.onnx").write_bytes((tmp_path / "a" / "resnet-fmnist-plain.onnx").read_bytes())
    (tmp_path / "zoo").mkdir()  # the digits zoo's models carry a recipe too, but are no Fashion-MNIST models
    for f in E.REPO.joinpath("models", "zoo").glob("*-plain.onnx"):
        (tmp_path / "zoo" / f.name).write_bytes(f.read_bytes())
    ms = E.find_models([tmp_path])
    assert [(m.arch, m.mode, m.seed) for m in ms] == [("resnet", "hwa", 0), ("resnet", "plain", 0)]
    assert ms[0].clip_sigma == 2.5 and ms[0].torch_path is None
    _tiny_model(tmp_path / "d", "plain", 1)
    (tmp_path / "d" / "resnet-fmnist-plain.onnx").rename(tmp_path / "d" / "y.onnx")
    _tiny_model(tmp_path / "e", "plain", 1)
    other = (tmp_path / "e" / "resnet-fmnist-plain.onnx").read_bytes()
    (tmp_path / "e" / "resnet-fmnist-plain.onnx").write_bytes(other + b"")  # same bytes: deduplicated
    assert len(E.find_models([tmp_path])) == 3
    (tmp_path / "f").mkdir()
    _tiny_model(tmp_path / "f", "plain", 0)
    import onnx

    m = onnx.load(str(tmp_path / "f" / "resnet-fmnist-plain.onnx"))
    m.doc_string = "another training run"
    onnx.save(m, str(tmp_path / "f" / "resnet-fmnist-plain.onnx"))
    with pytest.raises(ValueError, match="two models for resnet-plain-s0"):
        E.find_models([tmp_path])


def test_a_copy_keeps_the_first_path_and_lends_its_model_pt(tmp_path):
    # the zoo holds the ONNX file alone; its training run's folder holds the same bytes and model.pt
    _tiny_model(tmp_path / "zoo", "plain", 0)
    _tiny_model(tmp_path / "run", "plain", 0)
    (tmp_path / "run" / "model.pt").write_bytes(b"state")
    ms = E.find_models([tmp_path / "zoo", tmp_path / "run"])
    assert len(ms) == 1
    assert ms[0].onnx_path == tmp_path / "zoo" / "resnet-fmnist-plain.onnx"
    assert ms[0].torch_path == tmp_path / "run" / "model.pt"
    # listed the other way round, the run's own path and model.pt
    ms = E.find_models([tmp_path / "run", tmp_path / "zoo"])
    assert ms[0].onnx_path.parent == tmp_path / "run" and ms[0].torch_path == tmp_path / "run" / "model.pt"


def test_cache_resumes_without_recomputing(tmp_path, monkeypatch):
    from models import fmnist_data as D

    if not D.available():
        pytest.skip(f"Fashion-MNIST not installed ({D.data_dir()}): bash docker/ci/install-fmnist.sh")
    _tiny_model(tmp_path / "m", "plain", 0)
    models = E.find_models([tmp_path / "m"])
    store = E.CellStore(tmp_path / "cache", "pcm", 40)
    ages = ["1 d", "1 y"]
    first = E.evaluate(store, models, ["max", "caws"], 2, ages, progress=False)
    assert first.computed == 2 * 2 * 2 * 2 and first.left == 0  # arms × chips × ages × GDC
    cells, fp, used = E.load_cells(store, models, ["max", "caws"], 2, ages)
    assert used == {"resnet": [0, 1]} and cells[("resnet-plain-s0", "caws", "1 y", "off")].shape == (2, 40)
    assert fp["resnet-plain-s0"].shape == (40,)

    def refuse(*a, **k):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(E, "chip_correct", refuse)
    again = E.evaluate(store, models, ["max", "caws"], 2, ages, progress=False)
    assert again.computed == 0 and again.left == 0
    # one lost cell: exactly that one is computed again, and gives the same bits (seeded)
    monkeypatch.undo()
    lost = store.path(models[0], "max", 1, "1 y", "on")
    before = store.load(lost)
    lost.unlink()
    third = E.evaluate(store, models, ["max", "caws"], 2, ages, progress=False)
    assert third.computed == 1
    np.testing.assert_array_equal(store.load(lost), before)
    # an exhausted time budget computes nothing and says what is left
    lost.unlink()
    assert E.evaluate(store, models, ["max"], 2, ages, budget_s=0.0, progress=False).left == 1


def test_the_committed_archive_lets_a_fresh_cache_skip_every_cell(tmp_path, monkeypatch):
    from models import fmnist_data as D
    from studies import cell_archive as A

    if not D.available():
        pytest.skip(f"Fashion-MNIST not installed ({D.data_dir()}): bash docker/ci/install-fmnist.sh")
    _tiny_model(tmp_path / "m", "plain", 0)
    models = E.find_models([tmp_path / "m"])
    digests = [m.digest for m in models]
    first = E.CellStore(tmp_path / "cache", "pcm", 40)
    E.evaluate(first, models, ["max"], 2, ["1 y"], progress=False)
    (first.root / digests[0] / "mu-abc.json").write_text('{"sweep": 1}')  # µ sweeps travel too
    files = 2 * 2 + 1 + 1  # chips × GDC cells, the fp cell, the µ sweep
    assert A.archive(tmp_path / "cells", first.root, digests) == files
    zipped = A.archive_path(tmp_path / "cells", digests[0])
    before = zipped.read_bytes()
    # nothing new: the archive is not rewritten (git stays clean)
    assert A.archive(tmp_path / "cells", first.root, digests) == 0 and zipped.read_bytes() == before
    # a fresh machine: the cache is rebuilt from the archive, file for file, and no cell is recomputed
    fresh = E.CellStore(tmp_path / "fresh", "pcm", 40)
    assert A.restore(tmp_path / "cells", fresh.root, digests) == files
    for rel in (p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file()):
        assert (fresh.root / rel).read_bytes() == (first.root / rel).read_bytes(), rel

    def refuse(*a, **k):
        raise AssertionError("an archived cell was recomputed")

    monkeypatch.setattr(E, "chip_correct", refuse)
    assert E.evaluate(fresh, models, ["max"], 2, ["1 y"], progress=False).computed == 0
    monkeypatch.undo()
    # a new cell is added to the archive; the archive's bytes depend on its contents only
    E.evaluate(fresh, models, ["max"], 2, ["1 d", "1 y"], progress=False)
    assert A.archive(tmp_path / "cells", fresh.root, digests) == 2 * 2
    again = tmp_path / "again"
    A.restore(tmp_path / "cells", again, digests)
    assert A.archive(tmp_path / "copy", again, digests) == files + 4
    assert A.archive_path(tmp_path / "copy", digests[0]).read_bytes() == zipped.read_bytes()
    # the command line archives the cache of the models it finds
    A.main(["--models", str(tmp_path / "m"), "--cache", str(again), "--to", str(tmp_path / "cli")])
    assert A.archive_path(tmp_path / "cli", digests[0]).read_bytes() == zipped.read_bytes()


# ----------------------------------------------------------------------------- command line
def test_report_dispatches_on_suite():
    assert split_suite(["--suite", "fmnist", "--chips", "2"]) == ("fmnist", ["--chips", "2"])
    assert split_suite(["--chips", "3"]) == ("digits", ["--chips", "3"])
    assert split_suite(["--suite=fmnist"]) == ("fmnist", [])
    with pytest.raises(SystemExit, match="suite"):
        split_suite(["--suite", "cifar"])


def test_age_labels():
    import argparse

    assert age_label("1y") == "1 y" and age_label("30 d") == "30 d"
    with pytest.raises(argparse.ArgumentTypeError, match="2y"):
        age_label("2y")


def test_shards_split_the_chips(tmp_path):
    from studies.fmnist_study import shard

    assert shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(Exception, match="shard"):
            shard(bad)
    m = E.TrainedModel("resnet", "plain", 0, tmp_path / "m.onnx", "0" * 16)
    store = E.CellStore(tmp_path, "pcm", 10)
    chips = [c for c, *_ in E.missing_cells(store, [m], ["max"], 7, ["1 d"], shard=(1, 3))]
    assert chips == [1, 4]
    assert [c for c, *_ in E.missing_cells(store, [m], ["max"], 3, ["1 d"])] == [0, 1, 2]


def test_each_architecture_gets_its_own_chip_count(tmp_path):
    from studies.fmnist_study import arch_chips, chip_counts

    r = E.TrainedModel("resnet", "plain", 0, tmp_path / "r.onnx", "1" * 16)
    lstm = E.TrainedModel("lstm", "plain", 0, tmp_path / "l.onnx", "2" * 16)
    counts = chip_counts([r, lstm], 4, [arch_chips("resnet=2")])
    assert counts == {"lstm": 4, "resnet": 2}
    with pytest.raises(SystemExit, match="vit"):
        chip_counts([r, lstm], 4, [("vit", 3)])
    for bad in ("resnet", "resnet=0", "=3", "resnet=x"):
        with pytest.raises(Exception, match="arch-chips"):
            arch_chips(bad)
    store = E.CellStore(tmp_path, "pcm", 10)
    todo = [(c, m.arch) for c, m, *_ in E.missing_cells(store, [r, lstm], ["max"], counts, ["1 d"])]
    assert todo == [(0, "resnet"), (0, "lstm"), (1, "resnet"), (1, "lstm"), (2, "lstm"), (3, "lstm")]
    # complete chips are counted per architecture: all of the LSTM's chips, none of the ResNet's
    for k in range(4):
        for g in E.GDC_KEYS:
            E.CellStore.save(store.path(lstm, "max", k, "1 d", g), np.ones(10, bool))
    _, _, used = E.load_cells(store, [r, lstm], ["max"], counts, ["1 d"])
    assert used == {"lstm": [0, 1, 2, 3], "resnet": []}


def test_midpoint_study_has_the_clip_only_control_and_caches(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from models import fmnist_data as D
    from models.fmnist_recipe import FmnistRecipe
    from studies import fmnist_midpoint as MU

    if not D.available():
        pytest.skip(f"Fashion-MNIST not installed ({D.data_dir()}): bash docker/ci/install-fmnist.sh")
    kwargs = {"widths": [2, 4, 4], "blocks": 1}
    _tiny_model(tmp_path / "m", "plain", 0)
    from models import fmnist_models as FM

    net = FM.build("resnet", 0, **kwargs)
    torch.save(
        {
            "state_dict": net.state_dict(),
            "recipe": json.dumps(FmnistRecipe("resnet").to_json()),
            "arch_kwargs": json.dumps(kwargs),
        },
        tmp_path / "m" / "model.pt",
    )
    models = E.find_models([tmp_path / "m"])
    sigmas = np.logspace(-2, 2, 9)
    res = MU.midpoint_study(
        models, tmp_path / "cache", n_images=60, n_boot=5, sigmas=sigmas, seeds=(0,), progress=False
    )
    assert [r["arm"] for r in res["rows"]] == ["plain", MU.CLIP_LABEL]
    # at σ = 100 ≫ the layer outputs every answer is noise: accuracy near chance (60 images)
    assert all(r["accuracy"][-1] < 40 for r in res["rows"])
    monkeypatch.setattr(MU, "_model_sweep", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = MU.midpoint_study(
        models, tmp_path / "cache", n_images=60, n_boot=5, sigmas=sigmas, seeds=(0,), progress=False
    )
    assert again["rows"] == res["rows"]


# ----------------------------------------------------------------------------- the age curve
def test_curve_ages_are_cells_of_the_first_arm_of_the_named_architectures(tmp_path):
    from studies.fmnist_study import curve_of

    r = E.TrainedModel("resnet", "plain", 0, tmp_path / "r.onnx", "1" * 16)
    lstm = E.TrainedModel("lstm", "plain", 0, tmp_path / "l.onnx", "2" * 16)
    curve = curve_of([r, lstm], ["max", "caws"], ["1 d"], ["1 s", "1 d", "10 y"], ["lstm"])
    assert curve == E.Curve(("1 s", "10 y"), frozenset({"lstm"}), "max")  # 1 d is a table age already
    with pytest.raises(SystemExit, match="vit"):
        curve_of([r, lstm], ["max"], ["1 d"], ["1 s"], ["vit"])
    store = E.CellStore(tmp_path, "pcm", 10)
    todo = {
        (m.arch, arm): [a for a, g in cells if g == "on"]
        for _, m, arm, cells in E.missing_cells(store, [r, lstm], ["max", "caws"], 1, ["1 d"], curve=curve)
    }
    # the tables' age first, then the curve's (AGE_PRIORITY: 1 s before 10 y); CAWS and the ResNet: 1 d only
    assert todo == {
        ("resnet", "max"): ["1 d"],
        ("resnet", "caws"): ["1 d"],
        ("lstm", "max"): ["1 d", "1 s", "10 y"],
        ("lstm", "caws"): ["1 d"],
    }
    # the LSTM's chip is complete only with its curve cells
    for arm, age in [("max", "1 d"), ("caws", "1 d"), ("max", "1 s")]:
        for g in E.GDC_KEYS:
            E.CellStore.save(store.path(lstm, arm, 0, age, g), np.ones(10, bool))
    assert E.load_cells(store, [lstm], ["max", "caws"], 1, ["1 d"], curve)[2] == {"lstm": []}
    for g in E.GDC_KEYS:
        E.CellStore.save(store.path(lstm, "max", 0, "10 y", g), np.ones(10, bool))
    cells, _, used = E.load_cells(store, [lstm], ["max", "caws"], 1, ["1 d"], curve)
    assert used == {"lstm": [0]} and ("lstm-plain-s0", "max", "10 y", "off") in cells
    assert ("lstm-plain-s0", "caws", "10 y", "off") not in cells


def test_curve_ages_get_rows_and_gaps_but_no_caws_gap(tmp_path):
    from studies.fmnist_analysis import analyse
    from studies.fmnist_report import render_markdown as render

    rng = np.random.default_rng(1)
    n, k = 200, 3
    models = [
        E.TrainedModel("lstm", mode, 0, tmp_path / f"{mode}.onnx", str(i) * 16)
        for i, mode in enumerate(("plain", "recipe", "hwa"))
    ]
    curve = E.Curve(("10 y",), None, "max")
    cells = {
        (m.key, arm, age, g): rng.random((k, n)) < 0.8
        for m in models
        for arm in ("max", "caws")
        for age in curve.ages_for("lstm", arm, ["1 d"])
        for g in E.GDC_KEYS
    }
    fp = {m.key: rng.random(n) < 0.9 for m in models}
    res = analyse(models, cells, fp, {"lstm": list(range(k))}, ["1 d"], ["max", "caws"], n_boot=50, curve=curve)
    ages = {(r["arm"], r["age"]) for r in res["rows"]}
    assert ages == {("max", "1 d"), ("caws", "1 d"), ("max", "10 y")}
    kinds = {(g["kind"], g["age"]) for g in res["gaps"]}
    assert ("gap_to_fp", "10 y") in kinds and ("robustness_vs_recipe", "10 y") in kinds
    assert ("caws", "1 d") in kinds and ("caws", "10 y") not in kinds
    # the page's age columns run youngest first, with the curve's age after the tables'
    meta = lstm_page_meta(n, k)
    page = render({"meta": meta, "models": [], "analysis": res, "midpoint": None})
    assert "| arch | mode | arm | 1 d | 10 y |" in page and "also 10 y, max scaling only" in page
