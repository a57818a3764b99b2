"""Shared by the static checks of the container set-up: the compose file, and running optional
lint tools (a missing tool skips loudly, with the reason printed)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.dockerfile import REPO

TOOLS = REPO / ".venv-tools"
COMPOSE = REPO / "docker-compose.yml"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


def loud_skip(reason: str) -> None:
    print(f"\n*** SKIPPED: {reason}\n")
    pytest.skip(reason)


def compose_doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())
