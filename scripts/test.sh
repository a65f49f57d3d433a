#!/usr/bin/env bash
# Sets up, builds, and runs every test (CTest over the GoogleTest binaries and the CLI tests),
# then the sanitizer and fuzzing half (scripts/sanitize.sh; TANDEM_SKIP_SANITIZERS=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
# CTest runs tests side by side on the cores: their OpenMP teams sleep rather than spin while they
# wait (each process alone would spin; see README, Training).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
(cd "$BUILD_DIR" && ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 600)
if [ "${TANDEM_SKIP_SANITIZERS:-0}" != 1 ]; then bash scripts/sanitize.sh; fi
