#!/usr/bin/env bash
# The kill -9 campaign: a training job is killed KILLS times (default 50) at random moments and
# tandemd is started again on the same --state_dir after each. The job checkpoints every step and
# deploys at every evaluation that improves, so it is almost always writing a checkpoint,
# committing to the job database or deploying. Half the kills are `kill -9` after a random
# delay; the other half are SIGKILL from inside tandemd at the K-th write, fsync, rename or
# SQLite write/sync (TANDEM_IO_FAULTS="*=KILL:after=K:times=1", K random: base/io_faults.h), i.e.
# in the middle of one of those, named in the log. After every restart no job is lost and the job
# resumes from a checkpoint that verifies; in the end its per-step losses equal an uninterrupted
# run's bit for bit (the doubles of `tandem train get --json --history`).
#   train_crash_campaign_test.sh BIN_DIR [KILLS]
set -euo pipefail
BIN=${1:?usage: train_crash_campaign_test.sh BIN_DIR [KILLS]}
KILLS=${2:-50}
WORK=$(mktemp -d)
PID=0
trap '[ "$PID" -gt 0 ] && kill -9 $PID 2>/dev/null; rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; [ -f "$WORK/tandemd.log" ] && tail -40 "$WORK/tandemd.log"; exit 1; }
export OMP_WAIT_POLICY=PASSIVE  # CTest runs tests side by side: sleep rather than spin

mkdir -p "$WORK/data" "$WORK/models"
for i in $(seq 1 150); do
  printf 'Fortune %d: the %s sleeps while the %s sings.\n%%\n' "$i" \
    "$(echo cat dog owl fox | cut -d' ' -f$((i % 4 + 1)))" "$(echo bee yak emu | cut -d' ' -f$((i % 3 + 1)))"
done > "$WORK/data/fortunes.txt"

PORT=$((20000 + RANDOM % 20000))
export TANDEM_SERVER="127.0.0.1:$PORT"
# start_server [FAULT_RULES]: tandemd in the background, returns once it answers.
start_server() {
  TANDEM_IO_FAULTS="${1:-}" "$BIN/tandemd" --listen="127.0.0.1:$PORT" --metrics_listen= \
    --models_dir="$WORK/models" --data_dir="$WORK/data" --state_dir="$WORK/state" --threads=1 \
    --keep_checkpoints=3 >> "$WORK/tandemd.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do
    "$BIN/tandem" train list >/dev/null 2>&1 && return 0
    kill -0 $PID 2>/dev/null || return 1  # died while starting (a fault point in recovery)
    sleep 0.05
  done
  fail "tandemd did not start"
}
# The per-step losses of a job, one a line, as the doubles the server stored.
losses() {
  "$BIN/tandem" train get "$1" --json --history |
    awk '/"history"/ {h = 1} h && /"loss"/ {gsub(/[",]/, "", $2); print $2} h && /^  \]/ {h = 0}'
}
state_of() { "$BIN/tandem" train get "$1" --json | sed -n 's/^ "state": "\([A-Z]*\)",*$/\1/p'; }
STEPS=120
# chunk_rows fixed: the reference and each victim are separate jobs, and jobs that leave it unset
# calibrate their own chunk size from timed probes (each keeps its choice across restarts). On a
# loaded machine two jobs can choose differently, and differently chunked sums round differently.
SPEC=(--kind=text --dataset=fortunes.txt --vocab_size=300 --dim=32 --layers=2 --heads=4
      --kv_heads=2 --seq_len=32 --steps=$STEPS --batch_size=4 --chunk_rows=4 --lr=0.003
      --warmup_steps=5 --eval_every=20 --checkpoint_every=1 --seed=9 --deploy_as=campaign
      --deploy_on_improvement)

start_server
REF=$("$BIN/tandem" train submit --name=reference "${SPEC[@]}" | head -n1)
"$BIN/tandem" train watch "$REF" > "$WORK/ref.watch" 2>&1 || fail "the reference job failed: $(tail -5 "$WORK/ref.watch")"
losses "$REF" > "$WORK/ref.losses"
[ "$(wc -l < "$WORK/ref.losses")" -eq $STEPS ] || fail "reference history has $(wc -l < "$WORK/ref.losses") steps"

# The last moment: killed once its final checkpoint is durable (at the export that follows it),
# before its end is recorded, a job restarts with no step left and must finish, not fail.
SHORT=(--kind=text --dataset=fortunes.txt --vocab_size=300 --dim=32 --layers=1 --heads=4
       --seq_len=16 --steps=6 --batch_size=2 --checkpoint_every=2 --deploy_as=last-moment)
kill -9 $PID; wait $PID 2>/dev/null || true; PID=0
start_server "write@/eval/step-0000000006/=KILL:times=1"
LAST=$("$BIN/tandem" train submit --name=last-moment "${SHORT[@]}" | head -n1)
for _ in $(seq 1 1200); do kill -0 $PID 2>/dev/null || break; sleep 0.05; done
kill -9 $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; PID=0
grep -q "SIGKILL at write .*/eval/step-0000000006/" "$WORK/tandemd.log" || fail "the last-moment kill did not happen"
start_server || fail "tandemd did not start after the last-moment kill"
"$BIN/tandem" train watch "$LAST" > "$WORK/last.watch" 2>&1 || fail "a job killed after its final checkpoint did not finish: $(tail -3 "$WORK/last.watch")"

