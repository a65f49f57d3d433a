#!/usr/bin/env bash
# The tandem demo on a fresh Debian 12 machine: installs what it needs, builds, creates an LLM
# whose tokenizer is trained on the fortunes corpus and a diffusion model whose tokenizer is
# trained on the Fashion-MNIST captions, starts tandemd, streams a generation and writes a PNG.
# (The training issue turns this into: train both while serving, deploy, then generate.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BIN=${BUILD_DIR:-build}/bin
RUN=${RUN_DIR:-run}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9090}
mkdir -p "$RUN/data" "$RUN/models" "$RUN/state"

[ -s "$RUN/data/fortunes.txt" ] || bash scripts/fortunes_corpus.sh "$RUN/data/fortunes.txt"
if [ ! -f "$RUN/models/fortunes/config.json" ]; then
  "$BIN/tandem-init" --corpus="$RUN/data/fortunes.txt" --out="$RUN/models/fortunes" \
    --vocab_size=512 --dim=320 --layers=6 --heads=8 --kv_heads=4 --seq_len=512 --seed=1
fi
if [ ! -f "$RUN/models/fashion/config.json" ]; then
  "$BIN/tandem-init" --kind=image --out="$RUN/models/fashion" --image_size=28 --channels=1 \
    --widths=32,64,128 --attention_levels=1,2 --seed=1
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
echo "== models"
"$BIN/tandem" models
echo "== generate (the weights are random until a training job replaces them)"
"$BIN/tandem" generate --max_tokens=64 --temperature=0.8 --seed=42 "Q: What is the meaning of life?"
echo "== image (random weights until a training job replaces them: noise, but a real PNG)"
"$BIN/tandem" image --steps=20 --seed=7 -o "$RUN/sneaker.png" "a photo of a sneaker"
echo "== metrics (excerpt)"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null | grep -E '^tandem_(generated_tokens|generated_images|generate_requests)' || true
