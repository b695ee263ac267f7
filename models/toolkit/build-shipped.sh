#!/usr/bin/env bash
# Builds the shipped package (tokenizer, training, export, verify, evaluate) on a CUDA machine.
#   DATA=<prepared data> WORK=/opt/rmt-work MINUTES=6 bash models/toolkit/build-shipped.sh
# VARIANTS="args1;args2;..." trains one model per set of extra `train` arguments, side by side on the
# one GPU (each is launch-bound), and ships the best by recall on the training split.
# RESUME=<checkpoint> continues training from a checkpoint instead of starting fresh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/opt/rmt-work}
DATA=${DATA:?set DATA to the folder written by: python -m rmt_toolkit prepare}
NAME=${NAME:-rmt-brown-small}
MINUTES=${MINUTES:-6}
STAGES=${STAGES:-1,2,4,8,16}
PKG=${PKG:-$WORK/$NAME}
TOK=$WORK/tokenizer/tokenizer.json
export PYTHONPATH=$here PYTHONUNBUFFERED=1
tk() { python3 -m rmt_toolkit "$@"; }
mkdir -p "$WORK/tokenizer" "$PKG"
[ -f "$TOK" ] || tk tokenizer --data "$DATA" --vocab-size 4096 --out "$TOK"
IFS=';' read -ra VARS <<< "${VARIANTS:-}"
[ ${#VARS[@]} -gt 0 ] || VARS=("")
ckpts=()
for i in "${!VARS[@]}"; do
  out="$WORK/ckpt-$i"; mkdir -p "$out"; ckpts+=("$out/model.pt")
  # shellcheck disable=SC2086
  tk train --data "$DATA" --tokenizer "$TOK" --out "$out" --minutes "$MINUTES" --stages "$STAGES" \
    ${RESUME:+--resume "$RESUME"} ${VARS[$i]} > "$out/train.out" 2>&1 &
done
wait
for i in "${!VARS[@]}"; do echo "== variant $i: ${VARS[$i]}"; grep -E '"advance"' "$WORK/ckpt-$i/train.out" || true; grep '"step"' "$WORK/ckpt-$i/train.out" | tail -2; done
tk select "${ckpts[@]}" --data "$DATA" --tokenizer "$TOK" --link "$WORK/model.pt"
tk export --ckpt "$WORK/model.pt" --out "$PKG" --name "$NAME" --tokenizer "$TOK" \
  --description "Recurrent Memory Transformer (4 layers, d=256, 16 memory tokens, 128-token segments) trained on the Brown corpus: language model and long-context recall of facts hidden in text"
tk verify --ckpt "$WORK/model.pt" --package "$PKG" --data "$DATA" --tokenizer "$TOK"
tk evaluate --ckpt "$WORK/model.pt" --data "$DATA" --tokenizer "$TOK" --package "$PKG"
