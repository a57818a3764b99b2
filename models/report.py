"""Alias kept for existing commands: ``python -m models.report [...]`` runs ``python -m studies.accuracy [...]``.

The accuracy study moved to :mod:`studies.accuracy` (``models`` holds the torch library only);
every argument is forwarded unchanged.
"""

from __future__ import annotations

from studies.accuracy import main

if __name__ == "__main__":
    main()
