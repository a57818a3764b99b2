"""``--extra-chips``: the Fashion-MNIST study's core cells (first arm, table ages) on every chip,
the other arms and the curve's ages on the first chips only, every gap still paired."""

from __future__ import annotations

import numpy as np

from studies import fmnist_eval as E
from studies.fmnist_analysis import analyse
from studies.fmnist_report import render_markdown
from tests.fmnist_helpers import lstm_page_meta

ARMS = ["max", "caws"]
AGES = ["1 d"]
CURVE = E.Curve(("10 y",), None, "max")


def _models(tmp_path):
    return [
        E.TrainedModel("lstm", mode, 0, tmp_path / f"{mode}.onnx", str(i) * 16)
        for i, mode in enumerate(("plain", "recipe", "hwa"))
    ]


def _todo(tmp_path, curve):
    """(model, empty store, {(chip, arm): ages still to compute, GDC on}) of 3 chips, ``--extra-chips 1``."""
    m = _models(tmp_path)[0]
    store = E.CellStore(tmp_path, "pcm", 10)
    cells = E.missing_cells(store, [m], ARMS, 3, AGES, curve=curve, extra_chips=1)
    return m, store, {(chip, arm): [a for a, g in todo if g == "on"] for chip, _, arm, todo in cells}


def _random_cells(models, curve, n, k, kx, rng):
    """Random per-image correctness (80 %) of every cell: ``k`` chips for the core cells, ``kx`` for the others."""
    return {
        (m.key, arm, age, g): rng.random((k if E.is_core(arm, age, ARMS, AGES, curve) else kx, n)) < 0.8
        for m in models
        for arm in ARMS
        for age in curve.ages_for("lstm", arm, AGES)
        for g in E.GDC_KEYS
    }


def test_chips_beyond_the_extra_count_get_only_the_core_cells(tmp_path):
    m, store, todo = _todo(tmp_path, CURVE)
    assert todo == {(0, "max"): ["1 d", "10 y"], (0, "caws"): ["1 d"], (1, "max"): ["1 d"], (2, "max"): ["1 d"]}
    # without a count every chip gets every cell (the behaviour before --extra-chips)
    assert len(list(E.missing_cells(store, [m], ARMS, 3, AGES, curve=CURVE))) == 6


def test_the_extra_chips_are_a_prefix_of_the_complete_chips(tmp_path):
    m = _models(tmp_path)[0]
    store = E.CellStore(tmp_path, "pcm", 10)
    for chip in range(4):
        for arm in ARMS:
            for age in CURVE.ages_for("lstm", arm, AGES):
                for g in E.GDC_KEYS:
                    if (chip, arm) != (1, "caws") and (chip == 0 or E.is_core(arm, age, ARMS, AGES) or chip == 2):
                        E.CellStore.save(store.path(m, arm, chip, age, g), np.ones(10, bool))
    used, extra = E.complete_chips(store, [m], ARMS, 4, AGES, CURVE, extra_chips=3)
    # chip 1 lacks a CAWS cell: the extra chips stop before it although chip 2 has them all
    assert used == {"lstm": [0, 1, 2, 3]} and extra == {"lstm": [0]}
    cells, _, used2 = E.load_cells(store, [m], ARMS, 4, AGES, CURVE, extra_chips=3)
    assert used2 == used
    assert cells[(m.key, "max", "1 d", "on")].shape == (4, 10)
    assert cells[(m.key, "caws", "1 d", "on")].shape == (1, 10)
    assert cells[(m.key, "max", "10 y", "off")].shape == (1, 10)
    # without a count, a chip is complete only with every cell: chips 0 and 2
    assert E.complete_chips(store, [m], ARMS, 4, AGES, CURVE) == ({"lstm": [0, 2]}, {"lstm": [0, 2]})


