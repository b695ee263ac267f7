// Loaded into a copy of the engine thread by bench/turnaround-timing.sh: globalThis.__mark(name) notes
// the time since the mark before; the thread prints the mean per run of each step between
// marks (from -> to) when the thread closes, so the turnaround between dependent runs splits into its parts.
import { writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const sums = new Map<string, { ms: number; n: number }>();
let last: { name: string; at: number } | undefined;
let runs = 0;
let started = false;
(globalThis as { __mark?: (name: string) => void }).__mark = (name) => {
  const at = performance.now();
  // The warm-up's runs (every batch-size bucket, before the loop) are not the level's: count from the loop's first iteration.
  if (!started && name === 'loop-top') {
    started = true;
    sums.clear();
    runs = 0;
  }
  if (name === 'run-end') runs++;
  if (last) {
    const key = `${last.name} -> ${name}`;
    const s = sums.get(key) ?? { ms: 0, n: 0 };
    s.ms += at - last.at;
    s.n++;
    sums.set(key, s);
  }
  last = { name, at };
};
// Called from the copy's finishClose (the engine terminates its thread: no 'exit' event there).
(globalThis as { __dump?: () => void }).__dump = () => {
  const rows = [...sums].sort((a, b) => b[1].ms - a[1].ms);
  const lines = rows.map(([k, s]) => `  ${(s.ms / runs).toFixed(4)} ms per run  (${s.n} times)  ${k}`);
  writeSync(2, `turnaround, engine thread, ${runs} runs:\n${lines.join('\n')}\n`);
};
