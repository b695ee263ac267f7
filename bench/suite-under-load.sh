#!/usr/bin/env bash
# The whole suite three times in a row while a CPU-heavy process (a busy loop) runs: tests assert
# behaviour, never timing, so a loaded 2-core machine must not fail them.
#   bash bench/suite-under-load.sh        (logs in bench/out/suite-under-load/)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench/out/suite-under-load}"; mkdir -p "$OUT"
node -e "for(;;){}" & LOAD=$!
for i in 1 2 3; do
  start=$(date +%s)
  npm test > $OUT/run$i.log 2>&1; rc=$?
  echo "run $i rc=$rc $(( $(date +%s) - start )) s $(grep -E '^ℹ (tests|pass|fail)' $OUT/run$i.log | tr '\n' ' ')"
done
kill $LOAD
