"""``python -m chipsim.inspect model.onnx``: a dry run of programming a model — which nodes go
analog (layers, tiles, devices), which stay digital and why, what would be refused — printed,
nothing programmed. Accepts a ``.zip``/``.tar`` holding a model with external data.

Exit status: 0 programmable, 1 refused, 2 usage error (unreadable file, unknown profile).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chipsim.compiler.archive import is_archive, model_from_archive
from chipsim.compiler.inspection import InspectReport, Refusal, inspect_model
from chipsim.compiler.plan import CompileError
from chipsim.profiles import PRESETS, ProfileError, get_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chipsim.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="ONNX file, or .zip/.tar with a model and its external data")
    parser.add_argument("--profile", default="pcm", help=f"chip profile preset, one of {sorted(PRESETS)} (default pcm)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        data = args.model.read_bytes()
        profile = get_profile(args.profile)
    except (OSError, ProfileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if is_archive(data):
            data = model_from_archive(data)
    except CompileError as err:
        report = InspectReport(profile=args.profile, refused=[Refusal(None, None, str(err))])
    else:
        report = inspect_model(data, profile, profile_name=args.profile)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format_text())
    return 0 if report.programmable else 1


if __name__ == "__main__":
    sys.exit(main())
