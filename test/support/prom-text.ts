// Reading samples out of a Prometheus text exposition (what GET /metrics answers), for assertions.
import { spawn } from 'node:child_process';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseSamples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of the one sample named `name` whose labels are exactly `labels` (0 when there is none yet). */
export function sampleValue(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).sort();
  const hits = parseSamples(text).filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(want));
  if (hits.length > 1) throw new Error(`${hits.length} samples ${name}${JSON.stringify(labels)}`);
  return hits[0]?.value ?? 0;
}

/** A histogram's _count and _sum for these labels. */
export function histogram(text: string, name: string, labels: Record<string, string>): { count: number; sum: number } {
  return { count: sampleValue(text, `${name}_count`, labels), sum: sampleValue(text, `${name}_sum`, labels) };
}

/** The metric family names exposed (from # TYPE lines). */
export function familyNames(text: string): string[] {
  return [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!);
}

/**
 * `promtool check metrics` on an exposition: its exit code and what it printed (the problems, one a
 * line). Rejects with a message naming the package when promtool is not installed.
 */
export async function promtoolCheck(text: string): Promise<{ code: number; problems: string }> {
  const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += String(c)));
  child.stderr.on('data', (c: Buffer) => (out += String(c)));
  const code = await new Promise<number>((resolve, reject) => {
    child.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'ENOENT'
        ? new Error('promtool is not installed: it ships in the Debian package `prometheus` (apt-get install -y prometheus)')
        : err));
    child.once('close', (c) => resolve(c ?? -1));
    child.stdin.on('error', () => undefined);
    child.stdin.end(text);
  });
  return { code, problems: out.trim() };
}
