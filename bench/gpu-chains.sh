#!/usr/bin/env bash
# The engine alone on the GPU with chained appends (bench/engine-chains.ts): LEVELS with one thread,
# each request sent after the one before (new-*) or while it runs, continuing its chain (cont-*); with
# OLD=<dir> the same levels from an older checkout's src/ beside them; SPLIT_LEVELS with two threads
# taking turns on the device or overlapping their runs (SPLIT_ENV: more settings, e.g. CONTINUE=1).
# Output: $OUT/chains-*.txt.
#
#   BUNDLE=/opt/rmt OUT=/tmp/x [OLD=old] bash bench/gpu-chains.sh
set -euo pipefail
BUNDLE=${BUNDLE:?set BUNDLE to the installed bundle folder}
OUT=${OUT:?set OUT}
NODE=$BUNDLE/bin/node
MODEL=${MODEL:-rmt-gpt2-small-fused}
MODELS_DIR=${MODELS_DIR:-$BUNDLE/models}
ROUNDS=${ROUNDS:-40}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s "$BUNDLE/node_modules" node_modules
chains() { # tag, dir, env...
  local tag=$1 dir=$2; shift 2
  (cd "$dir" && env "$@" PROVIDER=cuda PRECISION=fp16 MODEL=$MODEL MODELS_DIR=$MODELS_DIR WAITS=0 HANDOFF_MS=0 K=30 ROUNDS=$ROUNDS \
    "$NODE" --import tsx bench/engine-chains.ts 2>&1 | grep -v 'W:onnxruntime' | tee "$OUT/chains-$tag.txt")
}
for n in ${LEVELS:-1 8}; do
  if [ -n "${OLD:-}" ]; then
    [ -e "$OLD/node_modules" ] || ln -s "$BUNDLE/node_modules" "$OLD/node_modules"
    chains "old-n$n" "$OLD" N=$n
  fi
  chains "new-n$n" . N=$n
  chains "cont-n$n" . N=$n CONTINUE=1
done
for n in ${SPLIT_LEVELS:-8 64}; do
  r=$(( ROUNDS * 8 / (n > 8 ? n : 8) )); r=$(( r < 5 ? 5 : r ))
  chains "t2-turns-n$n" . N=$n THREADS=2 TURNS=1 ROUNDS=$r ${SPLIT_ENV:-}
  chains "t2-overlap-n$n" . N=$n THREADS=2 TURNS=0 ROUNDS=$r ${SPLIT_ENV:-}
  chains "t1-n$n" . N=$n ROUNDS=$r ${SPLIT_ENV:-}
done
# The batch limit beside them (median run and sustained rate), batch sizes of the levels above.
[ -n "${LIMIT_BATCHES:-1,4,8,32,64}" ] && MODEL_DIR=$MODELS_DIR/$MODEL PRECISIONS=fp16 PROVIDER=cuda BATCHES=${LIMIT_BATCHES:-1,4,8,32,64} \
  "$NODE" --import tsx bench/engine-limit.ts 2>&1 | grep -v 'W:onnxruntime' | tee "$OUT/limit.txt"
# A V8 CPU profile of each thread at 8 sessions (summarise with bench/cpu-profile.ts).
if [ -n "${PROF:-}" ]; then
  (env N=8 PROVIDER=cuda PRECISION=fp16 MODEL=$MODEL MODELS_DIR=$MODELS_DIR WAITS=0 HANDOFF_MS=0 K=30 ROUNDS=$ROUNDS \
    "$NODE" --cpu-prof --cpu-prof-interval 100 --cpu-prof-dir "$OUT/prof" --import tsx bench/engine-chains.ts 2>&1 | grep -v 'W:onnxruntime' | tee "$OUT/chains-prof-n8.txt")
fi
