// One trial: a fresh cluster (its own redis-server with AOF, APIs, workers), one session of
// rmt-brown-small, the document streamed over the websocket while faults are injected (none for the
// reference), wait until it is applied (or failed / stuck), then its snapshot. Every process is
// stopped in `finally`.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { injectFaults, planFaults, type FaultPlanOptions, type FaultStats } from './faults.ts';
import { Cluster } from './procs.ts';
import { rng, subSeed } from './rng.ts';
import { createSession, failureOf, getSnapshot, SessionWatch, snapshotHeader, waitApplied, type Outcome } from './session-client.ts';
import { chunkText, loadTokenizer, tokensThroughChunks, type Document } from './text.ts';
import { newStreamStats, streamChunks, type StreamStats } from './ws-stream.ts';

export interface TrialOptions {
  name: string;
  seed: number;
  doc: Document;
  chunkMin: number;
  chunkMax: number;
  windowTokens: number;
  /** Undefined: a fault-free reference run. */
  faults?: FaultPlanOptions;
  apis: number;
  workers: number;
  stallMs: number;
  timeoutMs: number;
  logsDir: string;
  model: string;
}

export interface TrialResult {
  name: string;
  seed: number;
  outcome: Outcome | 'error';
  reason: string;
  identical?: boolean;
  snapshotBytes?: number;
  snapshotSha256?: string;
  snapshotHeader?: Record<string, unknown>;
  sessionId?: string;
  tokensIngested: number;
  expectedTokens: number;
  chunks: number;
  /** The highest seq acknowledged to the client when the trial ended. */
  ackedSeq?: number;
  timeS: number;
  lastSession?: Record<string, unknown>;
  faults?: FaultStats;
  stream?: StreamStats;
  watch: { polls: number; pollErrors: number; tokensWentBack: number; backwardsLog?: { at: string; from: number; to: number }[] };
  unexpectedExits: { name: string; code: number | null; signal: string | null }[];
  logsDir: string;
  /** Worker / API log lines that look like failures (first few), for evidence. */
  logHints: string[];
  /**
   * Diagnostics only: distinct job failure reasons found in the trial's Redis append-only file
   * (BullMQ's `failedReason` field; numbers masked), with counts. Nothing in the verdict depends on it.
   */
  aofFailedReasons: Record<string, number>;
  /** Diagnostics only: members added to a `...:failed` sorted set in the AOF (BullMQ's failed job ids). */
  aofFailedJobs: string[];
}

/**
 * Values written after a `failedReason` field anywhere in the AOF (RESP: the value is two lines on),
 * and members ZADDed to keys ending in `:failed`.
 */
function scanAof(redisDir: string): { reasons: Record<string, number>; jobs: string[] } {
  const reasons: Record<string, number> = {};
  const jobs: string[] = [];
  const dir = path.join(redisDir, 'appendonlydir');
  if (!existsSync(dir)) return { reasons, jobs };
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.aof'))) {
    const lines = readFileSync(path.join(dir, f), 'latin1').split('\r\n');
    lines.forEach((l, i) => {
      if (l === 'ZADD' && lines[i + 2]?.endsWith(':failed') && lines[i + 6]) jobs.push(lines[i + 6]!);
      if (l !== 'failedReason' || !lines[i + 2]) return;
      const reason = lines[i + 2]!.replace(/\b\d+\b/g, '#').slice(0, 200);
      if (reason) reasons[reason] = (reasons[reason] ?? 0) + 1;
    });
  }
  return { reasons, jobs };
}

const HINT = /stall|fail|error|exceed|lost|conflict|unrecoverable/i;

function logHints(dir: string, names: string[]): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const n of names) {
    const f = path.join(dir, `${n}.log`);
    if (!existsSync(f)) continue;
    for (const line of readFileSync(f, 'utf8').split('\n')) {
      if (!HINT.test(line) || line.startsWith('---')) continue;
      // One line per distinct message (numbers masked).
      const key = line.replace(/"time":"[^"]*"|\d+/g, '#').slice(0, 160);
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(`${n}: ${line.slice(0, 400)}`);
      if (out.length >= 12) return out;
    }
  }
  return out;
}

