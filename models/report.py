"""``python -m models.report [--suite digits|fmnist|fmnist-ste|hardening] [...]``: the accuracy studies, one command.

``--suite digits`` (default; kept for existing commands) runs ``python -m studies.accuracy``, the
zoo's digits models; ``--suite fmnist`` runs ``python -m studies.fmnist_study``, the
Fashion-MNIST study of issue #12; ``--suite fmnist-ste`` runs ``python -m studies.fmnist_ste``,
its extended-STE cost comparison; ``--suite hardening`` runs ``python -m studies.hardening``,
the hardening study of issue #18. Every other argument is forwarded unchanged.
"""

from __future__ import annotations

import sys

SUITES = ("digits", "fmnist", "fmnist-ste", "hardening")


def split_suite(argv: list[str]) -> tuple[str, list[str]]:
    """(suite, the other arguments) of a command line; ``SystemExit`` for an unknown suite."""
    rest, suite, i = [], "digits", 0
    while i < len(argv):
        a = argv[i]
        if a == "--suite" and i + 1 < len(argv):
            suite, i = argv[i + 1], i + 2
            continue
        if a.startswith("--suite="):
            suite = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    if suite not in SUITES:
        raise SystemExit(f"--suite: expected one of {SUITES}, got {suite!r}")
    return suite, rest


def main(argv: list[str] | None = None) -> None:
    suite, rest = split_suite(sys.argv[1:] if argv is None else argv)
    if suite == "fmnist":
        from studies.fmnist_study import main as run
    elif suite == "fmnist-ste":
        from studies.fmnist_ste import main as run
    elif suite == "hardening":
        from studies.hardening import main as run
    else:
        from studies.accuracy import main as run
    run(rest)


if __name__ == "__main__":
    main()
