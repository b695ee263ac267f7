// Host time to build one batched segment call's feeds (engine thread, between a session's dependent
// runs): the current segmentFeeds against the previous per-element BigInt conversion, for a
// GPT-2-small-shaped RMT (512-token segments, memory 16 x 768) at several batch sizes.
//
//   node --import tsx bench/segment-feeds.ts            BATCHES (1,8,32,64,128,256), REPEAT (200)
import { performance } from 'node:perf_hooks';
import { segmentFeeds, type SegmentRow } from '../src/engine/segment-feeds.ts';
import { percentile, tokens } from './bench-support.ts';

const BATCHES = (process.env.BATCHES ?? '1,8,32,64,128,256').split(',').map(Number);
const REPEAT = Number(process.env.REPEAT ?? 200);
const pkg = { segmentLength: 512, memoryTokens: 16, dModel: 768, specialTokens: { pad: 1, eos: 0 } };
const stateSize = pkg.memoryTokens * pkg.dModel;

/** The feeds as built before: a number[] per row (Array.from of the engine's Int32Array) and one BigInt per element. */
function before(rows: { ids: Int32Array; state: Float32Array }[]): unknown {
  const plain = rows.map((r) => ({ ids: Array.from(r.ids), state: r.state }));
  const width = pkg.segmentLength;
  const ids = new BigInt64Array(plain.length * width).fill(BigInt(pkg.specialTokens.pad));
  const mask = new BigInt64Array(plain.length * width);
  const states = new Float32Array(plain.length * stateSize);
  plain.forEach((r, b) => {
    r.ids.forEach((id, t) => {
      ids[b * width + t] = BigInt(id);
      mask[b * width + t] = 1n;
    });
    states.set(r.state, b * stateSize);
  });
  return { ids, mask, states };
}

function time(f: () => unknown): number[] {
  for (let i = 0; i < 20; i++) f();
  const ms: number[] = [];
  for (let i = 0; i < REPEAT; i++) {
    const t0 = performance.now();
    f();
    ms.push(performance.now() - t0);
  }
  return ms.sort((a, b) => a - b);
}

console.log(`segment feeds: ${pkg.segmentLength}-token rows, memory ${pkg.memoryTokens} x ${pkg.dModel}; node ${process.version}; ${REPEAT} builds per point, ms min / p50 / max`);
for (const b of BATCHES) {
  const rows = Array.from({ length: b }, (_, i) => ({ ids: Int32Array.from(tokens(i + 1, pkg.segmentLength - (i % 3), 50257)), state: new Float32Array(stateSize).fill(0.25) }));
  const check = segmentFeeds(pkg, rows as SegmentRow[], { width: pkg.segmentLength }).feeds;
  const old = before(rows) as { ids: BigInt64Array; mask: BigInt64Array };
  const same = (a: unknown, c: BigInt64Array) => (a as BigInt64Array).every((v, i) => v === c[i]);
  if (!same(check.input_ids!.data, old.ids) || !same(check.attention_mask!.data, old.mask)) throw new Error(`batch ${b}: feeds differ from the previous method`);
  const fmt = (ms: number[]) => `${ms[0]!.toFixed(3)} / ${percentile(ms, 50).toFixed(3)} / ${ms[ms.length - 1]!.toFixed(3)}`;
  const a = time(() => before(rows));
  const n = time(() => segmentFeeds(pkg, rows as SegmentRow[], { width: pkg.segmentLength }));
  console.log(`batch ${String(b).padStart(3)} | before ${fmt(a)} | now ${fmt(n)} | ${(percentile(a, 50) / percentile(n, 50)).toFixed(1)}x`);
}
