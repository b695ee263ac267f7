#!/usr/bin/env bash
# Two commits' CPU benchmarks side by side, alternated (base, new, base, new, ...) in one run on one
# machine, so a change in structure is judged against its base under the same conditions.
#   bash bench/cpu-paired.sh BASE NEW OUTDIR [ROUNDS]
# Each commit is checked out into a temporary git worktree sharing this checkout's node_modules; each
# round runs, in each tree, the scripts named by BENCHES (default: engine-event-loop service-ingest
# engine-chains) with that tree's own bench/ script. Output: OUTDIR/<bench>-<round>-<base|new>.txt,
# each starting with the exact command, and OUTDIR/summary.txt (the tok/s lines of every file).
set -euo pipefail
BASE=${1:?base commit}
NEW=${2:?new commit}
OUT=${3:?output folder}
ROUNDS=${4:-2}
BENCHES=${BENCHES:-engine-event-loop service-ingest engine-chains}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
tmp=$(mktemp -d)
trees=()
cleanup() {
  for t in "${trees[@]}"; do git -C "$repo" worktree remove --force "$t" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
for side in base new; do
  commit=$([ "$side" = base ] && echo "$BASE" || echo "$NEW")
  git -C "$repo" worktree add -q --detach "$tmp/$side" "$commit"
  ln -s "$repo/node_modules" "$tmp/$side/node_modules"
  trees+=("$tmp/$side")
done
for round in $(seq 1 "$ROUNDS"); do
  for bench in $BENCHES; do
    for side in base new; do
      f="$OUT/$bench-$round-$side.txt"
      commit=$(git -C "$tmp/$side" rev-parse --short HEAD)
      echo "cd <$side: $commit> && node --import tsx bench/$bench.ts   # round $round of $ROUNDS; $(date -u +%FT%TZ)" >"$f"
      (cd "$tmp/$side" && node --import tsx "bench/$bench.ts") >>"$f" 2>&1 && echo "rc=0" >>"$f" || echo "rc=$?" >>"$f"
      echo "$bench round $round $side: $(grep -c 'tok/s' "$f") result lines"
    done
  done
done
grep -H 'tok/s\|level\|rc=' "$OUT"/*.txt | sed "s#$OUT/##" >"$OUT/summary.txt"
echo "summary: $OUT/summary.txt"
