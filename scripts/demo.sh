#!/usr/bin/env bash
# The tandem demo on a fresh Debian 12 machine: installs what it needs, builds, starts tandemd
# serving two randomly initialised models (an LLM and a text-to-image diffusion model), then —
# while it keeps serving — trains a small LLM on the fortunes corpus and a diffusion model on
# Fashion-MNIST for a few minutes each through the Training RPCs, hot-swaps both results into
# serving, streams a generated text and writes generated PNGs.
#   The jobs are scripts/recipes/*.json, 10 minutes each; TEXT_SECONDS / IMAGE_SECONDS override.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BIN=${BUILD_DIR:-build}/bin
RUN=${RUN_DIR:-run}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9090}
mkdir -p "$RUN/data" "$RUN/models" "$RUN/state"
source scripts/datasets.sh
prepare_datasets "$RUN/data"
if [ ! -f "$RUN/models/fortunes/config.json" ]; then
  "$BIN/tandem-init" --corpus="$RUN/data/fortunes.txt" --out="$RUN/models/fortunes" \
    --vocab_size=512 --dim=320 --layers=6 --heads=8 --kv_heads=4 --seq_len=512 --seed=1
fi
if [ ! -f "$RUN/models/fashion/config.json" ]; then
  "$BIN/tandem-init" --kind=image --out="$RUN/models/fashion" --image_size=28 --channels=1 \
    --widths=16,32,64 --attention_levels=2 --prediction=v --seed=1
fi

"$BIN/tandemd" --listen="127.0.0.1:$PORT" --metrics_listen="127.0.0.1:$METRICS_PORT" \
  --models_dir="$RUN/models" --data_dir="$RUN/data" --state_dir="$RUN/state" \
  > "$RUN/tandemd.log" 2>&1 &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT
export TANDEM_SERVER="127.0.0.1:$PORT"
for _ in $(seq 1 100); do
  "$BIN/tandem" models >/dev/null 2>&1 && break
  kill -0 $SERVER_PID 2>/dev/null || { cat "$RUN/tandemd.log"; exit 1; }
  sleep 0.2
done
echo "== models (random weights so far)"
"$BIN/tandem" models
echo "== serving while nothing is trained yet: random weights, gibberish"
"$BIN/tandem" generate --model=fortunes --max_tokens=24 --seed=42 "Q: What is the meaning of life?"

echo "== training: an LLM on the fortunes corpus (every 10th fortune held out)"
# The recipes (scripts/recipes/*.json) train for 10 minutes each; TEXT_SECONDS / IMAGE_SECONDS
# shorten or lengthen that.
TEXT_JOB=$("$BIN/tandem" train submit --spec=scripts/recipes/text.json \
  --max_seconds="${TEXT_SECONDS:-600}" | head -n1)
echo "== training: a diffusion model on Fashion-MNIST (queued behind the LLM job)"
IMAGE_JOB=$("$BIN/tandem" train submit --spec=scripts/recipes/image.json \
  --max_seconds="${IMAGE_SECONDS:-600}" | head -n1)
"$BIN/tandem" train list
# While the LLM trains, the server keeps serving: a stream from the (still random) image model.
"$BIN/tandem" image --model=fashion --steps=10 --seed=3 -o "$RUN/during-training.png" "a bag" >/dev/null
echo "   (served an image request while training: $RUN/during-training.png)"
"$BIN/tandem" train watch --samples_dir="$RUN" "$TEXT_JOB"
"$BIN/tandem" train watch --samples_dir="$RUN" "$IMAGE_JOB"

echo "== models (both replaced by the trained ones, without a restart)"
"$BIN/tandem" models
echo "== generate from the trained LLM"
"$BIN/tandem" generate --model=fortunes --max_tokens=80 --temperature=0.8 --seed=42 "Q: What"
echo "== images from the trained diffusion model"
"$BIN/tandem" image --model=fashion --steps=50 --guidance=3 --seed=7 -o "$RUN/ankle-boot.png" "a photo of an ankle boot"
"$BIN/tandem" image --model=fashion --steps=50 --guidance=3 --seed=7 --n=4 --grid -o "$RUN/trousers.png" "a photo of a pair of trousers"
echo "== metrics (excerpt)"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
  grep -E '^tandem_(generated_tokens|generated_images|train_steps|train_bits_per_byte|train_jobs)' || true
