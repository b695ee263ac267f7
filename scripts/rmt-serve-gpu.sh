#!/usr/bin/env bash
# Start script of the GPU bundle (copied to its root as rmt-serve-gpu by scripts/bundle-gpu.sh).
# Everything runs from the bundle: its node, its node_modules with the CUDA provider, its models and
# its redis-server; CUDA 13 and cuDNN 9 come from the host (CUDA_LIB_DIR, CUDNN_LIB_DIR).
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
ORT_BIN=$HERE/node_modules/onnxruntime-node/bin/napi-v6/linux/x64

CUDA_LIB_DIR=${CUDA_LIB_DIR:-/usr/local/cuda-13.0/targets/x86_64-linux/lib}
CUDNN_LIB_DIR=${CUDNN_LIB_DIR:-/usr/lib/x86_64-linux-gnu}
# No trailing ':' when LD_LIBRARY_PATH is unset: an empty entry would mean the current directory.
export LD_LIBRARY_PATH="$CUDA_LIB_DIR:$CUDNN_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# bin/ first: `serve` spawns redis-server from PATH and should find the bundled one.
export PATH="$HERE/bin:$PATH"
export RMT_EXECUTION_PROVIDER=${RMT_EXECUTION_PROVIDER:-cuda}
export RMT_MODELS_DIR=${RMT_MODELS_DIR:-$HERE/models}
export RMT_DATA_DIR=${RMT_DATA_DIR:-$HERE/var}
# No batch window: with the engine threads' runs overlapping on the GPU (RMT_ENGINE_TURNS=0, the
# default) it was fastest at 1 to 256 sessions without one (bench/gpu-suite.sh, bench/results/gpu-12).
export RMT_BATCH_WAIT_MS=${RMT_BATCH_WAIT_MS:-0}
# The onnxruntime IO-binding addon (RMT_ORT_RUNNER=bound), built into the bundle.
export RMT_NATIVE_ADDON=${RMT_NATIVE_ADDON:-$HERE/lib/ort-bound-session.node}

usage() {
  cat <<EOF
usage: $(basename "$0") <command> [options]

  serve | api | worker | ingest | generate | config
            rmt-serve with the bundled node (see: $(basename "$0") config for every setting)
  redis [redis-server options]
            the bundled redis-server on 127.0.0.1:\${REDIS_PORT:-6379}, data in \$RMT_DATA_DIR/redis
  check     CUDA provider intact and matching onnxruntime-node; host CUDA/cuDNN libraries present

environment: CUDA_LIB_DIR=$CUDA_LIB_DIR
             CUDNN_LIB_DIR=$CUDNN_LIB_DIR
             RMT_EXECUTION_PROVIDER=$RMT_EXECUTION_PROVIDER  RMT_MODELS_DIR=$RMT_MODELS_DIR
             RMT_DATA_DIR=$RMT_DATA_DIR  RMT_BATCH_WAIT_MS=$RMT_BATCH_WAIT_MS
             (and every other rmt-serve setting: REDIS_URL, PORT, ...)
EOF
}

check() {
  local bad=0
  "$HERE/bin/node" "$HERE/dist/scripts/cuda-install.js" --check --target "$ORT_BIN" || bad=1
  # ldd resolves with the same LD_LIBRARY_PATH the service gets.
  local missing
  missing=$(ldd "$ORT_BIN/libonnxruntime_providers_cuda.so" 2>&1 | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
  if [ -n "$missing" ]; then
    echo "libonnxruntime_providers_cuda.so: not found: $missing(CUDA_LIB_DIR=$CUDA_LIB_DIR; libcuda.so.1 comes with the NVIDIA driver)" >&2
    bad=1
  else
    echo "ok: every library of libonnxruntime_providers_cuda.so resolves"
  fi
  # cuDNN is loaded at run time (dlopen), so ldd does not list it.
  local found="" d
  IFS=: read -ra dirs <<<"$LD_LIBRARY_PATH"
  for d in "${dirs[@]}"; do [ -n "$d" ] && [ -e "$d/libcudnn.so.9" ] && found="$d/libcudnn.so.9" && break; done
  [ -z "$found" ] && found=$(ldconfig -p 2>/dev/null | awk '$1 == "libcudnn.so.9" {print $NF; exit}')
  if [ -n "$found" ]; then echo "ok: cuDNN 9 at $found"; else echo "libcudnn.so.9 not found (CUDNN_LIB_DIR=$CUDNN_LIB_DIR)" >&2; bad=1; fi
  return $bad
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  serve | api | worker | ingest | generate | config)
    exec "$HERE/bin/node" "$HERE/dist/src/cli/main.js" "$cmd" "$@"
    ;;
  redis)
    mkdir -p "$RMT_DATA_DIR/redis"
    # Options given after these override them (redis-server keeps the last value of a directive).
    exec "$HERE/bin/redis-server" --port "${REDIS_PORT:-6379}" --bind 127.0.0.1 --dir "$RMT_DATA_DIR/redis" --appendonly yes "$@"
    ;;
  check) check ;;
  help | -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
