#!/usr/bin/env bash
# Durability with the real binaries: a training job survives `kill -9` of tandemd. A reference
# job runs uninterrupted; a second, identical job is killed mid-way (after a checkpoint), its
# newest checkpoint is then corrupted on disk, and tandemd is started again on the same
# --state_dir: the job resumes from the previous good checkpoint and its per-step losses equal
# the reference's step for step. Drives everything through `tandem train`.
#   train_kill9_test.sh BIN_DIR
set -euo pipefail
BIN=${1:?usage: train_kill9_test.sh BIN_DIR}
WORK=$(mktemp -d)
PID=0
trap '[ "$PID" -gt 0 ] && kill -9 $PID 2>/dev/null; rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; [ -f "$WORK/tandemd.log" ] && tail -30 "$WORK/tandemd.log"; exit 1; }

mkdir -p "$WORK/data" "$WORK/models"
for i in $(seq 1 150); do
  printf 'Fortune %d: the %s sleeps while the %s sings.\n%%\n' "$i" \
    "$(echo cat dog owl fox | cut -d' ' -f$((i % 4 + 1)))" "$(echo bee yak emu | cut -d' ' -f$((i % 3 + 1)))"
done > "$WORK/data/fortunes.txt"

PORT=$((20000 + RANDOM % 20000))
start_server() {
  "$BIN/tandemd" --listen="127.0.0.1:$PORT" --metrics_listen= --models_dir="$WORK/models" \
    --data_dir="$WORK/data" --state_dir="$WORK/state" --threads=1 --keep_checkpoints=5 \
    >> "$WORK/tandemd.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do "$BIN/tandem" train list >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "tandemd did not start"
}
export TANDEM_SERVER="127.0.0.1:$PORT"
SPEC=(--kind=text --dataset=fortunes.txt --vocab_size=300 --dim=32 --layers=2 --heads=4
      --kv_heads=2 --seq_len=32 --steps=300 --batch_size=4 --lr=0.003 --warmup_steps=2
      --eval_every=20 --checkpoint_every=5 --seed=5)

start_server
REF=$("$BIN/tandem" train submit --name=reference "${SPEC[@]}" | head -n1)
"$BIN/tandem" train watch "$REF" > "$WORK/ref.watch" 2>&1 || fail "reference job did not succeed: $(tail -5 "$WORK/ref.watch")"

JOB=$("$BIN/tandem" train submit --name=victim "${SPEC[@]}" | head -n1)
ckpt=0
for _ in $(seq 1 600); do
  ckpt=$("$BIN/tandem" train get "$JOB" --json | grep -o '"checkpoint_step": *"[0-9]*"' | grep -o '[0-9]*' || echo 0)
  [ "${ckpt:-0}" -ge 15 ] && break  # 300 steps: far from done when this poll sees step 15
  sleep 0.05
done
[ "${ckpt:-0}" -ge 15 ] || fail "the job never reached checkpoint 15"
kill -9 $PID
wait $PID 2>/dev/null || true
PID=0
CK="$WORK/state/jobs/$JOB/checkpoints"
newest=$(ls "$CK" | grep '^step-' | sort | tail -n1)
[ -n "$newest" ] || fail "no checkpoint on disk"
# Corrupt the newest checkpoint: the restart must detect it and use the one before.
printf '\xff\xff\xff\xff' | dd of="$CK/$newest/model.safetensors" bs=1 seek=200 conv=notrunc 2>/dev/null

start_server
"$BIN/tandem" train watch "$JOB" > "$WORK/job.watch" 2>&1 || fail "resumed job did not succeed: $(tail -5 "$WORK/job.watch")"
"$BIN/tandem" train get "$JOB" --json | grep -q '"attempt": 2' || fail "attempt is not 2"
grep -q "$JOB: resumed from the checkpoint of step .*skipped .*CRC-32" "$WORK/tandemd.log" ||
  fail "the corrupt checkpoint was not reported: $(grep "$JOB" "$WORK/tandemd.log" | tail -5)"
"$BIN/tandem" train get "$REF" --history | awk '$1 ~ /^[0-9]+$/ {print $1, $2}' > "$WORK/ref.losses"
"$BIN/tandem" train get "$JOB" --history | awk '$1 ~ /^[0-9]+$/ {print $1, $2}' > "$WORK/job.losses"
[ "$(wc -l < "$WORK/ref.losses")" -eq 300 ] || fail "reference history has $(wc -l < "$WORK/ref.losses") steps"
diff "$WORK/ref.losses" "$WORK/job.losses" > "$WORK/diff" || fail "losses differ after kill -9: $(head "$WORK/diff")"
kill -TERM $PID
wait $PID || fail "tandemd exited non-zero after SIGTERM"
PID=0
echo "PASS (killed at checkpoint $ckpt, corrupted $newest)"
