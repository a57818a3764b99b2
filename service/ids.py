"""Identifiers a request names: chip ids and job ids, checked with a full match.

``re.match`` with a pattern ending in ``$`` accepts a trailing newline (``"default\n"``), which
made a look-alike chip appear in listings, on disk and in metrics; every check here is
``fullmatch``. chipsim checks chip ids again before any file access (its own rule).
"""

from __future__ import annotations

import re

from service.problems import InvalidField

#: A chip id: 1-63 of lowercase letters, digits, '-' and '_', starting with a letter or digit
#: (safe as a folder name and as a Prometheus label value).
CHIP_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
CHIP_ID_RULE = "1-63 characters: lowercase letters, digits, '-', '_'; starting with a letter or digit"
#: A job id: 'job-' and 16 lowercase hex digits.
JOB_ID = re.compile(r"job-[0-9a-f]{16}")


def is_chip_id(value: object) -> bool:
    return isinstance(value, str) and CHIP_ID.fullmatch(value) is not None


def check_chip_id(value: object, field_name: str = "chip_id") -> str:
    """``value`` if it is a chip id, else :class:`InvalidField` naming ``field_name``."""
    if not is_chip_id(value):
        raise InvalidField(field_name, f"{field_name}: {value!r} is not a valid chip id ({CHIP_ID_RULE})")
    return value  # type: ignore[return-value]


def check_job_id(value: object, field_name: str = "job_id") -> str:
    if not (isinstance(value, str) and JOB_ID.fullmatch(value)):
        raise InvalidField(field_name, f"{field_name}: {value!r} is not a job id (job-<16 hex digits>)")
    return value
