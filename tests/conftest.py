"""Fixtures shared by the tests: a tiny model zoo, in-process clients of the app, and the Prometheus
binaries (or a loud skip when they are missing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chipsim import ChipStore
from service.app import create_app
from tests.prometheus_helpers import loud_skip
from tests.service_helpers import make_settings, make_zoo
from tests.store_chips import make_chip


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


# Shared by test_prometheus and test_prometheus_rules (module scope: one lookup per module).
@pytest.fixture(scope="module")
def binaries() -> dict[str, str]:
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        loud_skip(
            f"{' and '.join(missing)} not installed: run `bash docker/ci/install-prometheus.sh` "
            "(apt-get install prometheus, as root); the Prometheus integration tests did NOT run"
        )
    res = subprocess.run([found["prometheus"], "--version"], capture_output=True, text=True)
    print(f"\nusing {(res.stdout or res.stderr).splitlines()[0]}")
    return found  # type: ignore[return-value]


# The chip store tests (test_store, test_store_corruption): an empty store, and one holding a chip.
@pytest.fixture
def store(tmp_path):
    return ChipStore(tmp_path / "state")


@pytest.fixture
def saved(store):
    chip = make_chip()
    store.save(chip)
    return store, chip
