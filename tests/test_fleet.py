"""Fleets on real chips: programming (seeds, shared blobs, all-or-nothing publishing, crash
recovery), evaluation (equal to the single-chip route's seeds; local processes equal serial bit
for bit) and the domain errors. The zoo's mlp-hwa, 3 chips."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from chipsim import ChipStore
from chipsim.fleet import (
    FleetCancelled,
    FleetCorruptError,
    FleetError,
    FleetEvalSpec,
    FleetExistsError,
    FleetNotFoundError,
    FleetSpec,
    FleetStore,
    LocalProcessExecutor,
    SerialExecutor,
    chip_seed,
    evaluate_fleet,
    evaluate_task,
    make_tasks,
    program_fleet,
)
from chipsim.fleet.evaluate import EvalTask
from chipsim.modes import GdcMode
from chipsim.runtime import ChipRuntime

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "models" / "zoo"
MODEL = "mlp-hwa"
DAY, YEAR = 86400.0, 365 * 86400.0


def zoo_bytes():
    return (ZOO / f"{MODEL}.onnx").read_bytes(), (ZOO / f"{MODEL}.eval.npz").read_bytes()


def spec(fleet_id="mlp", n=3, seed=11):
    return FleetSpec(fleet_id=fleet_id, model_name=MODEL, n_chips=n, seed=seed)


@pytest.fixture(scope="module")
def fleet_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet") / "state"
    store = ChipStore(root)
    fleets = FleetStore(store)
    model, ev = zoo_bytes()
    fleet = program_fleet(store, spec(), model, ev, fleets=fleets)
    return store, fleets, fleet


EVAL = FleetEvalSpec.parse(
    {"ages_s": [1.0, DAY, 10 * YEAR], "readouts": 2, "slo": {"metric": "normalised_accuracy", "threshold": 0.95}}
)


# ----------------------------------------------------------------------------- seeds and ids
def test_chip_seeds_follow_the_documented_derivation():
    for fleet_seed, i in [(0, 0), (11, 2), (2**63 - 1, 999)]:
        h = hashlib.sha256(f"agedchip-fleet-v1:{fleet_seed}:{i}".encode()).digest()
        assert chip_seed(fleet_seed, i) == int.from_bytes(h[:8], "big") >> 1
    seeds = spec(n=50).chip_seeds()
    assert len(set(seeds)) == 50 and all(0 <= s < 2**63 for s in seeds)
    assert chip_seed(0, 1) != chip_seed(1, 0)  # an offset scheme would make these equal


@pytest.mark.parametrize(
    "data,field",
    [
        ({"fleet_id": "Bad Id", "n_chips": 2, "seed": 1}, "fleet_id"),
        ({"fleet_id": "a" * 60, "n_chips": 2, "seed": 1}, "fleet_id"),
        ({"fleet_id": "ok", "n_chips": 0, "seed": 1}, "n_chips"),
        ({"fleet_id": "ok", "n_chips": 1001, "seed": 1}, "n_chips"),
        ({"fleet_id": "ok", "n_chips": 2, "seed": -1}, "seed"),
    ],
)
def test_fleet_spec_errors_name_the_field(data, field):
    with pytest.raises(FleetError) as err:
        FleetSpec.parse(data)
    assert err.value.field == field


@pytest.mark.parametrize(
    "data,field",
    [
        ({"ages_s": [0.0], "slo": {"threshold": 0.9}}, "ages_s"),
        ({"ages_s": [1.0, 1.0], "slo": {"threshold": 0.9}}, "ages_s"),
        ({"ages_s": [1.0], "slo": {"threshold": 1.2}}, "slo"),
        ({"ages_s": [1.0], "slo": {"metric": "f1", "threshold": 0.9}}, "slo.metric"),
        ({"ages_s": [1.0], "readouts": 0, "slo": {"threshold": 0.9}}, "readouts"),
        ({"ages_s": [1.0], "gdc_mode": "off", "slo": {"threshold": 0.9}}, "gdc_mode"),
    ],
)
def test_eval_spec_errors_name_the_field(data, field):
    with pytest.raises(FleetError) as err:
        FleetEvalSpec.parse(data)
    assert err.value.field == field


def test_bad_profile_is_a_fleet_error():
    with pytest.raises(FleetError) as err:
        FleetSpec(fleet_id="x", n_chips=1, seed=0, overrides={"drift_scale": -1}).profile()
    assert err.value.field.startswith("profile")


# ----------------------------------------------------------------------------- programming
def test_fleet_chips_have_their_own_seeds_and_share_the_model(fleet_store):
    store, fleets, fleet = fleet_store
    assert [c.chip_id for c in fleet.chips] == ["mlp-000", "mlp-001", "mlp-002"]
    assert [c.seed for c in fleet.chips] == spec().chip_seeds()
    manifests = [store.read_manifest(c.chip_id) for c in fleet.chips]
    assert [m["seed"] for m in manifests] == [c.seed for c in fleet.chips]
    assert [m["meta"]["fleet"] for m in manifests] == [{"id": "mlp", "index": i, "seed": 11} for i in range(3)]
    # the model, its compiled graph, the eval set and the target weights are one blob each
    for key in ("model.onnx", "compiled.onnx", "eval.npz"):
        assert len({m["attachments"][key] for m in manifests}) == 1
    model, _ = zoo_bytes()
    assert manifests[0]["attachments"]["model.onnx"] == hashlib.sha256(model).hexdigest() == fleet.model_digest
    assert len(list(store.blobs_dir.glob(f"{fleet.model_digest}.*"))) == 1
    weights = {m["arrays"]["layers/0/weight"]["blob"] for m in manifests}
    assert len(weights) == 1
    # ... while the devices differ: programming noise per chip
    chips = [store.load(c.chip_id) for c in fleet.chips]
    assert not np.array_equal(chips[0].layers[0].dg_us, chips[1].layers[0].dg_us)
    assert not np.array_equal(chips[1].layers[0].nu, chips[2].layers[0].nu)
    # the recorded digest is the chip manifest's checksum
    assert [c.digest for c in fleet.chips] == [m["manifest_sha256"] for m in manifests]


def test_fp_accuracy_matches_the_zoo_index(fleet_store):
    # models/zoo/index.json records torch's accuracy of the float model on the same eval set
    # (models/build_zoo.py); ours comes from onnxruntime on the exported ONNX: equal to 1/450.
    index = {m["name"]: m for m in json.loads((ZOO / "index.json").read_text())["models"]}
    assert fleet_store[2].fp_accuracy == pytest.approx(index[MODEL]["fp_accuracy"], abs=1 / 450 + 1e-9)
    assert fleet_store[2].eval_samples == index[MODEL]["n_eval"]


def test_fleet_is_listed_and_reloaded(fleet_store):
    store, fleets, fleet = fleet_store
    listing = FleetStore(store, read_only=True).list()
    assert [(x.fleet_id, x.status) for x in listing] == [("mlp", "ready")]
    assert listing[0].fleet == fleet
    with pytest.raises(FleetNotFoundError):
        fleets.get("nope")
    with pytest.raises(FleetExistsError):
        program_fleet(store, spec(), *zoo_bytes(), fleets=fleets)


def _chips(store):
    return sorted(p.name for p in store.chips_dir.iterdir())


def test_a_failure_mid_programming_publishes_nothing(tmp_path):
    store = ChipStore(tmp_path / "s")
    fleets = FleetStore(store)
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 2:
            assert _chips(store) == ["f-000", "f-001"]  # two chips were really on disk
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        program_fleet(store, spec("f", 4), *zoo_bytes(), fleets=fleets, progress=progress)
    assert seen == [0, 1, 2]
    assert fleets.list() == [] and _chips(store) == [] and list(fleets.dir.iterdir()) == []
    with pytest.raises(FleetNotFoundError):
        fleets.get("f")
    # the id is free again
    program_fleet(store, spec("f", 1), *zoo_bytes(), fleets=fleets)
    assert [x.fleet_id for x in fleets.list()] == ["f"]


def test_cancel_between_chips(tmp_path):
    store = ChipStore(tmp_path / "s")
    stop = threading.Event()
    with pytest.raises(FleetCancelled):
        program_fleet(store, spec("c", 3), *zoo_bytes(), progress=lambda d, n: d == 1 and stop.set(), cancel=stop)
    assert _chips(store) == [] and FleetStore(store).list() == []


def test_taken_chip_id_is_refused_before_programming(tmp_path, fleet_store):
    store = ChipStore(tmp_path / "s")
    store.save(fleet_store[0].load("mlp-001"))
    with pytest.raises(FleetExistsError, match="mlp-001"):
        program_fleet(store, spec(), *zoo_bytes())
    assert _chips(store) == ["mlp-001"]


def test_eval_set_that_does_not_fit_is_a_fleet_error(tmp_path):
    import io

    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((5, 3), np.float32), y=np.zeros(5, np.int64))
    store = ChipStore(tmp_path / "s")
    with pytest.raises(FleetError) as err:
        program_fleet(store, spec("e", 2), zoo_bytes()[0], buf.getvalue())
    assert err.value.field.startswith("eval") and _chips(store) == []


CRASH = textwrap.dedent("""
    import os, signal, sys
    from chipsim import ChipStore
    from chipsim.fleet import FleetSpec, program_fleet
    root, model, ev = sys.argv[1:4]
    def progress(done, total):
        if done == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    program_fleet(ChipStore(root), FleetSpec(fleet_id="k", n_chips=4, seed=3), open(model, "rb").read(),
                  open(ev, "rb").read(), progress=progress)
