#!/usr/bin/env bash
# Issue 28 on one 80 GB H100, one STEP per device call (each under 9 minutes; the training steps run 8
# and checkpoint every minute, and the next step resumes from what the last one saved):
#   DATA=<prepare's folder> WORK=<scratch> STEP=<step> bash models/toolkit/build-long-recall.sh
# (a) binding: the recall task with 1..5 facts per memory sample (the shipped model saw 1..3), goal
#     recall >= 95 % with 3-5 facts at 1,024 segments. No shipped checkpoint (.pt) is in the repo or the
#     package (its weights are ONNX only), so a1 trains from scratch unless RESUME=<a recall model.pt>.
#     Stage 0 holds at most 3 recall facts with their questions in a 128-token segment (check_tasks.py),
#     so --ic-max-facts stays 3; the 4- and 5-fact samples come from the memory stages.
#     Steps: a1 a2 (stages to 16, batch 128) a3 (to 32, batch 64: 128 x 33 segments does not fit) a4
#     (to 64, batch 32, lr decayed) a-pkg (select, export, verify, evaluate by fact count, card).
# (b) qa2 (two supporting facts, --task qa2): the same curriculum from scratch, 1..2 holders (a pickup
#     and a move each, plus distractor moves); goal >= 80 % at 1M tokens (8,192 segments), the reset
#     ablation near chance (1/8). Steps: b1 b2 b3 b4 b-pkg; then the service bench at 1M tokens:
#     MODELS_DIR=$WORK/pkg MODEL=rmt-brown-qa2 PROVIDER=cuda node --import tsx bench/recall-service.ts \
#       --distances 0,1024,8192 --facts 1,2 --samples 100
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
WORK=${WORK:-/opt/rmt-work}
DATA=${DATA:?set DATA to the folder written by: python -m rmt_toolkit prepare}
STEP=${STEP:?set STEP to base, a-ft, b-ft, a1..a4, a-pkg, b1..b4 or b-pkg}
TOK=${TOK:-$repo/models/rmt-brown-small/tokenizer.json}
CFG=$here/configs/rmt-brown-small.json
export PYTHONPATH=$here PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
tk() { python3 -m rmt_toolkit "$@"; }
mkdir -p "$WORK"
A=$WORK/long-recall Q=$WORK/qa2
# The last checkpoint of a directory's run (train saves model.pt every --save-every and at the end).
last() { if [ -f "$1/model.pt" ]; then echo "--resume $1/model.pt"; fi; }

package() {  # name ckpt description
  local pkg=$WORK/pkg/$1
  tk export --ckpt "$2" --out "$pkg" --name "$1" --tokenizer "$TOK" --precisions fp32 --description "$3"
  tk verify --ckpt "$2" --package "$pkg" --data "$DATA" --tokenizer "$TOK" --skip-fp16
}

ft() {  # out-dir extra-args...: the curriculum to 32 segments again, from the shipped model
  local out=$1; shift
  tk train --data "$DATA" --tokenizer "$TOK" --resume "$WORK/base.pt" --restart-curriculum --out "$out" \
    --stages 0,1,2,4,8,16,32 --batch "${BATCH:-48}" --lr 5e-4 --decay 0.3 --minutes "${MINUTES:-10}" "$@"
}

case $STEP in
base)  # BASE: an already imported checkpoint (where the package's weights do not travel)
  if [ -n "${BASE:-}" ]; then cp "$BASE" "$WORK/base.pt"; else tk convert --package "$repo/models/rmt-brown-small" --out "$WORK/base.pt"; fi ;;
a-ft) ft "$A/ft" --train-max-facts 5 --ic-max-facts 3 ;;
b-ft) ft "$Q/ft" --task qa2 ;;
a1)  # from scratch (or RESUME), facts 1..5 in the memory stages
  tk train --data "$DATA" --tokenizer "$TOK" --config "$CFG" --out "$A/s16" ${RESUME:+--resume "$RESUME" --restart-curriculum} \
    --stages 0,1,2,4,8,16 --batch 128 --train-max-facts 5 --ic-max-facts 3 --minutes 8 ;;
