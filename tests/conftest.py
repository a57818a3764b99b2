"""Fixtures shared by the service tests: a tiny model zoo and in-process clients of the app."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service_helpers import make_settings, make_zoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Path:
    """A zoo with the tiny MLP and its eval set (read-only: shared by the whole session)."""
    return make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def client(tmp_path, zoo):
    """A client of a fresh app whose chip store (``client.state_dir``) is ``tmp_path / "state"``."""
    with TestClient(create_app(make_settings(tmp_path / "state", zoo))) as c:
        c.state_dir = tmp_path / "state"
        yield c


@pytest.fixture(scope="module")
def shared(tmp_path_factory, zoo):
    """A client shared by a module's tests (its store: ``shared.state_dir``)."""
    state = tmp_path_factory.mktemp("shared") / "state"
    with TestClient(create_app(make_settings(state, zoo))) as c:
        c.state_dir = state
        yield c
