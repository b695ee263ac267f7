#!/usr/bin/env bash
# Engine throughput of every architecture on the CPU or the GPU, at the shape of the comparison in models/README.md
# (4 layers, d=256, 8 heads, 128-token segments; models/toolkit/configs/): a random-weight package of
# each (throughput does not depend on the weights' values) made by the toolkit, then
# bench/engine-event-loop.ts on it (the engine thread, full 128-token segments through segment.onnx: the scored path).
#   bash bench/architectures.sh [OUTFILE]
#   PROVIDER=cuda NODE=<bundle>/bin/node PYTHON=python3 SESSIONS=1,8,64 bash bench/architectures.sh OUTFILE   (GPU host;
#   bench/gpu-suite.sh architectures runs this)
# Needs python3 with torch and onnx (PYTHON, default /usr/bin/python3). PROVIDER (cpu or cuda, default cpu;
# fp32 graphs either way), NODE (default node), SESSIONS (default "1,8") and
# BENCH_SECONDS (the bench's SECONDS per level, default 5; bash's own SECONDS is a clock), ARCHS (default all). Packages go to
# bench/out/arch-pkgs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PYTHON=${PYTHON:-/usr/bin/python3}
NODE=${NODE:-node}
export PROVIDER=${PROVIDER:-cpu}
OUTFILE=${1:-bench/out/architectures-$PROVIDER.txt}
pkgs=bench/out/arch-pkgs
mkdir -p "$pkgs" "$(dirname "$OUTFILE")"
export SESSIONS=${SESSIONS:-1,8}
secs=${BENCH_SECONDS:-5}
: >"$OUTFILE"
for arch in ${ARCHS:-rmt transformer-xl lamemo memtransformer memctrl membottleneck armt}; do
  dir=$pkgs name=$arch-brown-random
  if [ "$arch" = rmt ]; then
    dir=${MODELS:-models} name=rmt-brown-lm # the shipped RMT at this shape (MODELS: where it is, e.g. a GPU bundle's models/)
  elif [ ! -f "$pkgs/$name/model.json" ]; then
    PYTHONPATH=models/toolkit "$PYTHON" -m rmt_toolkit random-gpt2-small --size brown --architecture "$arch" --precisions fp32 \
      --tokenizer models/rmt-brown-lm/tokenizer.json --name "$name" --out "$pkgs/$name" >/dev/null
  fi
  echo "== $arch: MODELS_DIR=$dir MODEL=$name PROVIDER=$PROVIDER SESSIONS=$SESSIONS SECONDS=$secs node --import tsx bench/engine-event-loop.ts" | tee -a "$OUTFILE"
  MODELS_DIR=$dir MODEL=$name env SECONDS="$secs" "$NODE" --import tsx bench/engine-event-loop.ts 2>&1 | grep -E 'tok/s|ready|model' | tee -a "$OUTFILE"
done
