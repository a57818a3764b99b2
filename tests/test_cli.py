"""The `agedchip` command line (service/cli.py): argument errors, `inspect` on the zoo, and the HTTP
commands against an in-process service (a FastAPI TestClient is an httpx client)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from service import cli
from service.app import create_app
from tests.service_helpers import eval_npz, make_settings, tiny_model, x_batch
from tests.service_process import free_port

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "models" / "zoo"


@pytest.fixture(autouse=True)
def _no_client_settings(monkeypatch):
    """The defaults of --url and --api-key come from the environment: none here."""
    for var in ("AGEDCHIP_URL", "AGEDCHIP_API_KEY", "AGEDCHIP_INFER_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def run(capsys, argv: list[str], client=None) -> tuple[int, str, str]:
    code = cli.main(argv, client=client)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["infer"],
        ["infer", "default"],
        ["evaluate", "default"],
        ["inspect"],
        ["program"],
        ["inspect", "m.onnx", "--nope"],
        ["infer", "default", "--input", "x.npy", "--seed", "one"],
    ],
)
def test_argument_errors_exit_2_with_usage(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage: agedchip" in capsys.readouterr().err


def test_console_script_is_declared_and_serve_and_demo_delegate(capsys):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"agedchip": "service.cli:main"}
    code, out, _ = run(capsys, ["serve", "--help"])  # python -m service --help: the settings table
    assert code == 0 and "AGEDCHIP_API_KEY" in out and "AGEDCHIP_STATE_DIR" in out
    code, out, _ = run(capsys, ["demo", "--seed", "0"])
    assert code == 0 and "512x512" in out and out.count("\n") >= 6  # header + four ages


# ------------------------------------------------------------------------------ inspect
def _expected_layers(path: Path) -> list[tuple[str, int, int]]:
    """(weight name, rows, cols) of each weight-bearing node, read from the ONNX file directly."""
    model = onnx.load(path)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":  # (C_out, C_in, k_h, k_w): a row per input channel and kernel tap
            out.append((node.input[1], int(np.prod(w.shape[1:])), w.shape[0]))
        elif node.op_type == "Gemm":
            out.append((node.input[1], *(w.shape[::-1] if attrs.get("transB") else w.shape)))
        elif node.op_type == "MatMul" and w.ndim == 2:
            out.append((node.input[1], *w.shape))
    return out


@pytest.mark.parametrize("name", ["cnn-hwa", "mlp-hwa"])
def test_inspect_reports_the_layers_of_a_zoo_model_without_programming(capsys, name):
    path = ZOO / f"{name}.onnx"
    code, out, _ = run(capsys, ["inspect", str(path), "--json"])
    assert code == 0
    report = json.loads(out)
    expected = _expected_layers(path)
    assert [(la["rows"], la["cols"]) for la in report["layers"]] == [(r, c) for _, r, c in expected]
    assert [la["devices"] for la in report["layers"]] == [2 * r * c for _, r, c in expected]
    assert report["weights"] == sum(r * c for _, r, c in expected)
    learned = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["agedchip.input_ranges"])
    for la, (weight, _, _) in zip(report["layers"], expected):
        assert la["input_range"] == pytest.approx(learned[weight]) and la["input_range_from"] == "model metadata"
    assert report["inputs"][0]["shape"][1:] == [1, 8, 8]
    code, table, _ = run(capsys, ["inspect", str(path)])
    assert code == 0 and all(la["name"] in table for la in report["layers"])
    assert f"{report['weights']} weights on {report['devices']} devices" in table


def test_inspect_tile_count_follows_the_profile(capsys, tmp_path):
    path = tmp_path / "wide.onnx"  # 64 inputs: 1 tile of 512 rows
    path.write_bytes(tiny_model(hidden=32))
    code, out, _ = run(capsys, ["inspect", str(path), "--json"])
    assert code == 0 and [la["tiles"] for la in json.loads(out)["layers"]] == [1, 1]


@pytest.mark.parametrize("content, message", [(b"not onnx", "model:"), (None, "cannot read")])
def test_inspect_bad_input_is_one_line_exit_1(capsys, tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, ["inspect", str(path)])
    assert code == 1 and out == "" and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------ HTTP commands
@pytest.fixture
def service(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path / "state", zoo, api_key="admin-key"))) as c:
        yield c


def test_program_infer_evaluate_against_the_service(capsys, service, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model(seed=4))
    ev = tmp_path / "e.npz"
    ev.write_bytes(eval_npz(tiny_model(seed=4), n=40))
    argv = [
        "program",
        str(model),
        "--chip-id",
        "cli-1",
        "--seed",
        "3",
        "--profile",
        "pcm-faulty",
        "--overrides",
        '{"drift_scale": 2}',
        "--time-scale",
        "3600",
        "--eval",
        str(ev),
    ]
    code, _, err = run(capsys, argv, service)
    assert code == 1 and "HTTP 401" in err and "api_key" in err  # the management key is required here
    code, out, err = run(capsys, [*argv, "--api-key", "admin-key"], service)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["chip_id"], summary["seed"], summary["eval_samples"]) == ("cli-1", 3, 40)
    assert summary["time_scale"] == 3600
    assert summary["profile"]["preset"] == "pcm-faulty" and summary["profile"]["values"]["drift_scale"] == 2
    assert service.get("/chips/cli-1").json()["model"]["digest"] == summary["model"]["digest"]
    # a zoo model by name
    code, out, _ = run(capsys, ["program", "tiny", "--chip-id", "from-zoo", "--api-key", "admin-key"], service)
    assert code == 0 and json.loads(out)["model"]["source"] == "zoo"

    x = np.asarray(x_batch(3, seed=2), np.float32)
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    infer = ["infer", "cli-1", "--input", str(npy), "--age", "1y", "--seed", "5"]
    code, out, err = run(capsys, infer, service)
    assert code == 0, err
    first = json.loads(out)
    assert first["chip_id"] == "cli-1" and first["batch"] == 3 and first["age_s"] == 365 * 86400
    direct = service.post("/infer", json={"chip_id": "cli-1", "inputs": x.tolist(), "age": "1y", "seed": 5}).json()
    assert first["outputs"] == direct["outputs"]  # the CLI sends what a client would
    code, out, _ = run(capsys, [*infer, "--labels", *map(str, first["argmax"])], service)
    assert json.loads(out)["accuracy"] == 1.0
    # an eval-set .npz works as input (its labels 'y' are not sent as an input)
    code, out, err = run(capsys, ["infer", "cli-1", "--input", str(ev), "--gdc", "false"], service)
    assert code == 0, err
    assert json.loads(out)["batch"] == 40 and json.loads(out)["gdc_applied"] is False

    code, out, err = run(capsys, ["evaluate", "cli-1", "--ages", "1s", "3600", "1y", "--readouts", "2"], service)
    assert code == 0, err
    result = json.loads(out)
    assert [r["age_s"] for r in result["results"]] == [1.0, 3600.0, 365 * 86400.0] and result["readouts"] == 2


def test_infer_reads_json_from_stdin(capsys, service, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(x_batch(1))))
    code, out, err = run(capsys, ["infer", "default", "--input", "-", "--age", "30d"], service)
    assert code == 0, err
    assert json.loads(out)["batch"] == 1


def test_service_errors_are_one_line_exit_1(capsys, service, tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 2), np.float32))
    code, out, err = run(capsys, ["infer", "default", "--input", str(npy)], service)
    assert code == 1 and out == "" and "HTTP 422" in err and "inputs.x" in err
    code, _, err = run(capsys, ["infer", "nope", "--input", str(npy)], service)
    assert code == 1 and "HTTP 404" in err and "no chip 'nope'" in err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    code, _, err = run(capsys, ["infer", "default", "--input", str(bad)], service)
    assert code == 1 and "not valid JSON" in err


def test_no_service_says_how_to_start_one(capsys, tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 1, 8, 8), np.float32))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = run(capsys, ["infer", "default", "--input", str(npy), "--url", url])
    assert code == 1 and out == "" and "no service answers at " + url in err and "agedchip serve" in err


# ------------------------------------------------------------------------------ Makefile
def make_n(*args: str) -> str:
    res = subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture
def make_available():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")


def test_make_installs_the_project_so_the_console_script_exists(make_available, tmp_path):
    venv = tmp_path / "v"
    for target in ("run", "test"):
        plan = make_n(target, f"VENV={venv}")
        assert f"{venv}/bin/python -m pip install" in plan and "--no-deps -e ." in plan, plan
    assert f"{venv}/bin/agedchip serve" in make_n("run", f"VENV={venv}")
    assert f"{venv}/bin/agedchip demo" in make_n("demo", f"VENV={venv}")


def test_torch_index_is_opt_in(make_available, tmp_path):
    venv = f"VENV={tmp_path / 'v'}"
    assert "--index-url" not in make_n("test", venv)
    plan = make_n("test", venv, "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu" in plan and "^torch==" in plan


def test_make_clean_removes_every_environment_the_project_creates(make_available):
    made = set()
    for path in [*REPO.glob("tests/*.py"), *REPO.glob("docker/ci/*.sh"), REPO / "Makefile"]:
        made |= set(re.findall(r"(?<![\w/])(\.venv[-\w]*)", path.read_text()))
    assert {".venv", ".venv-serve", ".venv-tools"} <= made
    removed = make_n("clean").split()
    assert removed[:2] == ["rm", "-rf"] and made <= set(removed), (made, removed)
