#!/usr/bin/env bash
# GPU run 14 driver (H200): step 'install' | 'chains' | 'paired8' | 'paired64'. Results under $OUT.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu PATH=/opt/rmt/bin:$PATH
[ -e node_modules ] || ln -s /opt/rmt/node_modules node_modules
[ -e old/node_modules ] || ln -s /opt/rmt/node_modules old/node_modules
CH="PROVIDER=cuda PRECISION=fp16 MODEL=rmt-gpt2-small-fused MODELS_DIR=/opt/rmt/models WAITS=0 HANDOFF_MS=0 K=30 ROUNDS=40 N=8 CONTINUE=1"
case $1 in
install)
  bash /opt/b/rmt-serve-gpu-install.sh /opt/rmt 2>&1 | tail -3
  PYTHONPATH=$PWD/models/toolkit python3 -m rmt_toolkit random-gpt2-small --attention fused --name rmt-gpt2-small-fused \
    --out /opt/rmt/models/rmt-gpt2-small-fused --tokenizer /opt/rmt/models/rmt-brown-small/tokenizer.json 2>&1 | grep -v Warning | tail -3
  ;;
chains)
  # Where the turnaround goes (the marked copy), then the engine alone at 8 sessions: 1ddd174's engine (old/) and this one, in turns.
  env $CH NODE=/opt/rmt/bin/node bash bench/turnaround-timing.sh 2>&1 | grep -v 'W:onnxruntime' | tee $OUT/turnaround-n8.txt
  for i in 1 2 3; do
    (cd old && env $CH /opt/rmt/bin/node --import tsx bench/engine-chains.ts 2>&1 | grep -v 'W:onnxruntime' | tee $OUT/chains-old-n8-$i.txt)
    env $CH /opt/rmt/bin/node --import tsx bench/engine-chains.ts 2>&1 | grep -v 'W:onnxruntime' | tee $OUT/chains-new-n8-$i.txt
  done
  ;;
paired8)
  ROUNDS=3 SESSIONS=8 TOTAL_TOKENS=8000000 LIMIT_BATCHES=8 BUNDLE=/opt/rmt OUT=$OUT/paired8 TEXT_FILE=$PWD/bench/out/brown.txt bash bench/gpu-paired.sh 2>&1 | tail -8
  tar -C $OUT -czf $OUT/paired8.tgz paired8 && rm -rf $OUT/paired8
  ;;
paired64)
  ROUNDS=${R64:-2} SESSIONS=64 TOTAL_TOKENS=32000000 LIMIT_BATCHES=64 BUNDLE=/opt/rmt OUT=$OUT/paired64 TEXT_FILE=$PWD/bench/out/brown.txt bash bench/gpu-paired.sh 2>&1 | tail -6
  tar -C $OUT -czf $OUT/paired64.tgz paired64 && rm -rf $OUT/paired64
  ;;
esac
