#!/usr/bin/env bash
# The real binaries end to end: tandem-init creates a model, tandemd serves it, `tandem generate`
# streams from it; SIGTERM while a stream runs lets the stream finish, refuses new calls, and
# tandemd exits 0. Also checks the client's one-line errors and exit codes.
#   tandemd_sigterm_test.sh BIN_DIR
set -euo pipefail
BIN=${1:?usage: tandemd_sigterm_test.sh BIN_DIR}
WORK=$(mktemp -d)
trap '[ "$PID" -gt 0 ] && kill -9 $PID 2>/dev/null; rm -rf "$WORK"' EXIT
PID=0
fail() { echo "FAIL: $*"; [ -f "$WORK/tandemd.log" ] && cat "$WORK/tandemd.log"; exit 1; }

for i in $(seq 1 400); do echo "the quick brown fox $i jumps over the lazy dog near the river bank"; done > "$WORK/corpus.txt"
"$BIN/tandem-init" --corpus="$WORK/corpus.txt" --out="$WORK/models/tiny" --vocab_size=300 \
  --dim=32 --layers=2 --heads=4 --seq_len=512 --seed=3 2>/dev/null

PORT=$((20000 + RANDOM % 20000))
"$BIN/tandemd" --listen="127.0.0.1:$PORT" --metrics_listen= --models_dir="$WORK/models" \
  --state_dir="$WORK/state" --data_dir="$WORK/data" --threads=1 --shutdown_grace_seconds=30 > "$WORK/tandemd.log" 2>&1 &
PID=$!
export TANDEM_SERVER="127.0.0.1:$PORT"
for _ in $(seq 1 600); do "$BIN/tandem" models >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/tandem" models | grep -q '^tiny\*' || fail "tandem models does not list tiny"

# Client errors: one line, the right exit code.
set +e
out=$("$BIN/tandem" generate --top_p=1.5 "hi" 2>&1 >/dev/null); rc=$?
set -e
[ $rc -eq 1 ] || fail "bad top_p: exit $rc"
echo "$out" | grep -q '^tandem: INVALID_ARGUMENT: top_p must be in (0, 1]' || fail "bad top_p message: $out"
set +e
out=$("$BIN/tandem" --server=127.0.0.1:1 models 2>&1); rc=$?
set -e
[ $rc -eq 3 ] || fail "unreachable server: exit $rc"
echo "$out" | grep -q 'cannot reach the server' || fail "unreachable message: $out"

# A long stream, then SIGTERM while it runs.
"$BIN/tandem" generate --max_tokens=500 --temperature=1 --seed=9 "the quick" \
  > "$WORK/stream.out" 2> "$WORK/stream.err" &
CLIENT=$!
for _ in $(seq 1 200); do [ -s "$WORK/stream.out" ] && break; sleep 0.01; done
kill -TERM $PID
set +e
wait $CLIENT; client_rc=$?
wait $PID; server_rc=$?
set -e
[ $client_rc -eq 0 ] || fail "the in-flight stream failed (exit $client_rc): $(cat "$WORK/stream.err")"
grep -qE '^\[(length|eos) ' "$WORK/stream.err" || fail "no Finished summary: $(cat "$WORK/stream.err")"
[ $server_rc -eq 0 ] || fail "tandemd exited $server_rc after SIGTERM"
grep -q 'SIGTERM received' "$WORK/tandemd.log" || fail "no SIGTERM log line"
PID=0
echo "PASS"
