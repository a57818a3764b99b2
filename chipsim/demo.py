"""Command-line demo: program a random 512×512 layer and print drift metrics at several ages.

python -m chipsim.demo [--profile pcm] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from chipsim import LayerSpec, drift_metrics, get_profile, program
from chipsim.ages import DAY_S, HOUR_S, YEAR_S
from chipsim.profiles import PRESETS

AGES = {"1 s": 1.0, "1 h": HOUR_S, "1 d": DAY_S, "1 y": YEAR_S}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="pcm", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    weight = np.clip(rng.standard_normal((512, 512)), -2.5, 2.5).astype(np.float32)
    chip = program([LayerSpec("fc", weight)], get_profile(args.profile), seed=args.seed, chip_id="demo")
    print(f"programmed a 512x512 layer on a {args.profile!r} chip ({chip.n_devices} devices)")
    print(f"{'age':>5} {'alpha':>7} {'G(t)/G_prog':>12} {'err raw':>8} {'err GDC':>8} {'stuck':>6}")
    for label, age in AGES.items():
        m = drift_metrics(chip, age, read_seed=1)
        print(
            f"{label:>5} {m['layers'][0]['alpha_mean']:7.3f} {m['g_ratio']:12.3f} "
            f"{m['weight_error']:8.3f} {m['weight_error_gdc']:8.3f} {m['stuck_reset'] + m['stuck_set']:6d}"
        )


if __name__ == "__main__":
    main()
