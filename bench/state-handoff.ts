// What handing a run's memory states to the main thread costs the engine thread, between dependent
// runs: a new buffer with every state copied in and transferred (the engine before 6b947a2), against
// one copy into the shared state ring and a small message (src/engine/state-ring.ts). A worker thread
// plays the engine thread: ROWS states of STATE floats per "run", RUN_MS of busy work between runs
// (the run), the main thread copying the ring's states out as the real one does.
//
//   node --import tsx bench/state-handoff.ts
//
// Environment: ROWS (8), STATE (12288: GPT-2 small's 16 x 768 memory), RING_ROWS (256: the ring is sized as
// the engine sizes it, for runs of maxBatch rows), RUN_MS (0.5), RUNS (3000), REPEATS (5).
import os from 'node:os';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { startModuleThread } from '../src/engine/thread-entry.ts';
import { createStateRing, StateRingReader, StateRingWriter, type RingSlice, type StateRingShared } from '../src/engine/state-ring.ts';

const ROWS = Number(process.env.ROWS ?? 8);
const STATE = Number(process.env.STATE ?? 12288);
const RING_ROWS = Number(process.env.RING_ROWS ?? 256);
const RUN_MS = Number(process.env.RUN_MS ?? 0.5);
const RUNS = Number(process.env.RUNS ?? 3000);
const REPEATS = Number(process.env.REPEATS ?? 5);

type Msg = { states: (Float32Array | RingSlice)[]; ringEnd?: number } | { done: number };

if (isMainThread) {
  console.log(`state handoff bench: ${ROWS} states of ${STATE} floats per run (ring for ${RING_ROWS}), ${RUN_MS} ms of work between runs, ${RUNS} runs x ${REPEATS}; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}), node ${process.version}`);
  const results: Record<string, number[]> = { transfer: [], ring: [] };
  for (let r = 0; r < REPEATS; r++) {
    for (const mode of ['transfer', 'ring'] as const) {
      const ring = createStateRing(RING_ROWS, STATE);
      const reader = new StateRingReader(ring);
      const w = startModuleThread(import.meta.url, { workerData: { mode, ring } });
      const perRun = await new Promise<number>((resolve, reject) => {
        let kept: Float32Array | undefined;
        w.on('message', (m: Msg) => {
          if ('done' in m) return resolve(m.done);
          // As pending-calls.ts does: each state its own array, the region released once copied out.
          for (const s of m.states) kept = s instanceof Float32Array ? s : reader.read(s);
          if (m.ringEnd !== undefined) reader.release(m.ringEnd);
          void kept;
        });
        w.on('error', reject);
      });
      await w.terminate();
      results[mode]!.push(perRun);
    }
  }
  for (const [mode, v] of Object.entries(results)) {
    const s = [...v].sort((a, b) => a - b);
    console.log(`${mode.padEnd(8)} per run on the engine thread: min ${s[0]!.toFixed(4)} · median ${s[Math.floor(s.length / 2)]!.toFixed(4)} · max ${s[s.length - 1]!.toFixed(4)} ms`);
  }
} else {
  const { mode, ring } = workerData as { mode: 'transfer' | 'ring'; ring: StateRingShared };
  const writer = new StateRingWriter(ring);
  const out = new Float32Array(ROWS * STATE).map((_, i) => i % 1000);
  const views = Array.from({ length: ROWS }, (_, b) => out.subarray(b * STATE, (b + 1) * STATE));
  let spent = 0;
  for (let i = 0; i < RUNS; i++) {
    for (const end = performance.now() + RUN_MS; performance.now() < end; ); // the run
    const t0 = performance.now();
    const written = mode === 'ring' ? writer.write(views) : undefined;
    if (written) parentPort!.postMessage({ states: written.slices, ringEnd: written.end } satisfies Msg);
    else {
      const all = new Float32Array(ROWS * STATE);
      views.forEach((v, k) => all.set(v, k * STATE));
      parentPort!.postMessage({ states: views.map((_, k) => all.subarray(k * STATE, (k + 1) * STATE)) } satisfies Msg, [all.buffer]);
    }
    spent += performance.now() - t0;
  }
  parentPort!.postMessage({ done: spent / RUNS } satisfies Msg);
}
