#!/usr/bin/env bash
# LLM serving benchmark: builds, creates the 7M-parameter benchmark model (vocab 512, dim 320,
# 6 layers, 8 heads, 4 kv heads, seq 512), starts tandemd on it, and runs tandem-bench at 1, 8 and
# 32 concurrent streams in one run (ratios between them are what to compare on noisy machines).
#   bench/llm_bench.sh [extra tandem-bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_BUILD:-}" ] || bash scripts/build.sh >/dev/null
BIN=${BUILD_DIR:-build}/bin
RUN=${RUN_DIR:-run/bench}
PORT=${PORT:-50061}
mkdir -p "$RUN/models" "$RUN/data"
[ -s "$RUN/data/fortunes.txt" ] || bash scripts/fortunes_corpus.sh "$RUN/data/fortunes.txt"
if [ ! -f "$RUN/models/bench7m/config.json" ]; then
  "$BIN/tandem-init" --corpus="$RUN/data/fortunes.txt" --out="$RUN/models/bench7m" \
    --vocab_size=512 --dim=320 --layers=6 --heads=8 --kv_heads=4 --seq_len=512 --seed=3
fi
"$BIN/tandemd" --listen="127.0.0.1:$PORT" --metrics_listen= --models_dir="$RUN/models" --state_dir="$RUN/state" --data_dir="$RUN/data" \
  --max_sequences=32 --threads="${THREADS:-0}" > "$RUN/tandemd.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  "$BIN/tandem" --server="127.0.0.1:$PORT" models >/dev/null 2>&1 && break
  sleep 0.2
done
"$BIN/tandem-bench" --server="127.0.0.1:$PORT" --model_dir="$RUN/models/bench7m" \
  --streams=1,8,32 --max_tokens=${MAX_TOKENS:-128} --threads="${THREADS:-0}" "$@"
