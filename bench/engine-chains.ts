// The engine thread's turnaround between dependent runs, with chained segments as the service sends
// them: N sessions, each sending requests of about K segments (advanceMany, K-5..K+5 so requests end
// out of step) one after the other, on one engine thread. After each request the main thread is kept
// busy HANDOFF_MS (the worker's own turnaround before the session's next request: commit, handoff).
// Per run: wall time over the level, onnxruntime's run and the engine's step (run plus feeds and
// results); what the run does not cover is the thread's turnaround and any wait of the batch window.
//
//   node --import tsx bench/engine-chains.ts
//
// Environment: N (8), K (30), ROUNDS (20), WAITS ("5,0": RMT_BATCH_WAIT_MS values to compare),
// HANDOFF_MS ("0,1"), THREADS (1), PACK (0), TURNS (1), CONTINUE (0), MODELS_DIR (test/fixtures), MODEL (rmt-tiny-fused), PROVIDER (cpu | cuda), PRECISION (fp32).
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { startEngine, type BatchStat, type ChainRef } from '../src/engine/engine.ts';

const N = Number(process.env.N ?? 8);
const K = Number(process.env.K ?? 30);
const ROUNDS = Number(process.env.ROUNDS ?? 20);
const WAITS = (process.env.WAITS ?? '5,0').split(',').map(Number);
const HANDOFFS = (process.env.HANDOFF_MS ?? '0,1').split(',').map(Number);
const MODELS_DIR = process.env.MODELS_DIR ?? 'test/fixtures';
const MODEL = process.env.MODEL ?? 'rmt-tiny-fused';
const PROVIDER = (process.env.PROVIDER ?? 'cpu') as 'cpu' | 'cuda';
const PRECISION = (process.env.PRECISION ?? 'fp32') as 'fp32' | 'fp16';
// THREADS > 1: the sessions split evenly over the threads (PACK 0), taking turns on the device unless TURNS=0.
const THREADS = Number(process.env.THREADS ?? 1);
const PACK = Number(process.env.PACK ?? 0);
const TURNS = process.env.TURNS !== '0';
// CONTINUE=1: each session sends its next request while the one before runs, continuing its chain (ChainRef).
const CONTINUE = process.env.CONTINUE === '1';

console.log(`engine chains bench: ${MODEL} (${PROVIDER}, ${PRECISION}), ${THREADS} engine thread(s)${THREADS > 1 ? ` (pack ${PACK}, ${TURNS ? 'taking turns' : 'runs overlapping'})` : ''}, ${N} sessions × ${ROUNDS} requests${CONTINUE ? ' (each sent while the one before runs, continuing its chain)' : ''} of ${K - 5}..${K + 5} segments; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}), node ${process.version}`);
for (const handoffMs of HANDOFFS) {
  for (const batchWaitMs of WAITS) {
    const engine = await startEngine({ modelsDir: MODELS_DIR, models: [MODEL], executionProvider: PROVIDER, precision: PRECISION, intraOpThreads: 1, maxBatch: 256, maxBatchTokens: 262144, threads: THREADS, packStreams: PACK, deviceTurns: TURNS, batchWaitMs });
    const m = engine.model(MODEL);
    const seg = Array.from({ length: m.segmentLength }, (_, i) => 5 + (i % 50));
    const stats: BatchStat[] = [];
    engine.onBatch((b) => stats.push(b));
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: N }, async (_, s) => {
        let state: Float32Array | ChainRef = m.initState;
        let previous: Promise<unknown> = Promise.resolve();
        for (let r = 0; r < ROUNDS; r++) {
          const segments = Array.from({ length: K + ((s * 7 + r * 3) % 11) - 5 }, () => seg);
          if (CONTINUE) {
            // As the worker's handoff does: the next request goes out while this one runs, continuing its chain.
            const chain: ChainRef = {};
            const sent = engine.advanceMany(MODEL, segments, state, { stream: `s${s}`, onState: () => {}, chain });
            await previous;
            [state, previous] = [chain, sent];
          } else state = await engine.advanceMany(MODEL, segments, state, { stream: `s${s}`, onState: () => {} });
          for (const end = performance.now() + handoffMs; performance.now() < end; ); // the worker's turnaround, on the main thread
        }
        await previous;
      }),
    );
    const wall = performance.now() - t0;
    await engine.close();
    const sum = (f: (b: BatchStat) => number) => stats.reduce((a, b) => a + f(b), 0);
    const runs = stats.length;
    console.log(
      `handoff ${handoffMs} ms, batch wait ${batchWaitMs} ms | level ${wall.toFixed(0)} ms, ${runs} runs, ${(sum((b) => b.rows) / runs).toFixed(2)} rows each | per run: wall ${(wall / runs).toFixed(3)} ms, ` +
        `onnxruntime ${(sum((b) => b.runMs) / runs).toFixed(3)} ms, step ${(sum((b) => b.ms) / runs).toFixed(3)} ms | run held ${((100 * sum((b) => b.runMs)) / wall).toFixed(1)} % of the wall`,
    );
  }
}
