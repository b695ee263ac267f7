#!/usr/bin/env bash
# Builds the two shipped packages on a CUDA machine (one H100: about 40 minutes of training in all).
#   DATA=<folder written by `python -m rmt_toolkit prepare`> WORK=/opt/rmt-work bash models/toolkit/build-shipped.sh
# STEP=recall|lm|all (default all). Each training phase checkpoints as it goes (train --save-every), so a
# phase that hits a time limit can be continued with `train --resume <its model.pt>`.
#
# rmt-brown-small (recall): the curriculum 0,1,2,4,8,16 at batch 128, then, resumed from the checkpoint
# that passed 16, stage 32 at batch 64 (batch 128 x 33 segments of full BPTT does not fit in 80 GB),
# with the lr decayed over the last 35 % of that phase.
# rmt-brown-lm (language model): train-lm, kept by validation perplexity (training files only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
WORK=${WORK:-/opt/rmt-work}
DATA=${DATA:?set DATA to the folder written by: python -m rmt_toolkit prepare}
STEP=${STEP:-all}
TOK=${TOK:-$repo/models/rmt-brown-small/tokenizer.json}  # the shipped tokenizer; `tk tokenizer` re-makes it
export PYTHONPATH=$here PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
tk() { python3 -m rmt_toolkit "$@"; }
mkdir -p "$WORK"

package() {  # name ckpt precisions description eval-args...
  local name=$1 ckpt=$2 precisions=$3 desc=$4; shift 4
  local pkg=$WORK/pkg/$name
  tk export --ckpt "$ckpt" --out "$pkg" --name "$name" --tokenizer "$TOK" --precisions "$precisions" --description "$desc"
  tk verify --ckpt "$ckpt" --package "$pkg" --data "$DATA" --tokenizer "$TOK"
  tk evaluate --ckpt "$ckpt" --data "$DATA" --tokenizer "$TOK" --package "$pkg" "$@"
}

if [ "$STEP" = recall ] || [ "$STEP" = all ]; then
  tk train --data "$DATA" --tokenizer "$TOK" --config "$here/configs/rmt-brown-small.json" --out "$WORK/recall-a" \
    --stages 0,1,2,4,8,16 --batch 128 --lr 1e-3 --minutes 16
  tk train --data "$DATA" --tokenizer "$TOK" --resume "$WORK/recall-a/passed-16.pt" --out "$WORK/recall-b" \
    --stages 0,1,2,4,8,16,32 --batch 64 --lr 1e-3 --decay 0.35 --minutes 6.5
  # Which checkpoint ships: recall on fresh samples from the *training* split (no held-out leak).
  tk select "$WORK/recall-a/passed-16.pt" "$WORK/recall-b/model.pt" --data "$DATA" --tokenizer "$TOK" \
    --lengths 16,32,128 --samples 200 --link "$WORK/recall.pt"
  package rmt-brown-small "$WORK/recall.pt" fp32,fp16 \
    "Recurrent Memory Transformer (4 layers, d=256, 8 heads, 16 memory tokens, 128-token segments) trained on the Brown corpus: long-context recall of facts hidden in text"
fi

if [ "$STEP" = lm ] || [ "$STEP" = all ]; then
  tk train-lm --data "$DATA" --tokenizer "$TOK" --config "$here/configs/rmt-brown-small.json" --out "$WORK/lm" \
    --dropout 0.2 --lr 2e-3 --minutes 4.5
  # fp16 graphs are exported and verified too, but not shipped (models/ stays under 80 MB): delete them
  # and their "fp16" entry in model.json before committing.
  package rmt-brown-lm "$WORK/lm/model.pt" fp32,fp16 \
    "Recurrent Memory Transformer language model (4 layers, d=256, 8 heads, 16 memory tokens, 128-token segments) trained on the Brown corpus" \
    --samples 200
fi
echo "packages under $WORK/pkg; render the cards with: python -m rmt_toolkit card --package <pkg> --notes <notes.md>"
