#!/usr/bin/env bash
# Installs Debian's `prometheus` package (the `prometheus` and `promtool` binaries) for
# tests/test_prometheus.py, which starts the binary itself on 127.0.0.1. Idempotent: does
# nothing when both binaries are already on PATH. Never fails the build: without root or apt
# it warns, and the test then skips with a loud reason.
#
# The package's maintainer scripts would start a system service on :9090; a temporary
# policy-rc.d (the Debian convention for containers) forbids that during the install.
set -u

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "install-prometheus: found $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi
warn() { echo "install-prometheus: WARNING: $*; tests/test_prometheus.py will be skipped" >&2; exit 0; }
[ "$(id -u)" = 0 ] || warn "not root, cannot apt-get install prometheus"
command -v apt-get >/dev/null 2>&1 || warn "no apt-get on this machine"

policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# added by agedchip docker/ci/install-prometheus.sh for the duration of an install\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "install-prometheus: apt-get install prometheus"
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    warn "apt-get install prometheus failed"
fi
command -v promtool >/dev/null 2>&1 || warn "promtool still missing after the install"
echo "install-prometheus: installed $(prometheus --version 2>&1 | head -n 1)"
