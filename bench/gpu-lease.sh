#!/usr/bin/env bash
# One GPU lease's steps, each run as its own device call from the checkout's root (the calls of one
# lease share /opt and /tmp; results under $OUT, one .tgz per step). The bundle's parts
# (npm run bundle:gpu) are carried into /opt/b one per call beforehand (bench/results/gpu-16/commands.txt).
#   bash bench/gpu-lease.sh <step> [...]
# Steps:
#   recall-start   the recall curriculum for RMT and Transformer-XL side by side (compare-architectures.sh
#                  --task recall --phase train), started in the background: RECALL_MINUTES (5); data from
#                  var/brown-data (carried)
#   recall-post    waits for it, then export / verify / evaluate (recall at 1,4,16,64,128 segments) / card
#   install        the bundle into /opt/rmt; the fused GPT-2-small package in fp16 twice from the same seed:
#                  segment_state at the write rows only (the default) and pruned; 4-step graphs for both
#   limit          bench/engine-limit.ts on both packages, batches 1, 8, 64, 256, one- and 4-segment graphs
#   compiled       bench/reference-compiled.py (gpu-suite.sh compiled) on the same weights
#   service        the service on the write-rows package: 1, 8, 64, 256 sessions and one 1M-token document
#   architectures  every architecture's engine on the GPU (bench/architectures.sh)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu PATH=/opt/rmt/bin:$PATH
export PYTHONPATH=$PWD/models/toolkit PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
R=/opt/rmt FUSED=rmt-gpt2-small-fused PRUNED=rmt-gpt2-small-fused-pruned W=/tmp/w
S="BUNDLE=$R MODELS=$R/models"
[ -e node_modules ] || ln -s $R/node_modules node_modules  # the bundle's (tsx, onnxruntime-node with CUDA)
pack() { tar -C "$OUT" -czf "$OUT/$1.tgz" "$1" && rm -rf "${OUT:?}/$1"; }

for step in "$@"; do
  mkdir -p "$OUT/$step"
  case $step in
  recall-start)
    mkdir -p $W && cp -r var/brown-data $W/data
    ARCHS="rmt transformer-xl" PYTHON=python3 setsid nohup bash models/toolkit/compare-architectures.sh --task recall \
      --data $W/data --out $W/recall --minutes "${RECALL_MINUTES:-5}" --phase train --train-args "--stages 0,1,2,4,8,16" \
      >$W/recall-train.log 2>&1 </dev/null &
    echo "recall training started (pid $!)" ;;
  recall-post)
    while pgrep -f "rmt_toolkit train " >/dev/null; do sleep 5; done
    ls $W/recall/work/*/model.pt || { echo "no checkpoints: the training did not run (log below)"; tail -5 $W/recall-train.log $W/recall/*.train.log; }
    ARCHS="rmt transformer-xl" PYTHON=python3 bash models/toolkit/compare-architectures.sh --task recall --data $W/data \
      --out $W/recall --minutes "${RECALL_MINUTES:-5}" --phase post --results "$OUT/$step/results" 2>&1 | tail -3
    cp $W/recall/*.log "$OUT/$step/"
    grep -h "segments" $W/recall/*.post.log | head -20 ;;
  install)
    bash /opt/b/rmt-serve-gpu-install.sh $R 2>&1 | tail -2
    for v in write-rows:$FUSED pruned:$PRUNED; do
      python3 -m rmt_toolkit random-gpt2-small --attention fused --state-graph "${v%%:*}" --precisions fp16 --name "${v#*:}" \
        --out "$R/models/${v#*:}" --tokenizer $R/models/rmt-brown-small/tokenizer.json 2>&1 | grep -v Warning | tail -2
      python3 -m rmt_toolkit steps-graph --package "$R/models/${v#*:}" --steps 4 --precisions fp16 2>&1 | tail -1
    done 2>&1 | tee "$OUT/$step/install.txt" ;;
  limit)
    for p in $FUSED $PRUNED; do
      MODEL_DIR=$R/models/$p PRECISIONS=fp16 PROVIDER=cuda GRAPHS=state,steps BATCHES=1,8,64,256 SECONDS=${LIMIT_SECONDS:-2} OUT_JSON=$OUT/$step/limit-$p.json \
        node --import tsx bench/engine-limit.ts 2>&1 | grep -v 'W:onnxruntime' | tee "$OUT/$step/limit-$p.txt" | grep -E '^fp16'
    done ;;
  compiled)
    env $S GPT2=$FUSED OUT=$OUT/$step bash bench/gpu-suite.sh compiled 2>&1 | grep -E 'batch|peak|diff|check|first|Error' ;;
  service)
    env $S TEXT_FILE=$PWD/bench/out/brown.txt LEVEL_TIMEOUT_S=150 WORKER_CONCURRENCY=1024 SESSIONS=1,8,64,256 \
      TOTAL_TOKENS=${TOTAL_TOKENS:-1000000,4000000,8000000,8000000} GEN= ONE_DOC_TOKENS=1000000 OUT=$OUT/$step \
      bash bench/gpu-suite.sh service 2>&1 | grep -E '^(N=|one|  )' | tail -12 ;;
  architectures)
    env $S OUT=$OUT/$step bash bench/gpu-suite.sh architectures 2>&1 | grep -E 'tok/s' ;;
  *) echo "unknown step $step (see the header of $0)" >&2; exit 2 ;;
  esac
  pack "$step"
done
