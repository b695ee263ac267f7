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
#                  (INSTALL_VARIANTS="write-rows:rmt-gpt2-small-fused" makes only the first; INSTALL_STEPS=0 no 4-step graphs)
#   limit          bench/engine-limit.ts on both packages, batches 1, 8, 64, 256, one- and 4-segment graphs
#   bound          bench/engine-limit.ts on the write-rows package through onnxruntime-node and through the
#                  IO-binding addon (RUNNER=bound: plain, CUDA graphs, CUDA graphs with static shapes); carry
#                  build/native (npm run native:build here)
#   attention      engine-limit.ts on the write-rows package with onnxruntime's attention kernel (cuDNN flash on Hopper)
#                  and with ORT_ENABLE_CUDNN_FLASH_ATTENTION=0 (its own flash kernel), the kernel each picks
#   profile        onnxruntime's profile of the fused fp16 segment_state run at PROFILE_BATCHES (64 256), with the
#                  attention kernel it picks (ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO)
#   compiled       bench/reference-compiled.py (gpu-suite.sh compiled) on the same weights
#   service        the service on the write-rows package: 1, 8, 64, 256 sessions and one 1M-token document
#   architectures  every architecture's engine on the GPU (bench/architectures.sh)
#   long-recall-start  issue 28's fine-tunes from the shipped rmt-brown-small, all at once in the background
#                  (models/toolkit/build-long-recall.sh base, then LR_VARIANTS "a b c d": RMT binding 1-5 facts,
#                  RMT qa2, ARMT binding, ARMT qa2): LR_MINUTES (10) each at LR_BATCH (32) rows; data from
#                  var/brown-data, var/rmt-brown-small.pt (carried)
#   long-recall-wait   waits for them (at most WAIT_S, 540) and prints their progress
#   long-recall-pkg    select, export, verify, evaluate each variant (?-pkg); logs and eval tables come back
#   long-recall-fetch  the packages named in LR_FETCH as $OUT/long-recall-pkgs.tar.xz.partNN (15 MB parts)
#   long-recall-service  bench/recall-service.ts on the GPU through the service, LR_SERVICE variants (a c):
#                  binding at 1,024 segments (LR_BIND_FACTS 3,5), qa2 at 8,192 (LR_QA2_FACTS 2), LR_SAMPLES
#                  (100) each; held-out text from bench/out/heldout.txt (carried: bench/brown-text.ts
#                  bench/out/heldout.txt --heldout)
#
#   recall-far-start   bench/recall-service.ts at 78,125 segments (10 M tokens) in the background: FAR_MODEL, FAR_DISTANCES
#   recall-far-wait    waits for it and brings back far.json / far.txt
#
# The next lease (issues 26 and 28), one device call per line, checkout root, fired back to back (a machine
# goes back after 30 s idle). Device time is 30 minutes a session and failed starts cost 1.5 minutes each,
# so the order is by priority; the times are estimates from GPU runs 16 and 17.
#   1. (about 12 min with the start) issue 26 in one lease, the GPU otherwise idle:
#      cp .bundle/out/<part05, SHA256SUMS, install.sh> /opt/b     # carry those and bench/out (heldout.txt, brown.txt)
#      (one call per other bundle part into /opt/b)
#      INSTALL_VARIANTS="write-rows:rmt-gpt2-small-fused" bash bench/gpu-lease.sh install attention
#      bash bench/gpu-lease.sh compiled service
#   2. (about 7 min) issue 28's 10 M tokens: bash bench/gpu-lease.sh recall-far-start recall-far-wait
#   3. (about 11 min, only with that much left) issue 28's fine-tunes, then their packages and service cells:
#      LR_VARIANTS="b e" LR_BATCH=48 FT_ARGS_b="--advance-acc 0.85" LR_MINUTES=7 bash bench/gpu-lease.sh long-recall-start  # carry var
#      LR_VARIANTS="b e" SELECT_SAMPLES=100 EVAL_SAMPLES=100 FACT_SAMPLES=100 bash bench/gpu-lease.sh long-recall-wait long-recall-pkg
#      LR_SERVICE="b e" bash bench/gpu-lease.sh long-recall-service
#   With the whole 30 minutes, 3's first call goes first (training while the parts upload) and 2 runs beside the
#   training (accuracy only); 1 waits until both have finished.
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
    for v in ${INSTALL_VARIANTS:-write-rows:$FUSED pruned:$PRUNED}; do
      python3 -m rmt_toolkit random-gpt2-small --attention fused --state-graph "${v%%:*}" --precisions fp16 --name "${v#*:}" \
        --out "$R/models/${v#*:}" --tokenizer $R/models/rmt-brown-small/tokenizer.json 2>&1 | grep -v Warning | tail -2
      [ "${INSTALL_STEPS:-1}" = 0 ] || python3 -m rmt_toolkit steps-graph --package "$R/models/${v#*:}" --steps 4 --precisions fp16 2>&1 | tail -1
    done 2>&1 | tee "$OUT/$step/install.txt" ;;
  limit)
    for p in $FUSED $PRUNED; do
      MODEL_DIR=$R/models/$p PRECISIONS=fp16 PROVIDER=cuda GRAPHS=state,steps BATCHES=1,8,64,256 SECONDS=${LIMIT_SECONDS:-2} OUT_JSON=$OUT/$step/limit-$p.json \
        node --import tsx bench/engine-limit.ts 2>&1 | grep -v 'W:onnxruntime' | tee "$OUT/$step/limit-$p.txt" | grep -E '^fp16'
    done ;;
  bound)  # the IO-binding addon (carried: build/native from npm run native:build) against onnxruntime-node, same call
    for v in "ort" "bound" "bound CUDA_GRAPH=1" "bound CUDA_GRAPH=1 FREE_DIMS=1"; do
      read -r runner extra <<<"$v"
      env RUNNER=$runner $extra MODEL_DIR=$R/models/$FUSED PRECISIONS=fp16 PROVIDER=cuda GRAPHS=state BATCHES=${BOUND_BATCHES:-1,8,64,256} \
        SECONDS=${LIMIT_SECONDS:-2} OUT_JSON="$OUT/$step/limit-$runner${extra:+-${extra// /-}}.json" node --import tsx bench/engine-limit.ts 2>&1 \
        | grep -v 'W:onnxruntime' | tee "$OUT/$step/limit-$runner${extra:+-${extra// /-}}.txt" | grep -E '^fp16 batch|rror' | sed "s/^/$v: /"
    done ;;
  attention)  # the write-rows package with onnxruntime's attention kernel choice (cuDNN's flash on Hopper) and without cuDNN's
    for v in ${ATTN_VARIANTS:-default ORT_ENABLE_CUDNN_FLASH_ATTENTION=0}; do
      env $([ $v = default ] || echo $v) ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 MODEL_DIR=$R/models/$FUSED PRECISIONS=fp16 PROVIDER=cuda GRAPHS=state \
        BATCHES=${BOUND_BATCHES:-1,8,64,256} SECONDS=${LIMIT_SECONDS:-2} OUT_JSON="$OUT/$step/limit-$v.json" node --import tsx bench/engine-limit.ts 2>&1 \
        | grep -v 'W:onnxruntime' > "$OUT/$step/limit-$v.txt"
      grep -E '^fp16 batch|rror' "$OUT/$step/limit-$v.txt" | sed "s/^/$v: /"
      grep -oE 'SdpaKernel=[A-Z_]+' "$OUT/$step/limit-$v.txt" | sort | uniq -c
    done ;;
  profile)  # onnxruntime's profile of the write-rows package's fp16 segment_state run, and the attention kernel it picks
    for b in ${PROFILE_BATCHES:-64 256}; do
      CUDA_LAUNCH_BLOCKING=1 ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 MODEL_DIR=$R/models/$FUSED PRECISIONS=fp16 PROVIDER=cuda GRAPHS=state PROFILE_BATCH=$b \
        PROFILE_ONLY=1 PROFILE_DIR="$OUT/$step/profiles-$b" OUT_JSON="$OUT/$step/profile-$b.json" node --import tsx bench/engine-limit.ts 2>&1 \
        | grep -v 'W:onnxruntime' > "$OUT/$step/profile-$b.txt"
      grep -E 'profile|^  [A-Z]' "$OUT/$step/profile-$b.txt" | head -14
      grep -iE 'flash|efficient|cudnn|unfused|kernel' "$OUT/$step/profile-$b.txt" | sort | uniq -c | head -8  # the attention kernel picked
    done ;;
  compiled)
    env $S GPT2=$FUSED COMPILED_DYNAMIC=1 OUT=$OUT/$step bash bench/gpu-suite.sh compiled 2>&1 | grep -E 'batch|peak|diff|check|first|Error' ;;
  service)
    env $S TEXT_FILE=$PWD/bench/out/brown.txt LEVEL_TIMEOUT_S=150 WORKER_CONCURRENCY=1024 SESSIONS=1,8,64,256 \
      TOTAL_TOKENS=${TOTAL_TOKENS:-1000000,4000000,8000000,8000000} GEN= ONE_DOC_TOKENS=1000000 OUT=$OUT/$step \
      bash bench/gpu-suite.sh service 2>&1 | grep -E '^(N=|one|  )' | tail -12 ;;
  architectures)
    env $S OUT=$OUT/$step bash bench/gpu-suite.sh architectures 2>&1 | grep -E 'tok/s' ;;
  long-recall-start)
    mkdir -p $W && rm -rf $W/data && cp -r var/brown-data $W/data
    export DATA=$W/data WORK=$W/lr MINUTES=${LR_MINUTES:-10} BATCH=${LR_BATCH:-32}
    # var/rmt-brown-small.pt (carried; `python -m rmt_toolkit convert --package models/rmt-brown-small`), else imported here
    BASE=$([ -f var/rmt-brown-small.pt ] && echo "$PWD/var/rmt-brown-small.pt") STEP=base bash models/toolkit/build-long-recall.sh 2>&1 | tail -1
    [ -f var/rmt-brown-recall5.pt ] && cp var/rmt-brown-recall5.pt $W/lr/base-recall5.pt  # variant e's start (convert --package)
    for v in ${LR_VARIANTS:-a b c d}; do
      STEP=$v-ft setsid nohup bash models/toolkit/build-long-recall.sh >$W/lr-$v-ft.log 2>&1 </dev/null &
    done
    sleep 60; tail -n 1 $W/lr-*-ft.log | cut -c1-300 ;;
  long-recall-wait)
    end=$((SECONDS + ${WAIT_S:-540}))
    while pgrep -f "rmt_toolkit train " >/dev/null && [ $SECONDS -lt $end ]; do sleep 10; done
    for v in ${LR_VARIANTS:-a b c d}; do echo "== $v"; grep -h '"advance"' $W/lr-$v-ft.log; tail -n 1 $W/lr-$v-ft.log | cut -c1-300; done
    pgrep -f "rmt_toolkit train " >/dev/null && echo "still training" ;;
  long-recall-pkg)
    export DATA=$W/data WORK=$W/lr EVAL_SAMPLES=${EVAL_SAMPLES:-200}
    for v in ${LR_VARIANTS:-a b c d}; do STEP=$v-pkg bash models/toolkit/build-long-recall.sh >$W/lr-$v-pkg.log 2>&1 & done; wait
    for v in ${LR_VARIANTS:-a b c d}; do echo "== $v"; grep -hE '"best"|verify OK|FAIL|"carried"|Error' $W/lr-$v-pkg.log | cut -c1-400; done
    cp $W/lr-*.log "$OUT/$step/"
    for d in $W/lr/*/; do for f in "$d"eval-facts-*.json "$d"ft/train-log.json; do
      [ -f "$f" ] && cp "$f" "$OUT/$step/$(basename "$d")-$(basename "$f")"; done; done ;;
  long-recall-fetch)  # LR_FETCH: package names (default the binding and qa2 RMTs); 15 MB parts, cat | tar -xJ
    (cd $W/lr/pkg && tar -cf - ${LR_FETCH:-rmt-brown-recall5 rmt-brown-qa2}) | xz -T0 -6 | split -b 15000000 -d - "$OUT/long-recall-pkgs.tar.xz.part" ;;
  long-recall-service)
    # LR_SERVICE: variants (a, c binding at 1,024 segments with LR_BIND_FACTS 3,5; b, d qa2 at 8,192 with LR_QA2_FACTS 2)
    for v in ${LR_SERVICE:-a c}; do
      case $v in a) m="rmt-brown-recall5 1024 ${LR_BIND_FACTS:-3,5}" ;; c) m="armt-brown-recall5 1024 ${LR_BIND_FACTS:-3,5}" ;;
                 b) m="rmt-brown-qa2 8192 ${LR_QA2_FACTS:-2}" ;; d) m="armt-brown-qa2 8192 ${LR_QA2_FACTS:-2}" ;;
                 e) m="rmt-brown-recall5-long 1024 ${LR_BIND_FACTS:-3,5};rmt-brown-recall5-long 8192 1,3" ;; esac
      IFS=';' read -ra runs <<<"$m"
      for r in "${runs[@]}"; do
        read -r model dist facts <<<"$r"
        MODELS_DIR=$W/lr/pkg MODEL=$model PROVIDER=cuda DISTANCES=$dist FACTS=$facts SAMPLES=${LR_SAMPLES:-100} CONCURRENCY=${LR_CONCURRENCY:-64} \
          HELDOUT_TEXT=$PWD/bench/out/heldout.txt OUT_JSON=$OUT/$step/$model-$dist.json node --import tsx bench/recall-service.ts 2>&1 \
          | grep -v 'W:onnxruntime' | tee "$OUT/$step/$model-$dist.txt" | grep -E '^(recall|D=|reset)|tok/s|Error'
      done
    done ;;
  recall-far-start)  # bench/recall-service.ts at FAR_DISTANCES (78125: 10 M tokens) in the background (accuracy only, so
    # it may share the GPU with training); FAR_MODEL (rmt-brown-recall5) from FAR_MODELS_DIR (the bundle's models)
    mkdir -p $W && rm -f $W/far.json $W/far.txt
    MODELS_DIR=${FAR_MODELS_DIR:-$R/models} MODEL=${FAR_MODEL:-rmt-brown-recall5} PROVIDER=cuda DISTANCES=${FAR_DISTANCES:-78125} \
      FACTS=${FAR_FACTS:-1} SAMPLES=${FAR_SAMPLES:-100} CONCURRENCY=${FAR_CONCURRENCY:-100} HELDOUT_TEXT=$PWD/bench/out/heldout.txt \
      OUT_JSON=$W/far.json setsid nohup node --import tsx bench/recall-service.ts >$W/far.txt 2>&1 </dev/null &
    sleep 20; grep -v 'W:onnxruntime' $W/far.txt | tail -3 ;;
  recall-far-wait)  # waits for recall-far-start's run (at most WAIT_S, 540) and brings back its results
    end=$((SECONDS + ${WAIT_S:-540}))
    while pgrep -f "bench/recall-service.ts" >/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    grep -v 'W:onnxruntime' $W/far.txt > "$OUT/$step/far.txt"; cp $W/far.json "$OUT/$step/" 2>/dev/null
    grep -E '^(recall|D=|reset)|tok/s|Error' "$OUT/$step/far.txt"
    pgrep -f "bench/recall-service.ts" >/dev/null && echo "still running" ;;
  *) echo "unknown step $step (see the header of $0)" >&2; exit 2 ;;
  esac
  pack "$step"
done
