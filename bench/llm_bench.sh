#!/usr/bin/env bash
# LLM serving benchmark: builds, creates the 7M-parameter benchmark model (vocab 512, dim 320,
# 6 layers, 8 heads, 4 kv heads, seq 512), starts tandemd on it, and runs tandem-bench at 1, 8 and
# 32 concurrent streams in one run (ratios between them are what to compare on noisy machines).
#   bench/llm_bench.sh [extra tandem-bench flags]
source "$(dirname "$0")/bench_lib.sh"
PORT=${PORT:-50061}
bench_text_model "$RUN/models"
start_tandemd "$PORT" "$RUN/tandemd.log" --models_dir="$RUN/models" --max_sequences=32
"$BIN/tandem-bench" --server="127.0.0.1:$PORT" --model_dir="$RUN/models/bench7m" \
  --streams=1,8,32 --max_tokens=${MAX_TOKENS:-128} --threads="${THREADS:-0}" "$@"
