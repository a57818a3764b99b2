"""``agedchip``: the command line (a console script: ``pip install -e .``, which ``make`` runs).

    agedchip serve                            the HTTP service on http://127.0.0.1:8000 (= python -m service;
                                              settings: AGEDCHIP_* variables, `agedchip serve --help`)
    agedchip demo [--profile pcm] [--seed 0]  a random 512x512 layer on a chip: drift metrics at 1 s … 1 y
    agedchip inspect MODEL.onnx [--json]      what programming would map onto the chip (nothing is programmed)
    agedchip program MODEL.onnx|ZOO_NAME [--chip-id ID] [--profile P] [--seed N] [--time-scale S] …
    agedchip infer CHIP --input X.npy|X.npz|X.json|- [--age 1y] [--seed N] [--labels 3 1 …]
    agedchip evaluate CHIP --ages 1s 1d 1y [--readouts 5] [--samples N]

``program``, ``infer`` and ``evaluate`` call the HTTP API of a running service (``--url``, default
``$AGEDCHIP_URL`` or http://127.0.0.1:8000) and print its JSON answer; an error is printed to
stderr with exit status 1. Keys: ``--api-key``, default ``$AGEDCHIP_API_KEY`` (``program``) or
``$AGEDCHIP_INFER_API_KEY``, then ``$AGEDCHIP_API_KEY`` (``infer``, ``evaluate``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from service import __main__ as service_main

DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds to wait for an answer: programming a large model or a long evaluation takes a while.
TIMEOUT_S = 600.0


class CliError(Exception):
    """A failure to report in one line (exit status 1), not with a traceback."""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="agedchip",
        description="agedchip: deploy models on an emulated, ageing analog in-memory-computing chip.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", metavar="{serve,demo,inspect,program,infer,evaluate}", required=True)
    # serve and demo hand their arguments to `python -m service` and `python -m chipsim.demo` as they are
    sub.add_parser("serve", add_help=False, help="run the HTTP service (python -m service)")
    sub.add_parser("demo", add_help=False, help="program a random layer and print its drift (python -m chipsim.demo)")

    p = sub.add_parser("inspect", help="what programming a model would map (compile only)")
    p.add_argument("model", type=Path, help="ONNX file")
    p.add_argument("--profile", default="pcm", help="chip profile preset (default pcm): sets the tile size")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def client_args(p: argparse.ArgumentParser, key_env: tuple[str, ...]) -> None:
        p.add_argument(
            "--url",
            default=os.environ.get("AGEDCHIP_URL") or DEFAULT_URL,
            help="the service (default $AGEDCHIP_URL or %(default)s)",
        )
        key = next((os.environ[k] for k in key_env if os.environ.get(k)), None)
        p.add_argument("--api-key", default=key, help=f"API key (default ${' or $'.join(key_env)})")

    p = sub.add_parser("program", help="program a new chip (POST /program)")
    p.add_argument("model", help="an ONNX file to upload, or the name of a zoo model (GET /zoo)")
    p.add_argument("--chip-id", help="id of the new chip (default <model>-<hex>)")
    p.add_argument("--profile", help="preset (ideal, pcm-reference, pcm, pcm-faulty, reram) or a JSON object")
    p.add_argument("--overrides", help="JSON object of profile fields, e.g. '{\"drift_scale\": 2}'")
    p.add_argument("--seed", type=int, help="programming seed (default random, returned)")
    p.add_argument("--time-scale", type=float, help="chip seconds per wall-clock second (default 1)")
    p.add_argument("--calibration", type=Path, help=".npz with 'x': calibrates DAC input ranges")
    p.add_argument("--eval", type=Path, help=".npz with inputs and integer labels 'y': the chip's eval set")
    client_args(p, ("AGEDCHIP_API_KEY",))

    p = sub.add_parser("infer", help="run a chip at an age (POST /infer)")
    p.add_argument("chip_id", metavar="CHIP", help="chip id (the one programmed at first start is 'default')")
    p.add_argument(
        "--input",
        required=True,
        help=".npy (one input), .npz (one array per input name), .json (nested list or object), or - (JSON on stdin)",
    )
    p.add_argument("--age", help="seconds or a duration: 90s, 1.5h, 30d, 1y, P1Y (default: wall clock × time scale)")
    p.add_argument("--seed", type=int, help="per-MVM noise seed (same seed, same outputs)")
    p.add_argument("--read-seed", type=int, help="read-out seed (1/f noise draw)")
    p.add_argument("--gdc", help="true, false, global, column, exact or off")
    p.add_argument("--labels", type=int, nargs="+", help="true class per sample: the answer reports the accuracy")
    client_args(p, ("AGEDCHIP_INFER_API_KEY", "AGEDCHIP_API_KEY"))

    p = sub.add_parser("evaluate", help="accuracy vs age on the chip's eval set (POST /chips/{id}/evaluate)")
    p.add_argument("chip_id", metavar="CHIP", help="chip id")
    p.add_argument("--ages", nargs="+", required=True, help="1-20 ages (seconds or durations)")
    p.add_argument("--readouts", type=int, default=5, help="read-outs per age (default %(default)s)")
    p.add_argument("--samples", type=int, help="use the first N eval samples (default all)")
    p.add_argument("--gdc-mode", help="GDC mode of the 'on' numbers: global, column or exact")
    client_args(p, ("AGEDCHIP_INFER_API_KEY", "AGEDCHIP_API_KEY"))
    return ap


def main(argv: list[str] | None = None, client: Any = None) -> int:
    """Run one command; returns the exit status. ``client``: an httpx-style client to call instead
    of the service at ``--url`` (the tests pass a FastAPI TestClient)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = parser()
    args, rest = ap.parse_known_args(argv)
    if args.command == "serve":
        service_main.main(rest)
        return 0
    if args.command == "demo":
        from chipsim import demo

        demo.main(rest)
        return 0
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "inspect":
            print(inspect_text(args.model, args.profile, as_json=args.json))
            return 0
        method, path, request = http_request(args)
        print(json.dumps(call(args, method, path, request, client), indent=1))
        return 0
    except CliError as err:
        print(f"agedchip {args.command}: {err}", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------------- HTTP commands
def http_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(method, path, httpx request keywords) of a program/infer/evaluate command."""
    if args.command == "program":
        return "POST", "/program", program_request(args)
    if args.command == "infer":
        body = {
            "chip_id": args.chip_id,
            "inputs": read_inputs(args.input),
            "age": args.age,
            "seed": args.seed,
            "read_seed": args.read_seed,
            "gdc": _gdc(args.gdc),
            "labels": args.labels,
        }
        return "POST", "/infer", {"json": {k: v for k, v in body.items() if v is not None}}
    body = {
        "ages": [_age(a) for a in args.ages],
        "readouts": args.readouts,
        "samples": args.samples,
        "gdc_mode": args.gdc_mode,
    }
    return "POST", f"/chips/{args.chip_id}/evaluate", {"json": {k: v for k, v in body.items() if v is not None}}


def program_request(args: argparse.Namespace) -> dict[str, Any]:
    """Multipart form of POST /program: the ONNX file (or the zoo name as a text field) and the options."""
    files: dict[str, Any] = {}
    model = Path(args.model)
    if model.suffix == ".onnx" or model.exists():
        files["model"] = (model.name, _read(model), "application/octet-stream")
    else:
        files["model"] = (None, args.model)
    for name, value in (
        ("chip_id", args.chip_id),
        ("profile", args.profile),
        ("overrides", args.overrides),
        ("seed", args.seed),
        ("time_scale", args.time_scale),
    ):
        if value is not None:
            files[name] = (None, str(value))
    for name, path in (("calibration", args.calibration), ("eval", args.eval)):
        if path is not None:
            files[name] = (path.name, _read(path), "application/octet-stream")
    return {"files": files}


def read_inputs(source: str) -> Any:
    """The ``inputs`` of an inference request from a file (or stdin): a nested list, or name → nested list."""
    import numpy as np

    if source == "-":
        return _json(sys.stdin.read(), "stdin")
    path = Path(source)
    data = _read(path)
    if path.suffix == ".json":
        return _json(data.decode(), source)
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CliError(f"--input: {source} is not a .npy/.npz array file or .json ({err})") from None
    if isinstance(loaded, np.ndarray):
        return loaded.tolist()
    arrays = {k: loaded[k] for k in loaded.files if k != "y"}  # an eval set's labels are no input
    if len(arrays) == 1:
        return next(iter(arrays.values())).tolist()
    return {k: v.tolist() for k, v in arrays.items()}


def call(args: argparse.Namespace, method: str, path: str, request: dict[str, Any], client: Any = None) -> Any:
    """Send one request; the JSON answer, or a CliError with the service's message."""
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    if client is None:
        import httpx

        try:
            with httpx.Client(base_url=args.url, timeout=TIMEOUT_S) as c:
                response = c.request(method, path, headers=headers, **request)
        except httpx.TransportError as err:
            raise CliError(
                f"no service answers at {args.url} ({err}); start one with `agedchip serve` "
                f"(or `make run`), or pass --url"
            ) from None
    else:
        response = client.request(method, path, headers=headers, **request)
    try:
        body = response.json()
    except ValueError:
        raise CliError(f"HTTP {response.status_code}: {response.text[:500]}") from None
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        raise CliError(f"HTTP {response.status_code}: {message or body}")
    return body


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as err:
        raise CliError(f"--input: {where} is not valid JSON ({err})") from None


def _age(text: str) -> str | float:
    """'3600' → 3600.0 (seconds); anything else is a duration string for the service to parse."""
    try:
        return float(text)
    except ValueError:
        return text


def _gdc(text: str | None) -> bool | str | None:
    return {"true": True, "false": False}.get(text.lower(), text) if text is not None else None


# ----------------------------------------------------------------------------------- inspect
def inspect_report(model_path: Path, profile_name: str) -> dict[str, Any]:
    """What programming ``model_path`` on ``profile_name`` would map, from the compiler alone: analog layers
    (rows × cols, tiles, devices, DAC input range and where it comes from), digital nodes, inputs, outputs."""
    from chipsim import ProfileError, get_profile
    from chipsim.compiler import META_INPUT_RANGES, CompileError, compile_model

    model_bytes = _read(model_path)
    try:
        profile = get_profile(profile_name)
        compiled = compile_model(model_bytes, profile)
    except (CompileError, ProfileError) as err:
        raise CliError(str(err)) from None
    try:
        learned = json.loads(compiled.metadata.get(META_INPUT_RANGES, "{}"))
    except ValueError:
        learned = {}
    layers = []
    for spec, plan in zip(compiled.specs, compiled.plans):
        rows, cols = spec.weight.shape
        layers.append(
            {
                "name": spec.name,
                "kind": plan.kind,
                "rows": int(rows),
                "cols": int(cols),
                "tiles": len(plan.tiles),
                "devices": 2 * int(rows * cols),
                "input_range": float(spec.input_range),
                "input_range_from": "model metadata" if spec.meta.get("weight") in learned else "default",
            }
        )
    return {
        "model": str(model_path),
        "bytes": len(model_bytes),
        "profile": profile_name,
        "tile_rows": profile.tile_rows,
        "analog_layers": len(layers),
        "digital_nodes": compiled.digital_nodes,
        "weights": sum(la["rows"] * la["cols"] for la in layers),
        "devices": sum(la["devices"] for la in layers),
        "tiles": sum(la["tiles"] for la in layers),
        "layers": layers,
        "inputs": compiled.inputs,
        "outputs": compiled.outputs,
    }


def inspect_text(model_path: Path, profile_name: str, as_json: bool = False) -> str:
    report = inspect_report(model_path, profile_name)
    if as_json:
        return json.dumps(report, indent=1)
    lines = [
        f"{report['model']} ({report['bytes']} bytes) on a {report['profile']!r} chip "
        f"(tiles of at most {report['tile_rows']} rows):",
        f"{'analog layer':32} {'kind':6} {'rows':>6} {'cols':>6} {'tiles':>5} {'devices':>9} {'input range':>12}",
    ]
    for la in report["layers"]:
        lines.append(
            f"{la['name'][:32]:32} {la['kind']:6} {la['rows']:6} {la['cols']:6} {la['tiles']:5} "
            f"{la['devices']:9} {la['input_range']:12.4g} ({la['input_range_from']})"
        )
    shapes = lambda ts: ", ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in ts)  # noqa: E731
    lines += [
        f"{report['analog_layers']} analog layers, {report['weights']} weights on {report['devices']} devices "
        f"in {report['tiles']} tiles; {report['digital_nodes']} digital nodes",
        f"inputs: {shapes(report['inputs'])}",
        f"outputs: {shapes(report['outputs'])}",
        "Layers without a learned input range get range 1.0 unless POST /program is given calibration data.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
