// What bench/service-stream.ts reads off the running service: the worker processes' Prometheus metrics
// (engine and worker histograms, summed over the processes) and nvidia-smi's GPU utilization.
import { spawn, spawnSync } from 'node:child_process';

export interface SumCount {
  sum: number;
  count: number;
}

export interface Metrics {
  rows: SumCount;
  steps: SumCount;
  step: SumCount;
  run: SumCount;
  request: SumCount;
  turnGap: SumCount;
  turnDelays: number;
  /** Requests that continued from their session's previous one before it landed (and of those, started again). */
  handoffs: number;
  handoffsLost: number;
  inEngine: number;
}

/** Sums the metrics of every worker process (ports base, base + 1, ...). */
export async function scrape(base: number, workerProcesses: number): Promise<Metrics> {
  const texts = await Promise.all(Array.from({ length: workerProcesses }, async (_, i) => (await fetch(`http://127.0.0.1:${base + i}/metrics`)).text()));
  const text = texts.join('\n');
  // Engine histograms: segment-step graphs only; worker ones: every series.
  const pick = (name: string, only = /graph="(segment|advance)"/): SumCount => {
    let sum = 0;
    let count = 0;
    for (const line of text.split('\n')) {
      if (line.startsWith(`${name}_sum`) && only.test(line)) sum += Number(line.split(' ').pop());
      if (line.startsWith(`${name}_count`) && only.test(line)) count += Number(line.split(' ').pop());
    }
    return { sum, count };
  };
  const any = /./;
  const total = (name: string) => text.split('\n').filter((l) => l.startsWith(`${name} `)).reduce((a, l) => a + Number(l.split(' ').pop()), 0);
  const delays = total('rmt_worker_turn_delays_total');
  return {
    handoffs: total('rmt_worker_handoffs_total'), handoffsLost: total('rmt_worker_handoffs_lost_total'), inEngine: total('rmt_worker_engine_continuations_total'),
    rows: pick('rmt_engine_batch_rows'), steps: pick('rmt_engine_batch_steps'), step: pick('rmt_engine_step_seconds'), run: pick('rmt_engine_run_seconds'),
    request: pick('rmt_worker_request_seconds', any), turnGap: pick('rmt_worker_turn_gap_seconds', any), turnDelays: delays,
  };
}

/** nvidia-smi's utilization.gpu every `sampleMs`; stop() gives the mean (undefined without a GPU). */
export function gpuSampler(sampleMs: number): { stop(): number | undefined } {
  if (sampleMs <= 0 || spawnSync('nvidia-smi', ['-L']).error) return { stop: () => undefined };
  const samples: number[] = [];
  const p = spawn('nvidia-smi', ['--query-gpu=utilization.gpu', '--format=csv,noheader,nounits', '-lms', String(sampleMs)], { stdio: ['ignore', 'pipe', 'ignore'] });
  p.stdout.on('data', (d: Buffer) => {
    for (const l of String(d).split('\n')) if (l.trim() !== '' && !Number.isNaN(Number(l))) samples.push(Number(l));
  });
  return {
    stop() {
      p.kill();
      return samples.length ? samples.reduce((a, b) => a + b, 0) / samples.length : undefined;
    },
  };
}
