#!/usr/bin/env bash
# Builds the shipped package (tokenizer, training, export, verify, evaluate) on a CUDA machine.
#   DATA=<prepared data> WORK=/opt/rmt-work MINUTES=6 bash models/toolkit/build-shipped.sh
# RESUME=<checkpoint> continues training from a checkpoint instead of starting fresh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/opt/rmt-work}
DATA=${DATA:?set DATA to the folder written by: python -m rmt_toolkit prepare}
NAME=${NAME:-rmt-brown-small}
MINUTES=${MINUTES:-6}
STAGES=${STAGES:-1,2,4,8,16}
PKG=${PKG:-$WORK/$NAME}
export PYTHONPATH=$here PYTHONUNBUFFERED=1
tk() { python3 -m rmt_toolkit "$@"; }
mkdir -p "$WORK/tokenizer" "$WORK/ckpt" "$PKG"
[ -f "$WORK/tokenizer/tokenizer.json" ] || tk tokenizer --data "$DATA" --vocab-size 4096 --out "$WORK/tokenizer/tokenizer.json"
tk train --data "$DATA" --tokenizer "$WORK/tokenizer/tokenizer.json" --out "$WORK/ckpt" --minutes "$MINUTES" \
  --stages "$STAGES" ${RESUME:+--resume "$RESUME"} ${TRAIN_ARGS:-}
tk export --ckpt "$WORK/ckpt/model.pt" --out "$PKG" --name "$NAME" --tokenizer "$WORK/tokenizer/tokenizer.json" \
  --description "Recurrent Memory Transformer (4 layers, d=256, 16 memory tokens, 128-token segments) trained on the Brown corpus: language model and long-context recall of facts hidden in text"
tk verify --ckpt "$WORK/ckpt/model.pt" --package "$PKG" --data "$DATA" --tokenizer "$WORK/tokenizer/tokenizer.json"
tk evaluate --ckpt "$WORK/ckpt/model.pt" --data "$DATA" --tokenizer "$WORK/tokenizer/tokenizer.json" --package "$PKG"
