#!/usr/bin/env bash
# GPU run 15 driver (H200): step 'install' | 'suite' | 'paired1' | 'paired8' | 'paired8-off' | 'paired64' | 'paired256'. Results under $OUT.
# Run from the checkout's root (copied there as lease-run.sh).
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu PATH=/opt/rmt/bin:$PATH
[ -e node_modules ] || ln -s /opt/rmt/node_modules node_modules
P="BUNDLE=/opt/rmt TEXT_FILE=$PWD/bench/out/brown.txt"
paired() { # name, then settings
  local name=$1; shift
  env "$@" $P OUT=$OUT/$name bash bench/gpu-paired.sh 2>&1 | tail -12
  tar -C $OUT -czf $OUT/$name.tgz $name && rm -rf $OUT/$name
}
case $1 in
install)
  bash /opt/b/rmt-serve-gpu-install.sh /opt/rmt 2>&1 | tail -3
  PYTHONPATH=$PWD/models/toolkit python3 -m rmt_toolkit random-gpt2-small --attention fused --precisions fp16 --name rmt-gpt2-small-fused \
    --out /opt/rmt/models/rmt-gpt2-small-fused --tokenizer /opt/rmt/models/rmt-brown-small/tokenizer.json 2>&1 | grep -v Warning | tail -3
  # The 4-step graph, checked against four single-step runs (onnxruntime CPU) by the toolkit.
  PYTHONPATH=$PWD/models/toolkit python3 -m rmt_toolkit steps-graph --package /opt/rmt/models/rmt-gpt2-small-fused --steps 4 --precisions fp16 2>&1 | tail -3
  ;;
suite)
  # The defaults: the 8-session level, generation at 1, 8 and 64, the 1M-token document.
  env $P LEVEL_TIMEOUT_S=150 WORKER_CONCURRENCY=1024 SESSIONS=8 TOTAL_TOKENS=8000000 GEN=1,8,64 ONE_DOC_TOKENS=1000000 OUT=$OUT/suite bash bench/gpu-suite.sh service 2>&1 | grep -E "^(N=|gen|one|  )" | tail -20
  tar -C $OUT -czf $OUT/suite.tgz suite && rm -rf $OUT/suite ;;
paired1) paired paired1 ROUNDS=${R1:-2} SESSIONS=1 TOTAL_TOKENS=2000000 LIMIT_BATCHES=1 ;;
paired8) paired paired8 ROUNDS=${R8:-3} SESSIONS=8 TOTAL_TOKENS=8000000 LIMIT_BATCHES=8 ;;
paired8-off) paired paired8-off ROUNDS=${R8:-2} SESSIONS=8 TOTAL_TOKENS=8000000 LIMIT_BATCHES=8 RMT_SEGMENT_STEPS=0 ;;
paired64) paired paired64 ROUNDS=${R64:-2} SESSIONS=64 TOTAL_TOKENS=32000000 LIMIT_BATCHES=64 ;;
paired256) paired paired256 ROUNDS=1 SESSIONS=256 TOTAL_TOKENS=32000000 LIMIT_BATCHES=256 ;;
esac
