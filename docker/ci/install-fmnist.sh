#!/usr/bin/env bash
# Installs Debian's `dataset-fashion-mnist` package (Zalando's Fashion-MNIST, 60 000 training and
# 10 000 test images of 28x28 pixels as gzipped IDX files under /usr/share/datasets) for the
# Fashion-MNIST models (models/fmnist_data.py) and their tests. Idempotent: does nothing when the
# files are already there. Never fails the build: without root or apt it warns, and the tests
# that need the data then skip with a loud reason.
set -u

dir=/usr/share/datasets/fashion-mnist
if [ -s "$dir/train-images-idx3-ubyte.gz" ] && [ -s "$dir/t10k-labels-idx1-ubyte.gz" ]; then
    echo "install-fmnist: found Fashion-MNIST in $dir"
    exit 0
fi
warn() { echo "install-fmnist: WARNING: $*; the Fashion-MNIST tests will be skipped" >&2; exit 0; }
[ "$(id -u)" = 0 ] || warn "not root, cannot apt-get install dataset-fashion-mnist"
command -v apt-get >/dev/null 2>&1 || warn "no apt-get on this machine"

export DEBIAN_FRONTEND=noninteractive
echo "install-fmnist: apt-get install dataset-fashion-mnist"
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null; }; then
    warn "apt-get install dataset-fashion-mnist failed"
fi
[ -s "$dir/train-images-idx3-ubyte.gz" ] || warn "$dir/train-images-idx3-ubyte.gz still missing after the install"
echo "install-fmnist: installed Fashion-MNIST in $dir"
