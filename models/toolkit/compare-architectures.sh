#!/usr/bin/env bash
# The architecture comparison of models/README.md: every architecture trained at once on ONE GPU for
# the same wall-clock budget (train-lm, same data, tokenizer, shape, dropout and learning rate), then
# exported, verified, evaluated on the held-out Brown files and carded, all in parallel.
#   bash models/toolkit/compare-architectures.sh --data <prepared Brown dir> --out <folder> [--minutes 3.5]
#     [--phase train|post|all] [--results DIR] [--task lm|recall] [--train-args "..."]
# --task recall: the recall curriculum (`train`: facts in Brown noise, questions segments later, the
# state backpropagated through in every architecture) instead of train-lm, and the recall table at
# RECALL_LENGTHS (default 1,4,16,64,128 segments of noise; RECALL_SAMPLES per length, default 100)
# beside the perplexity.
# --phase post: only export/verify/evaluate/card from the checkpoints a train phase left in --out (a
# machine whose calls are limited to 10 minutes runs the two phases as two calls on the same machine).
# --results DIR: each architecture's model.json, card and train log are copied there as soon as it is
# done (small files; weights and graphs stay in --out).
# Architectures: ARCHS (default: rmt, transformer-xl, transformer-xl-m16 (mem_len 16), lamemo,
# memtransformer, memctrl, membottleneck); configs from configs/ (rmt: rmt-brown-small.json).
# Training together means each gets a share of the GPU: the steps reached in the budget differ by
# architecture (each card records its steps).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
DATA="" OUT="" MINUTES=3.5 PHASE=all RESULTS="" TASK=lm TRAIN_ARGS=""
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2 ;; --out) OUT=$2 ;; --minutes) MINUTES=$2 ;; --phase) PHASE=$2 ;; --results) RESULTS=$2 ;;
    --task) TASK=$2 ;; --train-args) TRAIN_ARGS=$2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$DATA" ] && [ -n "$OUT" ] || { echo "usage: $0 --data <prepared Brown dir> --out <folder> [--minutes 3.5]" >&2; exit 2; }
[ "$TASK" = lm ] || [ "$TASK" = recall ] || { echo "--task: lm or recall" >&2; exit 2; }
ARCHS=${ARCHS:-rmt transformer-xl transformer-xl-m16 lamemo memtransformer memctrl membottleneck}
TOK=$repo/models/rmt-brown-lm/tokenizer.json
export PYTHONPATH=$here PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/configs"
cp "$here"/configs/*.json "$OUT/configs/"
cp "$here/configs/rmt-brown-small.json" "$OUT/configs/rmt.json"
"$PYTHON" -c 'import json, sys
c = json.load(open(sys.argv[1])); c["mem_len"] = 16; json.dump(c, open(sys.argv[2], "w"), indent=1)' \
  "$OUT/configs/transformer-xl.json" "$OUT/configs/transformer-xl-m16.json"

train() {
  if [ "$TASK" = recall ]; then
    # shellcheck disable=SC2086 # TRAIN_ARGS is a list of arguments
    "$PYTHON" -m rmt_toolkit train --data "$DATA" --tokenizer "$TOK" --config "$OUT/configs/$1.json" \
      --out "$OUT/work/$1" --minutes "$MINUTES" $TRAIN_ARGS >"$OUT/$1.train.log" 2>&1
  else
    # shellcheck disable=SC2086
    "$PYTHON" -m rmt_toolkit train-lm --data "$DATA" --tokenizer "$TOK" --config "$OUT/configs/$1.json" \
      --out "$OUT/work/$1" --minutes "$MINUTES" --dropout 0.2 $TRAIN_ARGS >"$OUT/$1.train.log" 2>&1
  fi
}
post() {
  local a=$1 ck=$OUT/work/$1/model.pt pkg=$OUT/$1-brown-$TASK what="language model"
  [ "$TASK" = lm ] || what="recall model (the recall curriculum)"
  rm -rf "$pkg"
  {
    "$PYTHON" -m rmt_toolkit export --ckpt "$ck" --out "$pkg" --name "$a-brown-$TASK" --tokenizer "$TOK" --precisions fp32 \
      --description "$a $what at rmt-brown-lm's shape and data, trained on the Brown corpus for $MINUTES minutes beside the others on one GPU"
    "$PYTHON" -m rmt_toolkit verify --ckpt "$ck" --package "$pkg" --data "$DATA" --tokenizer "$TOK"
    "$PYTHON" -m rmt_toolkit evaluate --ckpt "$ck" --data "$DATA" --tokenizer "$TOK" --package "$pkg" \
      --lengths "${RECALL_LENGTHS:-1,4,16,64,128}" --samples "${RECALL_SAMPLES:-100}"
    "$PYTHON" -m rmt_toolkit card --package "$pkg"
  } >"$OUT/$a.post.log" 2>&1
  if [ -n "$RESULTS" ]; then
    mkdir -p "$RESULTS/$a"
    cp "$pkg/model.json" "$pkg/README.md" "$RESULTS/$a/"
    cp "$OUT/work/$a/train-log.json" "$RESULTS/$a/"
  fi
}
run_all() {  # phase function: every architecture at once; a failure is reported, the rest go on
  local fn=$1 pids=() failed=()
  for a in $ARCHS; do "$fn" "$a" & pids+=("$!"); done
  local i=0
  for a in $ARCHS; do
    wait "${pids[$i]}" || failed+=("$a")
    i=$((i + 1))
  done
  [ ${#failed[@]} -eq 0 ] || { echo "FAILED in $fn: ${failed[*]} (logs in $OUT)" >&2; return 1; }
}
[ "$PHASE" = post ] || run_all train
[ "$PHASE" = train ] || run_all post
echo "done: $OUT"
