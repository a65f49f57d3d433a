#!/usr/bin/env bash
# Diffusion serving benchmark: builds, creates a ~4M-parameter (3.98M) 28x28 diffusion model (random
# weights: speed does not depend on them), starts tandemd, and runs tandem-bench at 1 and 8
# concurrent requests of 50 guided DDIM steps in one run, then times a request that arrives while
# the others are half-way.
source "$(dirname "$0")/bench_lib.sh"
PORT=${PORT:-50062}
mkdir -p "$RUN/image-models"
if [ ! -f "$RUN/image-models/bench-unet/config.json" ]; then
  "$BIN/tandem-init" --kind=image --out="$RUN/image-models/bench-unet" --image_size=28 \
    --channels=1 --widths=32,64,128 --attention_levels=1,2 --text_dim=128 --text_layers=2 --seed=3
fi
start_tandemd "$PORT" "$RUN/tandemd-image.log" --models_dir="$RUN/image-models" --max_images=16
"$BIN/tandem-bench" --mode=image --server="127.0.0.1:$PORT" --streams=1,8 --steps=50 \
  --guidance=3 --skip_peak "$@"
