#!/usr/bin/env bash
# tandem-train-bench --recipe: a job spec file trains in-process as tandemd would run it — the
# spec's model (the parameter count of its shape, not of the shape flags' defaults), its
# budget planned from --minutes — and a bad spec fails as a submission would, naming the field.
#   train_bench_recipe_test.sh BIN_DIR
set -euo pipefail
BIN=${1:?usage: train_bench_recipe_test.sh BIN_DIR}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

mkdir -p "$WORK/data"
for i in $(seq 1 300); do
  echo "the quick brown fox $i jumps over the lazy dog near the river bank"; echo "%"
done > "$WORK/data/corpus.txt"
spec() {  # spec DIM HEADS
  cat <<JSON
{"name": "tiny", "kind": "TRAIN_KIND_TEXT", "dataset": "ignored.txt",
 "text_model": {"vocab_size": 300, "dim": $1, "layers": 2, "heads": $2, "kv_heads": 2, "seq_len": 32},
 "hyperparameters": {"max_seconds": 600, "batch_size": 4, "lr": 0.003, "warmup_steps": 5,
                     "seed": 1}}
JSON
}
spec 32 4 > "$WORK/tiny.json"
run() { "$BIN/tandem-train-bench" --dataset="$WORK/data/corpus.txt" --threads=1 \
          --work_dir="$WORK/tb" --minutes=0.1 "$@"; }

out=$(run --recipe="$WORK/tiny.json" 2>&1) || fail "recipe run: $out"
# The spec's shape: the same parameter count as the same shape given by flags.
flags=$(run --vocab_size=300 --dim=32 --layers=2 --heads=4 --kv_heads=2 --seq_len=32 \
          --batch_size=4 --steps=0 2>&1) || fail "flags run: $flags"
params() { echo "$1" | sed -n 's/.*, \([0-9]*\) parameters,.*/\1/p'; }
[ -n "$(params "$out")" ] || fail "no parameter count: $out"
[ "$(params "$out")" = "$(params "$flags")" ] ||
  fail "recipe has $(params "$out") parameters, the same shape by flags $(params "$flags")"
# The budget is --minutes (6 s), planned as a job's max_seconds is.
echo "$out" | grep -q 'time budget 6 s' || fail "the recipe's budget is not --minutes: $out"
echo "$out" | grep -q '^trained ' || fail "no training summary: $out"

# A spec tandemd would refuse: exit 1, the field named.
spec 30 4 > "$WORK/bad.json"
set +e
out=$(run --recipe="$WORK/bad.json" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "bad spec: exit $rc: $out"
echo "$out" | grep -q 'INVALID_ARGUMENT' || fail "bad spec message: $out"
# No recipe file: exit 2.
set +e
out=$(run --recipe="$WORK/missing.json" 2>&1); rc=$?
set -e
[ $rc -eq 2 ] || fail "missing recipe: exit $rc: $out"
echo "PASS"
