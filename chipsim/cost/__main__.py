"""Print the energy/latency estimate of a model on a chip profile (an estimate, see docs/energy.md).

python -m chipsim.cost models/zoo/cnn-hwa.onnx --profile pcm --batch 1
python -m chipsim.cost models/zoo/cnn-hwa.onnx --cost-model hermes-4phase --json
"""

from __future__ import annotations

import argparse
import json
import sys

from chipsim.compiler import program_onnx
from chipsim.cost.cost_model import COST_MODELS, DEFAULT_COST_MODEL, hermes_cost_model
from chipsim.cost.estimate import CostEstimate, estimate
from chipsim.profiles import PRESETS, get_profile


def table(est: CostEstimate) -> str:
    lines = [
        f"{est.cost_model.name}: {est.cost_model.description}",
        "per sample (ESTIMATE):",
        f"{'layer':28} {'tiles':>5} {'rows':>5} {'cols':>5} {'MVMs':>6} {'MACs':>10} {'DAC':>8} {'ADC':>8} "
        f"{'dig ops':>8} {'energy nJ':>10} {'latency µs':>10}",
    ]
    for row in est.layers:
        lines.append(
            f"{row.name[:28]:28} {row.tiles:5} {row.rows:5} {row.cols:5} {row.mvms:6} {row.analog_macs:10} "
            f"{row.dac_conversions:8} {row.adc_conversions:8} {row.digital_ops:8} "
            f"{row.energy_j * 1e9:10.3f} {row.latency_s * 1e6:10.3f}"
        )
    d = est.digital
    lines.append(
        f"{'digital nodes (' + str(d.nodes) + ')':28} {'':5} {'':5} {'':5} {'':6} {'':10} {'':8} {'':8} "
        f"{d.ops:8} {d.energy_j * 1e9:10.3f} {d.latency_s * 1e6:10.3f}"
    )
    s = est.per_sample
    parts = ", ".join(f"{k} {v / s.energy_j:.1%}" for k, v in s.breakdown.to_dict().items())
    lines += [
        f"total per sample: {s.energy_j * 1e9:.3f} nJ, {s.latency_s * 1e6:.3f} µs, {s.tops_per_w:.2f} TOPS/W "
        f"effective ({parts})",
        f"batch {est.batch}: {est.energy_j * 1e9:.3f} nJ, {est.latency_s * 1e6:.3f} µs",
    ]
    lines += [f"warning: {w}" for w in est.warnings]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chipsim.cost", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX file")
    ap.add_argument("--profile", default="pcm", choices=sorted(PRESETS))
    ap.add_argument("--tile-rows", type=int, default=None, help="override the profile's tile_rows")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument(
        "--cost-model",
        default=None,
        choices=sorted(COST_MODELS),
        help=f"default: the profile's ({DEFAULT_COST_MODEL} for every preset)",
    )
    ap.add_argument(
        "--adc-share",
        type=float,
        default=None,
        help="HERMES one-phase model with this ADC share of the periphery energy (sensitivity)",
    )
    ap.add_argument("--json", action="store_true", help="print the JSON form")
    args = ap.parse_args(argv)
    with open(args.model, "rb") as f:
        model = f.read()
    overrides = {} if args.tile_rows is None else {"tile_rows": args.tile_rows}
    chip = program_onnx(model, get_profile(args.profile, **overrides), seed=0)  # counts do not depend on the seed
    cost_model = hermes_cost_model(1, args.adc_share) if args.adc_share is not None else args.cost_model
    est = estimate(chip, args.batch, cost_model=cost_model)
    print(json.dumps(est.to_dict(), indent=1) if args.json else table(est))
    return 0


if __name__ == "__main__":
    sys.exit(main())
