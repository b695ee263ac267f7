#!/usr/bin/env bash
# Where the host's CPU goes while a GPU benchmark step runs: starts `bench/gpu-suite.sh <steps>` (same
# environment), and after SAMPLE_AFTER_S (10) seconds samples every thread's CPU for SAMPLE_S (3)
# seconds with top; prints the busiest threads (with their process's command) and the machine's total.
#
#   BUNDLE=/opt/rmt OUT=/tmp/x SAMPLE_AFTER_S=10 bash bench/cpu-sample.sh service
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash bench/gpu-suite.sh "$@" &
suite=$!
sleep "${SAMPLE_AFTER_S:-10}"
read -r _ u1 n1 s1 i1 w1 q1 sq1 _ < /proc/stat
top -b -H -n 2 -d "${SAMPLE_S:-3}" -w 250 -o %CPU > /tmp/cpu-sample.top
read -r _ u2 n2 s2 i2 w2 q2 sq2 _ < /proc/stat
busy=$(( (u2 + n2 + s2 + q2 + sq2) - (u1 + n1 + s1 + q1 + sq1) )); idle=$(( (i2 + w2) - (i1 + w1) ))
echo "cpu sample: $(nproc) CPUs ($(lscpu | awk -F: '/^Thread\(s\) per core/{gsub(/ /,"",$2); t=$2} /^Core\(s\) per socket/{gsub(/ /,"",$2); c=$2} /^Socket\(s\)/{gsub(/ /,"",$2); s=$2} END{print s" sockets x "c" cores x "t" threads"}')); all CPUs $(( 100 * busy / (busy + idle) )) % busy over the sample"
# The second iteration of top is the measured one; name each thread's process by its command line.
awk '/^top - /{n++} n==2' /tmp/cpu-sample.top | awk 'f && $9+0 >= 5 {print} /PID USER/{f=1; print}' | head -30 | while read -r line; do
  pid=$(awk '{print $1}' <<<"$line")
  if [[ $pid =~ ^[0-9]+$ ]]; then
    tgid=$(awk '/^Tgid/{print $2}' /proc/$pid/status 2>/dev/null || echo ?)
    cmd=$(tr '\0' ' ' < /proc/$tgid/cmdline 2>/dev/null | grep -oE '(rmt-serve\.js [a-z]+|service-stream|engine-event-loop|redis-server|python3?)' | head -1 || true)
    echo "$line  [${cmd:-?} pid $tgid]"
  else
    echo "$line"
  fi
done
wait $suite
