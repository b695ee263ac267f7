#!/usr/bin/env bash
# The GPU benchmarks of BENCHMARKS.md, run from a checkout on a host where the GPU bundle is installed
# (npm run bundle:gpu; rmt-serve-gpu-install.sh DIR). Uses the bundle's node, node_modules (with the
# CUDA provider) and redis-server, the checkout's bench/ and src/ (through tsx), and Python with
# torch, transformers, onnx and onnxruntime for the model export and the PyTorch reference.
#
#   BUNDLE=/opt/rmt/rmt-serve-gpu bash bench/gpu-suite.sh <step>...
#
# Steps: prepare (random GPT-2-small-shaped packages, the same weights with masked and with fused
# attention; segment_state graphs for the bundled shipped models), limit (bench/engine-limit.ts: both
# GPT-2-small packages and the shipped small model, fp32 and fp16, the fused graph checked against the
# masked one, and profiles; LIMIT_ONLY=fused: the fused package alone), reference (bench/reference-pytorch.py), compiled
# (bench/reference-compiled.py: a user's own torch.compile'd next-memory step on the GPT-2-small checkpoint, fp16 and
# bf16 (COMPILED_DTYPES), with and without the write-only last layer, MFU against the measured matmul peak; COMPILED_DYNAMIC=1: one
# graph for batches > 1 if compiling every batch size takes too long), service (bench/service-stream.ts,
# GPT-2-small fused fp16, generation on the shipped small model, one 1M-token document), engine (the
# engine thread alone with N dependent sessions: bench/engine-event-loop.ts; ENGINE_THREADS engine threads),
# architectures (bench/architectures.sh: every architecture's engine on the GPU), plots.
# Results: $OUT (default bench/out/gpu).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUNDLE=${BUNDLE:?set BUNDLE to the installed bundle folder (the one holding rmt-serve-gpu)}
OUT=${OUT:-bench/out/gpu}
MODELS=${MODELS:-$BUNDLE/models}
NODE=$BUNDLE/bin/node
export LD_LIBRARY_PATH=${CUDA_LIB_DIR:-/usr/local/cuda-13.0/targets/x86_64-linux/lib}:${CUDNN_LIB_DIR:-/usr/lib/x86_64-linux-gnu}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$BUNDLE/bin:$PATH
export PYTHONPATH=$PWD/models/toolkit${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
# The checkout's TypeScript runs with the bundle's production node_modules (tsx, onnxruntime-node).
[ -e node_modules ] || ln -s "$BUNDLE/node_modules" node_modules
GPT2=${GPT2:-rmt-gpt2-small-random}
FUSED=rmt-gpt2-small-fused

step_prepare() {
  {
    python3 -m rmt_toolkit random-gpt2-small --out "$MODELS/$GPT2" --tokenizer "$MODELS/rmt-brown-small/tokenizer.json"
    # Prints the fused graph's check against the masked PyTorch model.
    python3 -m rmt_toolkit random-gpt2-small --attention fused --name $FUSED --out "$MODELS/$FUSED" --tokenizer "$MODELS/rmt-brown-small/tokenizer.json"
    python3 -m rmt_toolkit state-graph --package "$MODELS/rmt-brown-small" --precisions fp32,fp16
    python3 -m rmt_toolkit state-graph --package "$MODELS/rmt-brown-lm" --precisions fp32
  } 2>&1 | grep --line-buffered -v Warning | tee "$OUT/prepare.txt"
}

step_limit() {
  if [ "${LIMIT_ONLY:-}" = fused ]; then
    # Only the fused package's limit (no masked package needed): the column the service is compared with.
    MODEL_DIR=$MODELS/$FUSED OUT_JSON=$OUT/limit-fused.json "$NODE" --import tsx bench/engine-limit.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' | tee "$OUT/limit-fused.txt"
    return
  fi
  MODEL_DIR=$MODELS/$GPT2 OUT_JSON=$OUT/limit-gpt2.json "$NODE" --import tsx bench/engine-limit.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' | tee "$OUT/limit-gpt2.txt"
  COMPARE_DIR=$MODELS/$GPT2 MODEL_DIR=$MODELS/$FUSED OUT_JSON=$OUT/limit-fused.json "$NODE" --import tsx bench/engine-limit.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' | tee "$OUT/limit-fused.txt"
  [ -n "${SKIP_SMALL:-}" ] || MODEL_DIR=$MODELS/rmt-brown-small OUT_JSON=$OUT/limit-small.json "$NODE" --import tsx bench/engine-limit.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' | tee "$OUT/limit-small.txt"
  # Per-op GPU time: every kernel waits for the GPU, so its profile time is its GPU time.
  CUDA_LAUNCH_BLOCKING=1 PROFILE_ONLY=1 PROFILE_BATCH=${PROFILE_BATCH:-64} PROFILE_DIR=$OUT/profiles MODEL_DIR=$MODELS/$GPT2 \
    OUT_JSON=$OUT/profile-gpt2.json "$NODE" --import tsx bench/engine-limit.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' | tee "$OUT/profile-gpt2.txt"
  CUDA_LAUNCH_BLOCKING=1 PROFILE_ONLY=1 PROFILE_BATCH=${PROFILE_BATCH:-64} PROFILE_DIR=$OUT/profiles MODEL_DIR=$MODELS/$FUSED \
    OUT_JSON=$OUT/profile-fused.json "$NODE" --import tsx bench/engine-limit.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' | tee "$OUT/profile-fused.txt"
}

step_reference() {
  python3 bench/reference-pytorch.py --ckpt "$MODELS/$GPT2/model.pt" --docs 1,8,64,256 --segments 8 --single-docs 64 \
    --out "$OUT/reference.json" | tee "$OUT/reference.txt"
}

step_compiled() {
  # fp32 parity with the toolkit's RMT first (on the GPU: the CPU takes minutes), then the timed runs.
  {
    python3 bench/reference-compiled.py --ckpt "$MODELS/$GPT2/model.pt" --check --check-device cuda
    python3 bench/reference-compiled.py --ckpt "$MODELS/$GPT2/model.pt" --dtypes "${COMPILED_DTYPES:-fp16,bf16}" --batches 1,8,64,256 --segments 8 \
      --last-layer-write-only ${COMPILED_DYNAMIC:+--dynamic-batch} --out "$OUT/reference-compiled.json"
  } 2>&1 | tee "$OUT/reference-compiled.txt"
}

step_service() {
  # WORKER_PROCESSES (RMT_WORKER_PROCESSES) worker processes share the GPU; results per count.
  local w=${WORKER_PROCESSES:-1}
  # RMT_ENGINE_THREADS (engine threads per worker process), RMT_ENGINE_PACK_SESSIONS, RMT_ENGINE_TURNS and RMT_BATCH_WAIT_MS pass through.
  local tag=w$w${RMT_ENGINE_THREADS:+-t$RMT_ENGINE_THREADS}${RMT_ENGINE_PACK_SESSIONS:+-p$RMT_ENGINE_PACK_SESSIONS}${RMT_ENGINE_TURNS:+-turns$RMT_ENGINE_TURNS}
  MODELS_DIR=$MODELS MODEL=${SERVICE_MODEL:-$FUSED} PRECISION=fp16 SESSIONS=${SESSIONS:-1,8,64,256} GEN=${GEN-1,8,64} GEN_MODEL=rmt-brown-small \
    TOTAL_TOKENS=${TOTAL_TOKENS:-2000000,4000000,8000000,8000000} \
    ONE_DOC_TOKENS=${ONE_DOC_TOKENS:-1000000} WORKER_PROCESSES=$w OUT_JSON=$OUT/service-$tag.json \
    "$NODE" --import tsx bench/service-stream.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' | tee "$OUT/service-$tag.txt"
}

step_engine() {
  # The engine thread alone (no Redis, queue or API): N sessions each waiting for its previous
  # segment, as the service's sessions do, on the fused GPT-2-small package.
  MODELS_DIR=$MODELS MODEL=$FUSED PROVIDER=cuda PRECISION=fp16 OP=advance SESSIONS=${SESSIONS:-1,8,64,256} MAX_BATCH=256 \
    MAX_BATCH_TOKENS=262144 BASELINE_SECONDS=0 SECONDS=5 "$NODE" --import tsx bench/engine-event-loop.ts 2>&1 | grep --line-buffered -v 'W:onnxruntime' \
    | tee "$OUT/engine-thread${ENGINE_THREADS:+-t$ENGINE_THREADS}.txt"
}

step_architectures() {
  # Every architecture's engine (models/README.md, "Architectures compared"): random weights at the
  # comparison's shape, fp32, the engine thread alone.
  MODELS=$MODELS PROVIDER=cuda NODE=$NODE PYTHON=python3 SESSIONS=${SESSIONS:-1,8,64} MAX_BATCH=64 MAX_BATCH_TOKENS=8192 \
    bash bench/architectures.sh "$OUT/architectures-cuda.txt" 2>&1 | grep --line-buffered -v 'W:onnxruntime'
}

step_plots() {
  python3 bench/plots.py "$OUT"
}

for s in "$@"; do "step_$s"; done
