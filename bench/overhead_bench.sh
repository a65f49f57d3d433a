#!/usr/bin/env bash
# Serving overhead: builds, creates the 7M-parameter benchmark model (as llm_bench.sh), starts
# tandemd on it, and compares the p50 latency of 1-token Generate calls (one at a time, over a
# real gRPC channel) with the same work in-process (tokenize, prefill, sample, detokenize).
#   bench/overhead_bench.sh [extra tandem-bench flags]
source "$(dirname "$0")/bench_lib.sh"
PORT=${PORT:-50062}
bench_text_model "$RUN/models"
# Both processes wait for work passively: two spinning OpenMP teams on the same cores would
# measure their contention, not the server.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
start_tandemd "$PORT" "$RUN/tandemd.log" --models_dir="$RUN/models"
"$BIN/tandem-bench" --server="127.0.0.1:$PORT" \
  --model_dir="$RUN/models/bench7m" --mode=overhead --threads="${THREADS:-0}" "$@"
