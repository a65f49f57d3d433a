#!/usr/bin/env bash
# Installs every Debian 12 package tandem needs to build, test and run the demo. Idempotent: a
# package already installed is skipped; apt-get runs only when something is missing.
#   scripts/setup.sh [--bench]   --bench: also what the benchmarks compare with (python3-torch,
#                                for bench/train_torch_reference.py; python3-sentencepiece, for
#                                bench/heldout_bpb.py)
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-openmp libgloo-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev
  libsentencepiece-dev libpng-dev libsqlite3-dev libcpp-httplib-dev nlohmann-json3-dev
  libssl-dev openssl
  fortunes dataset-fashion-mnist curl
  # tests/deploy: Prometheus and promtool, the schema validator, shellcheck (npm and kubectl:
  # below).
  prometheus python3 python3-yaml python3-jsonschema shellcheck
  clang libclang-rt-14-dev  # scripts/sanitize.sh: sanitizers and libFuzzer
)
if [ "${1:-}" = "--bench" ]; then
  PACKAGES+=(python3-torch python3-sentencepiece)
fi

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
# Node's npm may come with a nodejs from elsewhere (whose package conflicts with Debian's npm):
# Debian's npm only when there is none.
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends npm
fi
# The Dockerfile linter (tests/deploy/check_docker.py), from npm, pinned.
if ! command -v dockerfile-utils >/dev/null 2>&1; then
  echo "setup: installing dockerfile-utils (npm)"
  $SUDO npm install -g --no-fund --no-audit dockerfile-utils@0.16.3
fi
# kubectl (with kustomize 5) comes with this project's machines; Debian 12's kubernetes-client
# is 1.20, whose kustomize is too old for deploy/k8s. Without it check_k8s.py skips, saying so.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: no kubectl on PATH: the Kubernetes checks (tests/deploy/check_k8s.py) will skip"
fi
echo "setup: system packages ready"
