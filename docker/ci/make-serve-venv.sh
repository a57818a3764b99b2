#!/bin/sh
# Build the serving virtual environment: numpy, onnx, onnxruntime, FastAPI, uvicorn, pydantic,
# prometheus-client (requirements/serve.txt) and nothing else: no torch, no compilers.
#
# One script, two users, so that they cannot drift apart:
#   - the Dockerfile's build stage:      sh make-serve-venv.sh /opt/venv serve.txt
#   - tests/test_serving_env.py:         sh docker/ci/make-serve-venv.sh .venv-serve requirements/serve.txt
#
# Wheels only (--only-binary=:all:): a dependency that would need a compiler fails the build
# instead of silently compiling. PYTHON picks the interpreter (default: python3).
set -eu

VENV=${1:?usage: make-serve-venv.sh VENV_DIR REQUIREMENTS_FILE}
REQ=${2:?usage: make-serve-venv.sh VENV_DIR REQUIREMENTS_FILE}
PYTHON=${PYTHON:-python3}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install \
    --no-cache-dir --disable-pip-version-check --no-input --only-binary=:all: \
    -r "$REQ"
# Refuse an environment that pulled in the training stack through some transitive dependency.
if "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "make-serve-venv: torch is importable in $VENV; the serving environment must not have it" >&2
    exit 1
fi
