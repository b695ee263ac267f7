#!/usr/bin/env bash
# The service against the engine limit read just before and just after each level: the batch-8 limit
# moves by +-5 % between readings minutes apart on the H200 (BENCHMARKS.md, run 12), so each level is
# judged against its neighbours. Limit, then ROUNDS times: service level(s), limit. GPU bundle installed
# (rmt-serve-gpu-install.sh), the fused GPT-2-small package made (gpu-suite.sh prepare, or the toolkit).
#
#   BUNDLE=/opt/rmt OUT=/tmp/p TEXT_FILE=$PWD/bench/out/brown.txt bash bench/gpu-paired.sh
#
# Environment: ROUNDS (3), SESSIONS (8) and TOTAL_TOKENS (8000000) of each service run, LIMIT_BATCHES (8),
# LIMIT_SECONDS (3 per point), LIMIT_GRAPHS ("state,steps": each reading times the one-segment graph and,
# on the same batch, the package's segment_state_steps graph; "state" for a package without it); the
# service's own settings (RMT_*) pass through to gpu-suite.sh.
# Output: $OUT/limit-0..ROUNDS.txt, $OUT/svc-1..ROUNDS/service-*.txt, and the levels beside their limits in $OUT/summary.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUNDLE=${BUNDLE:?set BUNDLE to the installed bundle folder}
OUT=${OUT:?set OUT}
ROUNDS=${ROUNDS:-3}
export LD_LIBRARY_PATH=${CUDA_LIB_DIR:-/usr/local/cuda-13.0/targets/x86_64-linux/lib}:${CUDNN_LIB_DIR:-/usr/lib/x86_64-linux-gnu}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s "$BUNDLE/node_modules" node_modules
limit() {
  MODEL_DIR=$BUNDLE/models/rmt-gpt2-small-fused PRECISIONS=fp16 PROVIDER=cuda GRAPHS=${LIMIT_GRAPHS:-state,steps} BATCHES=${LIMIT_BATCHES:-8} SECONDS=${LIMIT_SECONDS:-3} \
    OUT_JSON=$OUT/limit-$1.json "$BUNDLE/bin/node" --import tsx bench/engine-limit.ts 2>&1 | grep -v 'W:onnxruntime' | tee "$OUT/limit-$1.txt"
}
limit 0
for i in $(seq 1 "$ROUNDS"); do
  SESSIONS=${SESSIONS:-8} TOTAL_TOKENS=${TOTAL_TOKENS:-8000000} GEN= ONE_DOC_TOKENS=0 LEVEL_TIMEOUT_S=${LEVEL_TIMEOUT_S:-150} \
    WORKER_CONCURRENCY=${WORKER_CONCURRENCY:-1024} BUNDLE=$BUNDLE OUT=$OUT/svc-$i bash bench/gpu-suite.sh service
  limit "$i"
done
# Each limit reading's lines, then each level's result lines, in the order they ran.
for i in $(seq 0 "$ROUNDS"); do
  grep -hE '^fp16 (steps[0-9]+ )?batch' "$OUT/limit-$i.txt" | sed "s/^/limit-$i: /"
  [ "$i" -lt "$ROUNDS" ] && grep -hE '^N= *[0-9]+ \|' "$OUT"/svc-$((i + 1))/service-*.txt | sed "s/^/svc-$((i + 1)): /" || true
done | tee "$OUT/summary.txt"
