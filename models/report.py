"""Alias kept for existing commands: ``python -m models.report [...]`` runs ``python -m studies.accuracy [...]``.

The accuracy study moved to :mod:`studies.accuracy` (``models`` holds the torch library only);
every argument is forwarded unchanged. ``--suite NAME`` picks another study's command instead:
``--suite hardening`` runs ``python -m studies.hardening`` (issue #18) with the other arguments.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    suite = "accuracy"
    if "--suite" in argv:
        i = argv.index("--suite")
        if i + 1 >= len(argv):
            raise SystemExit("--suite: expected a name (accuracy, hardening)")
        suite = argv[i + 1]
        del argv[i : i + 2]
    if suite == "accuracy":
        from studies.accuracy import main as run
    elif suite == "hardening":
        from studies.hardening import main as run
    else:
        raise SystemExit(f"--suite: expected accuracy or hardening, got {suite!r}")
    run(argv)


if __name__ == "__main__":
    main()
