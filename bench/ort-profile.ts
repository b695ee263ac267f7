// Summarises an onnxruntime profile (the JSON its profiler writes): time per op type and provider.
// Node events come as <node>_fence_before / <node>_kernel_time / <node>_fence_after; only
// kernel_time counts. With the CUDA provider a kernel's time is the host time of its launch unless
// the process runs with CUDA_LAUNCH_BLOCKING=1 (then each kernel waits for the GPU): profile that way.
// The first run of a session carries one-time work (CUDA modules loaded, cuBLAS and cuDNN plans built:
// in bench/results/gpu-17 it took 363 ms where later runs took 24), which lands on whichever node is
// first of its kind; so the first SKIP runs (1) are left out of the averages.
import { readFileSync } from 'node:fs';

interface OrtEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string; provider?: string };
}

export interface ProfileSummary {
  /** Runs averaged over (the profile's runs less the skipped ones). */
  runs: number;
  skipped: number;
  /** Mean wall time of one model_run (ms). */
  runMs: number;
  /** Mean sum of kernel times per run (ms). */
  kernelMs: number;
  byOpType: { opType: string; provider: string; nodes: number; ms: number; share: number }[];
}

export function summariseProfile(file: string, skip = 1): ProfileSummary {
  const events = JSON.parse(readFileSync(file, 'utf8')) as OrtEvent[];
  const all = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const skipped = Math.min(skip, Math.max(0, all.length - 1));
  const runs = all.slice(skipped);
  const counted = (e: OrtEvent) => runs.length === 0 || runs.some((r) => e.ts >= r.ts && e.ts <= r.ts + r.dur);
  const n = Math.max(1, runs.length);
  const byKey = new Map<string, { opType: string; provider: string; nodes: Set<string>; us: number }>();
  let kernelUs = 0;
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !counted(e)) continue;
    const opType = e.args?.op_name ?? '?';
    const provider = e.args?.provider ?? '?';
    const key = `${opType}\u0000${provider}`;
    let o = byKey.get(key);
    if (!o) byKey.set(key, (o = { opType, provider, nodes: new Set(), us: 0 }));
    o.nodes.add(e.name);
    o.us += e.dur;
    kernelUs += e.dur;
  }
  const byOpType = [...byKey.values()]
    .map((o) => ({ opType: o.opType, provider: o.provider, nodes: o.nodes.size, ms: o.us / 1000 / n, share: kernelUs ? o.us / kernelUs : 0 }))
    .sort((a, b) => b.ms - a.ms);
  return { runs: runs.length, skipped, runMs: runs.reduce((s, e) => s + e.dur, 0) / 1000 / n, kernelMs: kernelUs / 1000 / n, byOpType };
}

// CLI: [SKIP=1] node --import tsx bench/ort-profile.ts PROFILE.json... (e.g. the files RMT_ORT_PROFILE_DIR collects)
if (import.meta.url === `file://${process.argv[1]}`) {
  for (const file of process.argv.slice(2)) {
    const s = summariseProfile(file, Number(process.env.SKIP ?? 1));
    console.log(`${file}: ${s.runs} runs (first ${s.skipped} left out), model_run ${s.runMs.toFixed(2)} ms mean, kernels (host time unless CUDA_LAUNCH_BLOCKING=1) ${s.kernelMs.toFixed(2)} ms`);
    for (const o of s.byOpType.slice(0, 8)) console.log(`  ${o.opType.padEnd(28)} ${o.provider.padEnd(22)} ${String(o.nodes).padStart(3)} nodes ${o.ms.toFixed(2).padStart(8)} ms ${(100 * o.share).toFixed(1).padStart(5)} %`);
  }
}
