#!/usr/bin/env bash
# Sets up, builds, and runs every test (CTest over the GoogleTest binaries and the CLI tests),
# then the sanitizer and fuzzing half (scripts/sanitize.sh; TANDEM_SKIP_SANITIZERS=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
(cd "$BUILD_DIR" && ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 600)
if [ "${TANDEM_SKIP_SANITIZERS:-0}" != 1 ]; then bash scripts/sanitize.sh; fi
