// Summarises a V8 CPU profile (node --cpu-prof; service-stream.ts passes SERVICE_NODE_FLAGS to the api
// and worker processes): sampled time per function, self and inclusive, so "what keeps this thread
// busy" has an answer with numbers.
//
//   node --import tsx bench/cpu-profile.ts FILE.cpuprofile [top=25]
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

export function summarise(p: Profile): { totalMs: number; self: [string, number][]; inclusive: [string, number][] } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n: Node, line: boolean) =>
    `${n.callFrame.functionName || '(anonymous)'} ${path.basename(n.callFrame.url) || ''}${line ? `:${n.callFrame.lineNumber + 1}` : ''}`.trim();
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    total += dt;
    const leaf = byId.get(id)!;
    self.set(name(leaf, true), (self.get(name(leaf, true)) ?? 0) + dt);
    // Each function once per sample, however deep it recurses.
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const k = name(byId.get(at)!, false);
      if (!seen.has(k)) {
        seen.add(k);
        incl.set(k, (incl.get(k) ?? 0) + dt);
      }
    }
  });
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  return { totalMs: total, self: sorted(self), inclusive: sorted(incl) };
}

function main(): void {
  const file = process.argv[2];
  if (!file) throw new Error('usage: bench/cpu-profile.ts FILE.cpuprofile [top]');
  const top = Number(process.argv[3] ?? 25);
  const s = summarise(JSON.parse(readFileSync(file, 'utf8')) as Profile);
  const line = ([k, ms]: [string, number]) => `${ms.toFixed(0).padStart(8)} ms ${((100 * ms) / s.totalMs).toFixed(1).padStart(5)} %  ${k}`;
  console.log(`${path.basename(file)}: ${s.totalMs.toFixed(0)} ms sampled`);
  console.log('self time:');
  for (const e of s.self.slice(0, top)) console.log(line(e));
  console.log('inclusive time:');
  for (const e of s.inclusive.slice(0, top)) console.log(line(e));
}

if (import.meta.url === `file://${process.argv[1]}`) main();
