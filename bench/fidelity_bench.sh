#!/usr/bin/env bash
# Are the demo's trained models worth serving? One command: starts tandemd with the real
# datasets, and runs tandem-fidelity-bench against it (a Fashion-MNIST classifier judging the
# image job's samples, per class; the text job's held-out bits per byte), each job trained
# inside tandemd for TRAIN_SECONDS (600) with the recipes in scripts/recipes/.
#   bench/fidelity_bench.sh [extra tandem-fidelity-bench flags]
source "$(dirname "$0")/bench_lib.sh"
PORT=${PORT:-50065}
RUN_F=${RUN}/fidelity
source scripts/datasets.sh
prepare_datasets "$RUN/data"
rm -rf "$RUN/state" "$RUN/fidelity-models"
mkdir -p "$RUN/fidelity-models" "$RUN_F"
start_tandemd "$PORT" "$RUN/tandemd-fidelity.log" --models_dir="$RUN/fidelity-models" \
  --log_requests=false
"$BIN/tandem-fidelity-bench" --server="127.0.0.1:$PORT" --dataset_dir="$RUN/data/fashion-mnist" \
  --classifier="$RUN_F/classifier.pt" --grid_png="$RUN_F/samples.png" \
  --train_seconds="${TRAIN_SECONDS:-600}" "$@"
