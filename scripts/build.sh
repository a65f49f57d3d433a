#!/usr/bin/env bash
# Installs the system packages (scripts/setup.sh) and builds tandem into build/ (binaries in
# build/bin/). Extra arguments go to the CMake configure step, e.g.
#   scripts/build.sh -DCMAKE_PREFIX_PATH=/opt/libtorch   # an official (CUDA) LibTorch
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# Paths relative to the checkout, so clones in other folders (CI) reuse the cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(pwd)}
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
# 1.4 GB per torch TU: two jobs fit this project's 2-core, 24 GB machines.
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "build: binaries in $BUILD_DIR/bin"
