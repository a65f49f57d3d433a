#!/usr/bin/env bash
# Serving beside training (the device scheduler's benchmark), one command:
#   1. tandem-bench --mode=colocate: Poisson text and image traces at 10/30/50/70% of solo
#      capacity, alone and beside a running text job / image job (the demo's recipes); p99
#      latency ratios, harvest, preemption latency (see bench/colocate.h);
#   2. the same text recipe in-process (tandem-train-bench) for the same time and threads: the
#      rate a job alone in tandemd should match.
# Models: the 7M-parameter benchmark LLM and the 4M 28x28 U-Net (random weights: speed does not
# depend on them).  [WINDOW=30] [MIN_REQUESTS=0] bench/colocate_bench.sh [extra tandem-bench flags]
# (MIN_REQUESTS=100 lengthens the low-rate traces until their p99 means something.)
source "$(dirname "$0")/bench_lib.sh"
PORT=${PORT:-50063}
MPORT=${MPORT:-50064}
WINDOW=${WINDOW:-30}
mkdir -p "$RUN/colocate-models"
source scripts/datasets.sh
prepare_datasets "$RUN/data"
bench_text_model "$RUN/colocate-models"
if [ ! -f "$RUN/colocate-models/bench-unet/config.json" ]; then
  "$BIN/tandem-init" --kind=image --out="$RUN/colocate-models/bench-unet" --image_size=28 \
    --channels=1 --widths=32,64,128 --attention_levels=1,2 --text_dim=128 --text_layers=2 --seed=3
fi
rm -rf "$RUN/state"
start_tandemd "$PORT" "$RUN/tandemd-colocate.log" --models_dir="$RUN/colocate-models" \
  --metrics_listen="127.0.0.1:$MPORT" --log_requests=false
"$BIN/tandem-bench" --mode=colocate --server="127.0.0.1:$PORT" --metrics="127.0.0.1:$MPORT" \
  --text_model=bench7m --image_model=bench-unet --window_seconds="$WINDOW" \
  --min_requests="${MIN_REQUESTS:-0}" "$@"
kill -TERM "$TANDEMD_PID"; wait "$TANDEMD_PID" 2>/dev/null || true
trap - EXIT
echo
echo "in-process, same text recipe and threads (tandem-train-bench, $WINDOW s):"
"$BIN/tandem-train-bench" --recipe=scripts/recipes/text.json --dataset="$RUN/data/fortunes.txt" \
  --minutes="$(awk "BEGIN{print $WINDOW/60}")" --threads="${THREADS:-0}" \
  --work_dir="$RUN/train-bench" 2>&1 | grep -E "trained|setup"