export async function runTrial(o: TrialOptions): Promise<{ result: TrialResult; snapshot?: Buffer }> {
  const r = rng(subSeed(o.seed, o.name));
  const chunks = chunkText(o.doc.text, o.chunkMin, o.chunkMax, r);
  const tokensThrough = tokensThroughChunks(chunks, loadTokenizer(o.model));
  const window = Math.max(o.windowTokens, 2 * Math.max(...tokensThrough.map((t, i) => t - (tokensThrough[i - 1] ?? 0))));
  const dir = path.join(o.logsDir, o.name);
  const cluster = new Cluster({ dir, prefix: `chaos${process.pid}${o.name.replace(/\W/g, '')}`, apis: o.apis, workers: o.workers });
  const urls = () => cluster.apiUrls();
  const started = Date.now();
  const result: TrialResult = {
    name: o.name, seed: o.seed, outcome: 'error', reason: '', tokensIngested: 0, expectedTokens: o.doc.tokens, chunks: chunks.length,
    timeS: 0, watch: { polls: 0, pollErrors: 0, tokensWentBack: 0 }, unexpectedExits: [], logsDir: dir, logHints: [], aofFailedReasons: {}, aofFailedJobs: [],
  };
  let snapshot: Buffer | undefined;
  let watch: SessionWatch | undefined;
  const ac = new AbortController();
  let monitor: NodeJS.Timeout | undefined;
  try {
    await cluster.start();
    const t0 = Date.now();
    const id = await createSession(urls, o.model);
    result.sessionId = id;
    watch = new SessionWatch(urls, id);
    const w = watch;
    w.start();
    const deadline = t0 + o.timeoutMs;
    // Work acknowledged but not applied (slack: text the service holds back at a chunk's end).
    let ackedSeq = 0;
    let streamed = false;
    const slack = 256;
    const hasWork = () => (ackedSeq > 0 ? tokensThrough[ackedSeq - 1]! : 0) - w.tokens > slack;
    let streamPort: number | undefined;
    let gate: number | 'loop' | 'open' = o.faults ? 0 : 'open';
    // The cap: until every fault is done, only chunks ending by 95 % of the document (never the last) are sent.
    let capIdx = -1;
    while (capIdx + 1 < chunks.length - 1 && tokensThrough[capIdx + 1]! <= 0.95 * o.doc.tokens) capIdx++;
    const cap = capIdx >= 0 ? tokensThrough[capIdx]! : 0;
    const gateTokens = () => (gate === 'open' ? Infinity : Math.min(gate === 'loop' ? w.tokens + window : gate, cap));
    const trigger = (at: number) => Math.min(at * o.doc.tokens, cap - slack);
    const injector = o.faults
      ? injectFaults(planFaults(r, o.faults), {
          cluster, r, signal: ac.signal, started: t0, tokens: () => w.tokens, trigger,
          total: o.doc.tokens, window, setGate: (g) => (gate = g), streamPort: () => streamPort, hasWork,
        })
      : undefined;
    // Stop everything on a stuck session, a failed one, or the time limit. A session idle because the
    // injector's gate holds the client back (everything acknowledged applied, the next chunk past the
    // gate) is not stuck.
    monitor = setInterval(() => {
      const gated = ackedSeq < chunks.length && tokensThrough[ackedSeq]! > gateTokens();
      if (!streamed && gated && !hasWork()) w.touch();
      if (w.idleMs() > o.stallMs) {
        const acked = ackedSeq > 0 ? tokensThrough[ackedSeq - 1]! : 0;
        ac.abort(`stuck: no progress for ${Math.round(w.idleMs() / 1000)} s at tokens_ingested ${w.tokens}/${o.doc.tokens}, appends acknowledged through seq ${ackedSeq} (${acked} tokens)`);
      }
      else if (w.last && failureOf(w.last) !== undefined) ac.abort(`session status failed: ${failureOf(w.last)}`);
      else if (Date.now() > deadline) ac.abort('trial time limit');
    }, 500);
    let outcome: Outcome;
    let reason = '';
    try {
      result.stream = newStreamStats();
      await streamChunks({
        stats: result.stream,
        urls, sessionId: id, chunks, tokensThrough, windowTokens: window, applied: () => w.tokens, gate: gateTokens,
        onProgress: (t) => w.noteProgress(t), onConnected: (b) => (streamPort = b ? Number(new URL(b).port) : undefined),
        onAcked: (seq) => (ackedSeq = seq), rng: r, signal: ac.signal,
      });
      streamed = true;
      ({ outcome, reason } = await waitApplied(w, o.doc.tokens, { stallMs: o.stallMs, deadline, signal: ac.signal }));
    } catch (err) {
      outcome = 'aborted';
      reason = err instanceof Error ? err.message : String(err);
    }
    if (outcome === 'aborted' && ac.signal.aborted) {
      const why = String(ac.signal.reason);
      outcome = why.startsWith('stuck') ? 'stuck' : why.startsWith('session status failed') ? 'failed' : why === 'trial time limit' ? 'timeout' : 'aborted';
      reason = `${why}${w.last ? ` (last GET: ${JSON.stringify(w.last)})` : ''}`;
    }
    ac.abort('trial over');
    clearInterval(monitor);
    result.ackedSeq = ackedSeq;
    if (injector) result.faults = await injector;
    result.outcome = outcome;
    result.reason = reason;
    result.timeS = Math.round((Date.now() - t0) / 100) / 10;
    await w.poll();
    result.tokensIngested = w.tokens;
    result.lastSession = w.last;
    if (outcome === 'applied' || outcome === 'overshoot') {
      snapshot = await getSnapshot(urls, id);
      result.snapshotBytes = snapshot.length;
      result.snapshotSha256 = createHash('sha256').update(snapshot).digest('hex');
      result.snapshotHeader = snapshotHeader(snapshot);
    }
  } catch (err) {
    result.outcome = 'error';
    result.reason = err instanceof Error ? err.message : String(err);
    result.timeS = Math.round((Date.now() - started) / 100) / 10;
  } finally {
    ac.abort('trial over');
    clearInterval(monitor);
    watch?.stop();
    if (watch) result.watch = { polls: watch.polls, pollErrors: watch.pollErrors, tokensWentBack: watch.backwards, backwardsLog: watch.backwardsLog };
    await cluster.stop();
    result.unexpectedExits = cluster.unexpectedExits().map((e) => ({ name: e.name, code: e.code, signal: e.signal }));
    const aof = scanAof(path.join(dir, 'redis'));
    result.aofFailedReasons = aof.reasons;
    result.aofFailedJobs = aof.jobs;
    result.logHints = logHints(dir, [...cluster.workers.map((p) => p.name), ...cluster.apis.map((p) => p.name)]);
  }
  return { result, snapshot };
}
