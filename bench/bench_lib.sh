# Shared by the serving benchmarks (bench/*_bench.sh); sourced, not run. After sourcing, the
# working directory is the repository root, the binaries are built (unless SKIP_BUILD is set), and
#   BIN  the binaries' folder (BUILD_DIR/bin, build/bin by default)
#   RUN  the benchmark's scratch folder (RUN_DIR, run/bench by default)
# are set. start_tandemd runs the server in the background for the rest of the script;
# bench_text_model makes the benchmarks' 7M-parameter LLM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -n "${SKIP_BUILD:-}" ] || bash scripts/build.sh >/dev/null
BIN=${BUILD_DIR:-build}/bin
RUN=${RUN_DIR:-run/bench}

# start_tandemd PORT LOG [tandemd flags...]: starts tandemd on 127.0.0.1:PORT with its log in LOG,
# stops it (SIGTERM) when the script exits, and waits until it answers (up to 20 s).
start_tandemd() {
  local port=$1 log=$2
  shift 2
  "$BIN/tandemd" --listen="127.0.0.1:$port" --metrics_listen= --state_dir="$RUN/state" \
    --data_dir="$RUN/data" --threads="${THREADS:-0}" "$@" > "$log" 2>&1 &
  TANDEMD_PID=$!
  trap 'kill -TERM $TANDEMD_PID 2>/dev/null; wait $TANDEMD_PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    "$BIN/tandem" --server="127.0.0.1:$port" models >/dev/null 2>&1 && return 0
    sleep 0.2
  done
}

# bench_text_model MODELS_DIR: the 7M-parameter benchmark LLM (vocab 512, dim 320, 6 layers, 8
# heads, 4 kv heads, seq 512, random weights: speed does not depend on them) as MODELS_DIR/bench7m,
# made once, with its tokenizer trained on the fortunes corpus (RUN/data/fortunes.txt, made if
# missing).
bench_text_model() {
  local models=$1
  mkdir -p "$models" "$RUN/data"
  [ -s "$RUN/data/fortunes.txt" ] || bash scripts/fortunes_corpus.sh "$RUN/data/fortunes.txt"
  [ -f "$models/bench7m/config.json" ] && return 0
  "$BIN/tandem-init" --corpus="$RUN/data/fortunes.txt" --out="$models/bench7m" \
    --vocab_size=512 --dim=320 --layers=6 --heads=8 --kv_heads=4 --seq_len=512 --seed=3
}