VICTIMS=()
# A submission the server dies in the middle of (a fault point during its commit) leaves JOB
# empty: the next wait submits again (a job the server did record meanwhile just runs).
submit_victim() {
  JOB=$("$BIN/tandem" train submit --name="victim-${#VICTIMS[@]}" "${SPEC[@]}" 2>/dev/null |
        head -n1) || true
  if [[ ! $JOB =~ ^job-[0-9]+$ ]]; then JOB=""; return 1; fi
  VICTIMS+=("$JOB")
}
submit_victim
kill -9 $PID; wait $PID 2>/dev/null || true; PID=0

step_of() { "$BIN/tandem" train get "$1" --json 2>/dev/null | awk '/"latest"/ {l = 1} l && /"step"/ {gsub(/[",]/, "", $2); print $2; exit}'; }
# Waits (up to 120 s) until the running victim has trained a step since this start, submitting a
# fresh victim when the current one has finished. False when tandemd died meanwhile.
wait_for_training() {
  local from=0
  [ -z "$JOB" ] || { from=$(step_of "$JOB"); from=${from:-0}; }
  for _ in $(seq 1 1200); do
    kill -0 $PID 2>/dev/null || return 1
    if [ -z "$JOB" ] || [ "$(state_of "$JOB" 2>/dev/null)" = SUCCEEDED ]; then
      submit_victim || { sleep 0.1; continue; }
      from=0
    fi
    local now
    now=$(step_of "$JOB" 2>/dev/null); now=${now:-0}
    [ "$now" -gt "$from" ] && return 0
    sleep 0.1
  done
  fail "the job made no progress for 120 s"
}

kills=0 timed=0 at_points=0 cycles=0
declare -A where=()
while [ $kills -lt "$KILLS" ]; do
  cycles=$((cycles + 1))
  [ $cycles -le $((KILLS * 3)) ] || fail "only $kills kills in $cycles starts"
  before=$(grep -c 'SIGKILL at' "$WORK/tandemd.log" || true)
  if [ $((RANDOM % 2)) -eq 0 ]; then
    # SIGKILL inside a write, fsync, rename or SQLite write or sync: the K-th from the start
    # (recovery's commits, then the job's checkpoints, step records, exports and deploys).
    start_server "*=KILL:after=$((RANDOM % 60)):times=1" || true
    while wait_for_training; do :; done  # until the fault point kills it
  else
    start_server || fail "tandemd did not start without faults"
    wait_for_training || fail "tandemd died without a fault armed"
    sleep "0.$((RANDOM % 5))$((RANDOM % 10))"
    kill -9 $PID 2>/dev/null || true
    timed=$((timed + 1))
  fi
  wait $PID 2>/dev/null || true
  PID=0
  after=$(grep -c 'SIGKILL at' "$WORK/tandemd.log" || true)
  if [ "$after" -gt "$before" ]; then
    at_points=$((at_points + 1))
    line=$(grep 'SIGKILL at' "$WORK/tandemd.log" | tail -n1)
    case "$line" in
      *sqlite*) k=job-database ;;
      *checkpoints*) k=checkpoint ;;
      */eval/*|*/models/*) k=export-or-deploy ;;
      *) k=other ;;
    esac
    where[$k]=$(( ${where[$k]:-0} + 1 ))
  fi
  kills=$((timed + at_points))
done

# Nothing lost; every victim runs to the end from its last good checkpoint, with the
# reference's losses.
start_server || fail "tandemd did not start after the campaign"
"$BIN/tandem" train list > "$WORK/list"
for j in "$REF" "${VICTIMS[@]}"; do grep -q "$j" "$WORK/list" || fail "job $j was lost: $(cat "$WORK/list")"; done
resumes=0 attempts=0
for j in "${VICTIMS[@]}"; do
  "$BIN/tandem" train watch "$j" > "$WORK/job.watch" 2>&1 || fail "$j did not succeed: $(tail -5 "$WORK/job.watch")"
  losses "$j" > "$WORK/job.losses"
  diff "$WORK/ref.losses" "$WORK/job.losses" > "$WORK/diff" || fail "$j: losses differ after the kills: $(head "$WORK/diff")"
  resumes=$((resumes + $(grep -c "$j: resumed from the checkpoint of step" "$WORK/tandemd.log" || true)))
  attempts=$((attempts + $("$BIN/tandem" train get "$j" --json | grep -o '"attempt": [0-9]*' | grep -o '[0-9]*$')))
  # Checkpoints are written whole or not at all: no kill may leave one that does not verify.
  if grep "$j: .*skipped" "$WORK/tandemd.log" > "$WORK/bad"; then
    fail "a checkpoint of $j did not verify after a kill: $(head -3 "$WORK/bad")"
  fi
done
[ "$resumes" -gt 0 ] || fail "no resume was logged"
"$BIN/tandem" models | grep -q campaign || fail "the deployed model is not served"
kill -TERM $PID; wait $PID || fail "tandemd exited non-zero after SIGTERM"; PID=0
summary=""
for k in "${!where[@]}"; do summary="$summary ${where[$k]} $k,"; done
echo "PASS: $kills kills in $cycles starts ($timed kill -9 at a random moment, $at_points SIGKILL inside a write:${summary%,}); ${#VICTIMS[@]} jobs, $resumes resumes from a verified checkpoint, $attempts attempts; each job's $STEPS losses equal the uninterrupted run's bit for bit"
