#!/usr/bin/env bash
# The real binaries end to end through llama2.c's two files: tandem-init creates a model
# (SentencePiece tokenizer), `tandem export --format=llama2c` writes model.bin and tokenizer.bin,
# `tandem import --format=llama2c` turns them back into a model directory, and tandemd serves
# both: greedy text of the imported model is the original's (up to where either ends: the
# imported model stops at BOS as run.c does). Also the commands' errors and exit codes.
#   llama2c_cli_test.sh BIN_DIR
set -euo pipefail
BIN=${1:?usage: llama2c_cli_test.sh BIN_DIR}
WORK=$(mktemp -d)
trap '[ "$PID" -gt 0 ] && kill -9 $PID 2>/dev/null; rm -rf "$WORK"' EXIT
PID=0
fail() { echo "FAIL: $*"; [ -f "$WORK/tandemd.log" ] && cat "$WORK/tandemd.log"; exit 1; }

for i in $(seq 1 400); do echo "the quick brown fox $i jumps over the lazy dog near the river bank"; done > "$WORK/corpus.txt"
"$BIN/tandem-init" --corpus="$WORK/corpus.txt" --out="$WORK/models/original" --vocab_size=300 \
  --dim=32 --layers=2 --heads=4 --seq_len=256 --seed=3 2>/dev/null

# Bad arguments: exit 2, one line.
set +e
out=$("$BIN/tandem" export --format=gguf "$WORK/models/original" "$WORK/out" 2>&1); rc=$?
set -e
[ $rc -eq 2 ] || fail "bad format: exit $rc"
echo "$out" | grep -q '^tandem: export --format=gguf: the one format is llama2c' || fail "bad format message: $out"
set +e
out=$("$BIN/tandem" import --format=llama2c "$WORK/x" 2>&1); rc=$?
set -e
[ $rc -eq 2 ] || fail "import without files: exit $rc"

"$BIN/tandem" export --format=llama2c "$WORK/models/original" "$WORK/llama2c" 2> "$WORK/export.err" \
  || fail "export: $(cat "$WORK/export.err")"
grep -q 'exported .* (300 pieces)' "$WORK/export.err" || fail "export summary: $(cat "$WORK/export.err")"
[ -s "$WORK/llama2c/model.bin" ] && [ -s "$WORK/llama2c/tokenizer.bin" ] || fail "no model.bin/tokenizer.bin"
"$BIN/tandem" import --format=llama2c --checkpoint="$WORK/llama2c/model.bin" \
  --tokenizer="$WORK/llama2c/tokenizer.bin" "$WORK/models/imported" 2> "$WORK/import.err" \
  || fail "import: $(cat "$WORK/import.err")"
grep -q 'llama2.c version 0: dim 32' "$WORK/import.err" || fail "import summary: $(cat "$WORK/import.err")"
[ -f "$WORK/models/imported/tokenizer.bin" ] || fail "the imported model has no tokenizer.bin"

# Failures of the conversion itself: exit 1 with the status code.
set +e
out=$("$BIN/tandem" import --format=llama2c --checkpoint="$WORK/llama2c/model.bin" \
  --tokenizer="$WORK/llama2c/tokenizer.bin" "$WORK/models/imported" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "import into a full folder: exit $rc"
echo "$out" | grep -q '^tandem: ALREADY_EXISTS: ' || fail "import into a full folder: $out"
head -c 1000 "$WORK/llama2c/model.bin" > "$WORK/truncated.bin"
set +e
out=$("$BIN/tandem" import --format=llama2c --checkpoint="$WORK/truncated.bin" \
  --tokenizer="$WORK/llama2c/tokenizer.bin" "$WORK/t" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "truncated checkpoint: exit $rc"
echo "$out" | grep -q '^tandem: DATA_LOSS: .*truncated' || fail "truncated checkpoint: $out"

PORT=$((20000 + RANDOM % 20000))
"$BIN/tandemd" --listen="127.0.0.1:$PORT" --metrics_listen= --models_dir="$WORK/models" \
  --state_dir="$WORK/state" --data_dir="$WORK/data" --threads=1 > "$WORK/tandemd.log" 2>&1 &
PID=$!
export TANDEM_SERVER="127.0.0.1:$PORT"
for _ in $(seq 1 600); do "$BIN/tandem" models >/dev/null 2>&1 && break; sleep 0.1; done  # a loaded CI machine starts slowly
"$BIN/tandem" models | grep -q '^imported' || fail "tandem models does not list imported"
for prompt in "the quick brown" "a river"; do
  a=$("$BIN/tandem" generate --model=original --temperature=0 --max_tokens=40 --usage=false "$prompt")
  b=$("$BIN/tandem" generate --model=imported --temperature=0 --max_tokens=40 --usage=false "$prompt")
  [ -n "$b" ] || fail "the imported model generated nothing for \"$prompt\""
  case "$a" in "$b"*) ;; *) case "$b" in "$a"*) ;; *) fail "\"$prompt\": original \"$a\", imported \"$b\"";; esac;; esac
done
kill -TERM $PID
wait $PID || fail "tandemd exited $? after SIGTERM"
PID=0
echo "PASS"