""")


def test_a_killed_writer_is_rolled_back_on_the_next_open(tmp_path):
    root = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(root), str(ZOO / f"{MODEL}.onnx"), str(ZOO / f"{MODEL}.eval.npz")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    store = ChipStore(root)
    assert _chips(store) == ["k-000", "k-001"]  # the dead writer's chips, unpublished
    reader = FleetStore(store, read_only=True)
    assert [(x.fleet_id, x.status) for x in reader.list()] == [("k", "pending")]
    with pytest.raises(FleetNotFoundError):
        reader.get("k")
    writer = FleetStore(store)  # opening as the writer rolls the dead fleet back
    assert writer.list() == [] and _chips(store) == [] and list(writer.dir.iterdir()) == []


def test_delete_and_orphans(tmp_path):
    store = ChipStore(tmp_path / "s")
    fleets = FleetStore(store)
    program_fleet(store, spec("d", 2), *zoo_bytes(), fleets=fleets)
    program_fleet(store, spec("o", 2), *zoo_bytes(), fleets=fleets)
    fleets.delete("d")
    assert _chips(store) == ["o-000", "o-001"] and [x.fleet_id for x in fleets.list()] == ["o"]
    assert fleets.orphans() == []
    fleets.manifest_path("o").unlink()  # by hand: never cleaned automatically, only listed
    assert fleets.orphans() == ["o-000", "o-001"]
    FleetStore(store)
    assert _chips(store) == ["o-000", "o-001"]


def test_altered_manifest_is_corrupt(tmp_path):
    store = ChipStore(tmp_path / "s")
    fleets = FleetStore(store)
    program_fleet(store, spec("a", 1), *zoo_bytes(), fleets=fleets)
    path = fleets.manifest_path("a")
    m = json.loads(path.read_text())
    m["spec"]["seed"] = 12
    path.write_text(json.dumps(m))
    with pytest.raises(FleetCorruptError):
        fleets.get("a")
    assert [(x.fleet_id, x.status) for x in fleets.list()] == [("a", "corrupt")]


# ----------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def serial_rows(fleet_store):
    store, fleets, fleet = fleet_store
    with SerialExecutor() as ex:
        return ex.map(make_tasks(fleet, store.root, EVAL))


def test_rows_use_the_single_chip_routes_seeds(fleet_store, serial_rows):
    # POST /chips/{id}/evaluate runs ChipRuntime.run(x, age, read_seed=r, gdc, seed=r) per
    # read-out r: the fleet's rows must be those very numbers.
    store, _, fleet = fleet_store
    chip = store.load(fleet.chips[1].chip_id)
    rt = ChipRuntime(chip, threads=1, binding="inputs")
    ev = np.load(ZOO / f"{MODEL}.eval.npz")
    for row in [r for r in serial_rows if r.chip_index == 1]:
        gdc = "global" if row.gdc == "on" else False
        out = rt.run(ev["x"], row.age_s, read_seed=row.readout, gdc=gdc, seed=row.readout)[0]
        assert row.correct == int(np.count_nonzero(out.argmax(1) == ev["y"])), row
    assert len(serial_rows) == 3 * 3 * 2 * 2
    assert {r.gdc_mode for r in serial_rows} == {"global", "off"}


@pytest.mark.slow  # a pool of worker processes
def test_local_processes_equal_serial_bit_for_bit(fleet_store, serial_rows):
    store, fleets, fleet = fleet_store
    done = []
    with LocalProcessExecutor(workers=2) as ex:
        rows = ex.map(make_tasks(fleet, store.root, EVAL), progress=lambda d, n: done.append((d, n)))
        # a finer split (one task per chip and age) changes only scheduling
        split = ex.map(make_tasks(fleet, store.root, EVAL, ages_per_task=1))
    assert rows == serial_rows
    assert sorted(split, key=_key) == sorted(serial_rows, key=_key)
    assert done[-1] == (3, 3)


def _key(r):
    return (r.chip_index, r.age_s, r.readout, r.gdc)


def test_evaluate_fleet_report(fleet_store, serial_rows):
    store, fleets, fleet = fleet_store
    with SerialExecutor() as ex:
        rep = evaluate_fleet(fleets, "mlp", EVAL, ex)
    assert rep["fp_accuracy"] == fleet.fp_accuracy and rep["samples"] == 450 and rep["executor"] == "serial"
    for a, age in enumerate(EVAL.ages_s):
        for label in ("on", "off"):
            accs = [
                np.mean([r.accuracy for r in serial_rows if r.chip_index == c and r.age_s == age and r.gdc == label])
                for c in range(3)
            ]
            stats = rep["results"][a][f"gdc_{label}"]
            assert stats["accuracy"]["mean"] == pytest.approx(np.mean(accs))
            assert stats["yield"]["meets"] == sum(x / fleet.fp_accuracy >= 0.95 for x in accs)
    # physics sanity: without GDC a 10-year-old chip is worse than a fresh one, GDC recovers part
    last, first = rep["results"][-1], rep["results"][0]
    assert last["gdc_off"]["accuracy"]["mean"] < first["gdc_off"]["accuracy"]["mean"] - 0.05
    assert last["gdc_on"]["accuracy"]["mean"] > last["gdc_off"]["accuracy"]["mean"]


def test_a_changed_chip_is_refused(fleet_store):
    store, _, fleet = fleet_store
    task = make_tasks(fleet, store.root, EVAL)[0]
    bad = EvalTask(**{**task.__dict__, "digest": "0" * 64})
    with pytest.raises(FleetCorruptError, match="digest"):
        evaluate_task(bad)
    missing = EvalTask(**{**task.__dict__, "chip_id": "nope-000"})
    with pytest.raises(FleetCorruptError):
        evaluate_task(missing)


def test_errors_cross_the_process_boundary_with_their_field(fleet_store):
    store, _, fleet = fleet_store
    task = make_tasks(fleet, store.root, EVAL)[0]
    with LocalProcessExecutor(workers=1) as ex, pytest.raises(FleetCorruptError) as err:
        ex.map([EvalTask(**{**task.__dict__, "digest": "0" * 64})])
    assert err.value.field == "fleet_id"


def test_cancel_evaluation(fleet_store):
    store, _, fleet = fleet_store
    stop = threading.Event()
    stop.set()
    with SerialExecutor() as ex, pytest.raises(FleetCancelled):
        ex.map(make_tasks(fleet, store.root, EVAL), cancel=stop)
    with LocalProcessExecutor(workers=1) as ex, pytest.raises(FleetCancelled):
        ex.map(make_tasks(fleet, store.root, EVAL), cancel=lambda: True)


def test_gdc_mode_of_the_on_rows(fleet_store):
    store, _, fleet = fleet_store
    spec_col = FleetEvalSpec.parse({"ages_s": [DAY], "readouts": 1, "gdc_mode": "column", "slo": {"threshold": 0.5}})
    rows = SerialExecutor().map(make_tasks(fleet, store.root, spec_col)[:1])
    assert [(r.gdc, r.gdc_mode) for r in rows] == [("on", GdcMode.COLUMN), ("off", GdcMode.OFF)]


def test_executor_from_env(monkeypatch):
    from chipsim.fleet import executor_from_env

    monkeypatch.delenv("AGEDCHIP_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("AGEDCHIP_FLEET_WORKERS", "3")
    ex = executor_from_env()
    assert isinstance(ex, LocalProcessExecutor) and ex.describe() == "local(3)"
    monkeypatch.setenv("AGEDCHIP_FLEET_WORKERS", "0")
    with pytest.raises(FleetError) as err:
        executor_from_env()
    assert err.value.field == "AGEDCHIP_FLEET_WORKERS"
