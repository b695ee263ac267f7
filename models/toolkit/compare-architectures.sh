#!/usr/bin/env bash
# The architecture comparison of models/README.md: every architecture trained at once on ONE GPU for
# the same wall-clock budget (train-lm, same data, tokenizer, shape, dropout and learning rate), then
# exported, verified, evaluated on the held-out Brown files and carded, all in parallel.
#   bash models/toolkit/compare-architectures.sh --data <prepared Brown dir> --out <folder> [--minutes 3.5]
#     [--phase train|post|all] [--results DIR]
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
DATA="" OUT="" MINUTES=3.5 PHASE=all RESULTS=""
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2 ;; --out) OUT=$2 ;; --minutes) MINUTES=$2 ;; --phase) PHASE=$2 ;; --results) RESULTS=$2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$DATA" ] && [ -n "$OUT" ] || { echo "usage: $0 --data <prepared Brown dir> --out <folder> [--minutes 3.5]" >&2; exit 2; }
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
  "$PYTHON" -m rmt_toolkit train-lm --data "$DATA" --tokenizer "$TOK" --config "$OUT/configs/$1.json" \
    --out "$OUT/work/$1" --minutes "$MINUTES" --dropout 0.2 >"$OUT/$1.train.log" 2>&1
}
post() {
  local a=$1 ck=$OUT/work/$1/model.pt pkg=$OUT/$1-brown-lm
  rm -rf "$pkg"
  {
    "$PYTHON" -m rmt_toolkit export --ckpt "$ck" --out "$pkg" --name "$a-brown-lm" --tokenizer "$TOK" --precisions fp32 \
      --description "$a language model (rmt-brown-lm's shape and data) trained on the Brown corpus for $MINUTES minutes beside the others on one GPU"
    "$PYTHON" -m rmt_toolkit verify --ckpt "$ck" --package "$pkg" --data "$DATA" --tokenizer "$TOK"
    "$PYTHON" -m rmt_toolkit evaluate --ckpt "$ck" --data "$DATA" --tokenizer "$TOK" --package "$pkg" --samples 50
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
