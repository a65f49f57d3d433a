#!/usr/bin/env bash
# Installs every Debian 12 package tandem needs to build, test and run the demo. Idempotent: a
# package already installed is skipped; apt-get runs only when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-openmp libgloo-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev
  libsentencepiece-dev libpng-dev libsqlite3-dev libcpp-httplib-dev nlohmann-json3-dev
  libssl-dev openssl
  fortunes dataset-fashion-mnist curl
  clang libclang-rt-14-dev  # scripts/sanitize.sh: sanitizers and libFuzzer
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's libtorch calls whatever libblas.so.3 points at; make sure it is OpenBLAS (30-80x faster
# than the reference BLAS).
for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
  target=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-openmp | head -n1 || true)
  if [ -n "$target" ]; then $SUDO update-alternatives --set "$alt" "$target" >/dev/null; fi
done
echo "setup: system packages ready"