def test_core_and_extra_rows_equal_the_two_separate_analyses(tmp_path):
    """The merged analysis is, number for number, the core cells' analysis on all chips plus the
    full analysis on the first chips: a gap never mixes the two chip sets."""
    rng = np.random.default_rng(3)
    n, k, kx = 150, 4, 2
    models = _models(tmp_path)
    cells = _random_cells(models, CURVE, n, k, kx, rng)
    fp = {m.key: rng.random(n) < 0.9 for m in models}
    res = analyse(models, cells, fp, {"lstm": list(range(k))}, AGES, ARMS, 40, curve=CURVE, extra_used={"lstm": [0, 1]})
    core = analyse(models, cells, fp, {"lstm": list(range(k))}, AGES, ["max"], 40)
    cut = {key: v[:kx] for key, v in cells.items()}
    full = analyse(models, cut, fp, {"lstm": [0, 1]}, AGES, ARMS, 40, curve=CURVE)

    def by_key(items, *fields):
        return {tuple(x[f] for f in fields): x for x in items}

    rows = by_key(res["rows"], "mode", "arm", "age", "gdc")
    for key, r in by_key(core["rows"], "mode", "arm", "age", "gdc").items():
        assert rows[key]["accuracy"] == r["accuracy"] and rows[key]["chips"] == k
    for key, r in by_key(full["rows"], "mode", "arm", "age", "gdc").items():
        if not E.is_core(key[1], key[2], ARMS, AGES):
            assert rows[key]["accuracy"] == r["accuracy"] and rows[key]["chips"] == kx
    assert len(rows) == len(full["rows"])
    gaps = by_key(res["gaps"], "kind", "mode", "age", "gdc")
    assert {key: g["value"] for key, g in by_key(core["gaps"], "kind", "mode", "age", "gdc").items()} == {
        key: gaps[key]["value"] for key in by_key(core["gaps"], "kind", "mode", "age", "gdc")
    }
    x = by_key(full["gaps"], "kind", "mode", "age", "gdc")
    assert gaps[("caws", "hwa", "1 d", "on")]["value"] == x[("caws", "hwa", "1 d", "on")]["value"]
    assert gaps[("gap_to_fp", "", "10 y", "on")]["value"] == x[("gap_to_fp", "", "10 y", "on")]["value"]
    assert len(gaps) == len(x)
    # FP rows and the targets come from all chips
    assert res["fp"] == core["fp"] and res["targets"] == core["targets"]
    meta = lstm_page_meta(n, k, extra_chips=kx, extra_chips_used={"lstm": [0, 1]}, ages=AGES)
    page = render_markdown({"meta": meta, "models": [], "analysis": res, "midpoint": None})
    assert "`--extra-chips 2`" in page and "lstm 2;" in page
    hwa_caws = next(line for line in page.splitlines() if line.startswith("| lstm | hwa | CAWS |"))
    hwa_max = next(line for line in page.splitlines() if line.startswith("| lstm | hwa | max scaling |"))
    assert hwa_caws.count("†") == 1 and hwa_max.count("†") == 1  # max: its 10 y value only


EVERY = E.Curve(("10 y",), None, "max", every_chip=True)


def test_a_curve_on_every_chip_is_core_and_only_the_other_arms_are_cut(tmp_path):
    m, store, todo = _todo(tmp_path, EVERY)
    assert todo == {
        (0, "max"): ["1 d", "10 y"],
        (0, "caws"): ["1 d"],
        (1, "max"): ["1 d", "10 y"],
        (2, "max"): ["1 d", "10 y"],
    }
    # a chip without its curve cells is not complete: it would leave the tables too
    for chip in range(3):
        for g in E.GDC_KEYS:
            E.CellStore.save(store.path(m, "max", chip, "1 d", g), np.ones(10, bool))
            E.CellStore.save(store.path(m, "caws", chip, "1 d", g), np.ones(10, bool))
            if chip != 1:
                E.CellStore.save(store.path(m, "max", chip, "10 y", g), np.ones(10, bool))
    assert E.complete_chips(store, [m], ARMS, 3, AGES, EVERY, extra_chips=1) == ({"lstm": [0, 2]}, {"lstm": [0]})
    cells, _, _ = E.load_cells(store, [m], ARMS, 3, AGES, EVERY, extra_chips=1)
    assert cells[(m.key, "max", "10 y", "on")].shape == (2, 10) and cells[(m.key, "caws", "1 d", "on")].shape == (1, 10)


def test_a_curve_on_every_chip_gets_rows_of_all_chips_and_no_dagger(tmp_path):
    rng = np.random.default_rng(5)
    n, k, kx = 150, 4, 2
    models = _models(tmp_path)
    cells = _random_cells(models, EVERY, n, k, kx, rng)
    fp = {m.key: rng.random(n) < 0.9 for m in models}
    used = {"lstm": list(range(k))}
    res = analyse(models, cells, fp, used, AGES, ARMS, 40, curve=EVERY, extra_used={"lstm": [0, 1]})
    core = analyse(models, cells, fp, used, AGES, ["max"], 40, curve=EVERY)  # the first arm alone, all chips
    rows = {(r["mode"], r["arm"], r["age"], r["gdc"]): r for r in res["rows"]}
    for r in core["rows"]:
        got = rows[(r["mode"], r["arm"], r["age"], r["gdc"])]
        assert got["accuracy"] == r["accuracy"] and got["chips"] == k
    assert rows[("hwa", "max", "10 y", "on")]["chips"] == k and rows[("hwa", "caws", "1 d", "on")]["chips"] == kx
    meta = lstm_page_meta(n, k, extra_chips=kx, extra_chips_used={"lstm": [0, 1]}, ages=AGES)
    meta["curve"] = {**meta.get("curve", {}), "every_chip": True}
    page = render_markdown({"meta": meta, "models": [], "analysis": res, "midpoint": None})
    assert "`--curve-every-chip`" in page
    hwa_caws = next(line for line in page.splitlines() if line.startswith("| lstm | hwa | CAWS |"))
    hwa_max = next(line for line in page.splitlines() if line.startswith("| lstm | hwa | max scaling |"))
    assert hwa_caws.count("†") == 1 and hwa_max.count("†") == 0
