#!/usr/bin/env bash
# The sanitizer and fuzzing half of CI (scripts/test.sh runs it after the main suite), in build
# folders of its own, with clang:
#   build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer: the torch-free test binaries
#                (tandem_unit_tests, tandem_concurrency_tests), then each libFuzzer target of
#                tests/fuzz for FUZZ_SECONDS (default 10) from its committed corpus
#   build-tsan/  ThreadSanitizer: tandem_concurrency_tests (what the server's threads share)
# Any sanitizer report, or a fuzzer finding a crash, fails the script. New fuzzer inputs go to a
# temporary folder; to keep them, merge into the corpus:
#   build-asan/bin/X_fuzz -merge=1 tests/fuzz/corpus/X NEW_INPUTS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
JOBS=${JOBS:-$(nproc)}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(pwd)}
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
FUZZERS=(safetensors_fuzz png_fuzz checkpoint_fuzz dataset_fuzz tokenizer_fuzz config_fuzz
         generate_request_fuzz)

configure() {  # configure DIR SANITIZERS [extra cmake args]
  local dir=$1 sanitize=$2
  shift 2
  # -O1 -g1: sanitizers need no more, and the build is the long part of this script.
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DTANDEM_SANITIZE="$sanitize" "$@" \
    > "$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; exit 1; }
}

start=$(date +%s)
mkdir -p build-asan build-tsan
configure build-asan address,undefined -DTANDEM_FUZZ=ON
cmake --build build-asan -j "$JOBS" --target tandem_unit_tests tandem_concurrency_tests \
  tandem_sentencepiece "${FUZZERS[@]}"
configure build-tsan thread
cmake --build build-tsan -j "$JOBS" --target tandem_concurrency_tests tandem_sentencepiece
built=$(date +%s)

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
echo "sanitize: ASan+UBSan: tandem_unit_tests"
build-asan/bin/tandem_unit_tests --gtest_brief=1
echo "sanitize: ASan+UBSan: tandem_concurrency_tests"
build-asan/bin/tandem_concurrency_tests --gtest_brief=1
echo "sanitize: TSan: tandem_concurrency_tests"
build-tsan/bin/tandem_concurrency_tests --gtest_brief=1
tested=$(date +%s)

for f in "${FUZZERS[@]}"; do
  corpus=tests/fuzz/corpus/${f%_fuzz}
  found=$(mktemp -d)
  echo "sanitize: fuzzing $f for ${FUZZ_SECONDS}s from $corpus"
  build-asan/bin/$f -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$found/" "$found" "$corpus" 2>&1 |
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==ERROR|SUMMARY)" || true
  if ls "$found"/crash-* "$found"/leak-* "$found"/timeout-* "$found"/oom-* >/dev/null 2>&1; then
    echo "sanitize: $f found a failing input: $(ls "$found"/crash-* "$found"/leak-* "$found"/timeout-* "$found"/oom-* 2>/dev/null | head -n1)"
    exit 1
  fi
  rm -rf "$found"
done
fuzzed=$(date +%s)
echo "sanitize: passed (build $((built - start)) s, sanitized tests $((tested - built)) s, fuzzing $((fuzzed - tested)) s)"