a2)  # continues the curriculum where a1 stopped (its reached_stage)
  tk train --data "$DATA" --tokenizer "$TOK" $(last "$A/s16") --out "$A/s16" \
    --stages 0,1,2,4,8,16 --batch 128 --train-max-facts 5 --ic-max-facts 3 --minutes 8 ;;
a3)
  ck=$A/s16/passed-16.pt; [ -f "$ck" ] || ck=$A/s16/model.pt
  tk train --data "$DATA" --tokenizer "$TOK" --resume "$ck" --out "$A/s32" \
    --stages 0,1,2,4,8,16,32 --batch 64 --train-max-facts 5 --ic-max-facts 3 --minutes 8 ;;
a4)
  ck=$A/s32/passed-32.pt; [ -f "$ck" ] || ck=$A/s32/model.pt
  tk train --data "$DATA" --tokenizer "$TOK" --resume "$ck" --out "$A/s64" \
    --stages 0,1,2,4,8,16,32,64 --batch 32 --train-max-facts 5 --ic-max-facts 3 --decay 0.35 --minutes 8 ;;
a-pkg)
  tk select $(ls "$A"/s32/passed-32.pt "$A"/s64/*.pt "$A"/ft/*.pt 2>/dev/null) --data "$DATA" --tokenizer "$TOK" \
    --lengths 32,128 --samples 200 --link "$A/best.pt"
  package rmt-brown-recall5 "$A/best.pt" "Recurrent Memory Transformer (4 layers, d=256, 16 memory tokens, 128-token segments) trained on the Brown corpus: recall of up to 5 facts hidden in text"
  tk evaluate --ckpt "$A/best.pt" --data "$DATA" --tokenizer "$TOK" --package "$WORK/pkg/rmt-brown-recall5" \
    --lengths 1,4,16,64,256,1024 --samples "${EVAL_SAMPLES:-500}"
  for k in 1 3 4 5; do  # recall by number of facts (for the card's notes; not written to model.json)
    tk evaluate --ckpt "$A/best.pt" --data "$DATA" --tokenizer "$TOK" --facts $k --lengths 64,1024 --samples 200 \
      --max-docs 1 > "$A/eval-facts-$k.json"
  done ;;
b1)
  tk train --task qa2 --data "$DATA" --tokenizer "$TOK" --config "$CFG" --out "$Q/s16" \
    --stages 0,1,2,4,8,16 --batch 128 --minutes 8 ;;
b2)
  tk train --data "$DATA" --tokenizer "$TOK" $(last "$Q/s16") --out "$Q/s16" --stages 0,1,2,4,8,16 --batch 128 --minutes 8 ;;
b3)
  ck=$Q/s16/passed-16.pt; [ -f "$ck" ] || ck=$Q/s16/model.pt
  tk train --data "$DATA" --tokenizer "$TOK" --resume "$ck" --out "$Q/s32" --stages 0,1,2,4,8,16,32 --batch 64 --minutes 8 ;;
b4)
  ck=$Q/s32/passed-32.pt; [ -f "$ck" ] || ck=$Q/s32/model.pt
  tk train --data "$DATA" --tokenizer "$TOK" --resume "$ck" --out "$Q/s64" --stages 0,1,2,4,8,16,32,64 --batch 32 \
    --decay 0.35 --minutes 8 ;;
b-pkg)
  tk select $(ls "$Q"/s32/passed-32.pt "$Q"/s64/*.pt "$Q"/ft/*.pt 2>/dev/null) --data "$DATA" --tokenizer "$TOK" \
    --lengths 32,128 --samples 200 --link "$Q/best.pt"
  package rmt-brown-qa2 "$Q/best.pt" "Recurrent Memory Transformer (4 layers, d=256, 16 memory tokens, 128-token segments) trained on the Brown corpus: two supporting facts (who picked up an object, where they went), bAbI qa2 style"
  tk evaluate --ckpt "$Q/best.pt" --data "$DATA" --tokenizer "$TOK" --package "$WORK/pkg/rmt-brown-qa2" \
    --lengths 1,4,16,64,256,1024 --samples "${EVAL_SAMPLES:-500}" ;;
*) echo "unknown STEP $STEP" >&2; exit 2 ;;
esac
echo "step $STEP done; cards: python -m rmt_toolkit card --package <pkg> --notes <notes.md>"
