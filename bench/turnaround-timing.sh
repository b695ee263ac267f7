#!/usr/bin/env bash
# Where the engine thread's time between dependent runs goes: a copy of src/ with marks inserted
# (bench/turnaround-tracer.ts: time between consecutive marks, mean per run), then bench/engine-chains.ts
# on it. The marks cost a few microseconds each, so the copy's levels are a little slower than src/'s.
#
#   [NODE=node] [engine-chains.ts settings: N, K, ROUNDS, CONTINUE, PROVIDER, MODEL, ...] bash bench/turnaround-timing.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cp -r src "$T/src"
mkdir "$T/bench" && cp bench/engine-chains.ts bench/turnaround-tracer.ts "$T/bench/"
cp package.json tsconfig.json "$T/"
ln -s "$(readlink -f node_modules)" "$T/node_modules"
ln -s "$PWD/test" "$T/test"
m() { echo "globalThis.__mark?.('$1');"; }
E=$T/src/engine
# The engine thread: the tracer, then marks through its loop (engine-thread.ts), a group's run
# (executor.ts), the device turn around each onnxruntime run (device-turn.ts), feeds and the wrapper.
sed -i "1i import '../../bench/turnaround-tracer.ts';" "$E/engine-thread.ts"
sed -i "s|^        await this.scheduler.gather(() => this.closing);|        $(m loop-top) await this.scheduler.gather(() => this.closing); $(m gathered)|" "$E/engine-thread.ts"
sed -i "s|^    const loaded = this.models.get(group.model)!;|    $(m group-start) const loaded = this.models.get(group.model)!;|" "$E/executor.ts"
sed -i "s|^    const sent = statesOut(this.ring,|    $(m results) const sent = statesOut(this.ring,|" "$E/executor.ts"
sed -i "s|^    const replies: Reply\[\] = sends.map(|    $(m ring) const replies: Reply[] = sends.map(|" "$E/executor.ts"
sed -i "s|^    post({ type: 'replies', replies: out.replies,|    $(m post-start) post({ type: 'replies', replies: out.replies,|" "$E/engine-thread.ts"
sed -i "s|^    this.scheduler.update(group, out.again);|    $(m post-end) this.scheduler.update(group, out.again);|" "$E/engine-thread.ts"
sed -i "s|^      settled = { status: 'fulfilled', value: await run() };|      $(m run-start) settled = { status: 'fulfilled', value: await run() };|" "$E/device-turn.ts"
sed -i "s|^    const t2 = performance.now();|    $(m run-end) const t2 = performance.now();|" "$E/device-turn.ts"
sed -i "s|^  const { feeds } = segmentFeeds(pkg, rows, options);|  $(m feeds-start) const { feeds } = segmentFeeds(pkg, rows, options); $(m feeds-end)|" "$E/rmt-runner.ts"
sed -i "s|^  const { feeds } = feedsOf(pkg, rows.map((r) => r.segments), rows, options, true);|  $(m feeds-start) const { feeds } = feedsOf(pkg, rows.map((r) => r.segments), rows, options, true); $(m feeds-end)|" "$E/rmt-runner.ts"
sed -i "s|^      checkFeeds(label, inputs, feeds);|      $(m wrapper-in) checkFeeds(label, inputs, feeds);|" "$E/onnx-runtime.ts"
sed -i "s|^      const out: Record<string, Tensor> = {};|      $(m wrapper-out) const out: Record<string, Tensor> = {};|" "$E/onnx-runtime.ts"
sed -i "s|^    this.closed = true;|    this.closed = true; globalThis.__dump?.();|" "$E/engine-thread.ts"
n=$(cat "$E/engine-thread.ts" "$E/executor.ts" "$E/device-turn.ts" "$E/rmt-runner.ts" "$E/onnx-runtime.ts" | grep -oE "__(mark|dump)" | wc -l)
[ "$n" = 16 ] || { echo "turnaround-timing: expected 16 marks in the copy, found $n (the engine changed: update the patterns)" >&2; exit 1; }
(cd "$T" && ${NODE:-node} --import tsx bench/engine-chains.ts)
