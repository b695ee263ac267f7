// The client side of a trial, through the public API only: create a session, watch it with
// GET /v1/sessions/{id}, fetch its snapshot, and decide when it has applied everything (or is stuck
// or failed). Any API replica answers; a request that fails is retried on another one.
import { setTimeout as sleep } from 'node:timers/promises';

export type Urls = () => string[];

async function tryEach<T>(urls: Urls, attemptMs: number, deadlineMs: number, fn: (base: string) => Promise<T>): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  let lastErr: unknown;
  for (let i = 0; Date.now() < deadline; i++) {
    const list = urls();
    try {
      return await fn(list[i % list.length]!);
    } catch (err) {
      lastErr = err;
      await sleep(Math.min(attemptMs, 250));
    }
  }
  throw new Error(`gave up after ${deadlineMs} ms: ${lastErr instanceof Error ? lastErr.message : String(lastErr)}`);
}

export async function createSession(urls: Urls, model: string): Promise<string> {
  return tryEach(urls, 2000, 30_000, async (base) => {
    const res = await fetch(`${base}/v1/sessions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model }), signal: AbortSignal.timeout(5000),
    });
    if (res.status !== 201 && res.status !== 200) throw new Error(`POST /v1/sessions: HTTP ${res.status} ${await res.text()}`);
    return ((await res.json()) as { id: string }).id;
  });
}

export async function getSession(base: string, id: string, timeoutMs = 2000): Promise<Record<string, unknown>> {
  const res = await fetch(`${base}/v1/sessions/${id}`, { signal: AbortSignal.timeout(timeoutMs) });
  if (!res.ok) throw new Error(`GET session: HTTP ${res.status} ${(await res.text()).slice(0, 200)}`);
  return (await res.json()) as Record<string, unknown>;
}

export async function getSnapshot(urls: Urls, id: string): Promise<Buffer> {
  return tryEach(urls, 2000, 60_000, async (base) => {
    const res = await fetch(`${base}/v1/sessions/${id}/state`, { signal: AbortSignal.timeout(10_000) });
    if (!res.ok) throw new Error(`GET state: HTTP ${res.status} ${(await res.text()).slice(0, 200)}`);
    return Buffer.from(await res.arrayBuffer());
  });
}

/** The header of a snapshot (state-snapshot format: "RMTS", u32 version, u32 header length, JSON). */
export function snapshotHeader(buf: Buffer): Record<string, unknown> | undefined {
  try {
    if (buf.subarray(0, 4).toString('ascii') !== 'RMTS') return undefined;
    return JSON.parse(buf.subarray(12, 12 + buf.readUInt32LE(8)).toString('utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Work the session reports as still to do, from whichever fields it has (the redesign adds some);
 * undefined when it reports none, and then "applied" means tokens_ingested reached the document's count.
 */
export function pendingWork(s: Record<string, unknown>): number | undefined {
  for (const k of ['pending_requests', 'queued_requests', 'pending_appends', 'unapplied_requests', 'pending_work']) {
    if (typeof s[k] === 'number') return s[k] as number;
  }
  const pairs: [string, string][] = [['accepted_seq', 'applied_seq'], ['last_seq', 'applied_seq'], ['log_seq', 'applied_seq']];
  for (const [a, b] of pairs) if (typeof s[a] === 'number' && typeof s[b] === 'number') return (s[a] as number) - (s[b] as number);
  return undefined;
}

export function failureOf(s: Record<string, unknown>): string | undefined {
  if (s.status !== 'failed') return undefined;
  const why = s.failure ?? s.failed_reason ?? s.reason ?? s.error ?? s.status_reason;
  return typeof why === 'string' ? why : JSON.stringify(why ?? s);
}

/** Polls GET /v1/sessions/{id} (replicas in turn) and remembers when the session last moved. */
export class SessionWatch {
  last?: Record<string, unknown>;
  tokens = 0;
  lastMove = Date.now();
  polls = 0;
  pollErrors = 0;
  /** Times tokens_ingested went down between two polls (state lost, e.g. Redis restarted from an older AOF). */
  backwards = 0;
  backwardsLog: { at: string; from: number; to: number }[] = [];
  private key = '';
  private timer?: NodeJS.Timeout;
  private busy = false;

  constructor(
    readonly urls: Urls,
    readonly id: string,
    readonly intervalMs = 500,
  ) {}

  start(): void {
    this.lastMove = Date.now();
    this.timer = setInterval(() => void this.poll(), this.intervalMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Seconds since tokens_ingested or the version last changed. */
  idleMs(): number {
    return Date.now() - this.lastMove;
  }

  /** Restarts the idle clock (while the session has nothing to do, waiting is not being stuck). */
  touch(): void {
    this.lastMove = Date.now();
  }

  /** Progress messages from the websocket count as movement too. */
  noteProgress(tokens: number): void {
    if (tokens > this.tokens) {
      this.tokens = tokens;
      this.lastMove = Date.now();
    }
  }

  async poll(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    const list = this.urls();
    try {
      const s = await getSession(list[this.polls++ % list.length]!, this.id);
      const tokens = Number(s.tokens_ingested ?? 0);
      const key = `${tokens}/${s.version}/${s.status}/${pendingWork(s)}`;
      if (tokens < this.tokens) {
        this.backwards++;
        this.backwardsLog.push({ at: new Date().toISOString(), from: this.tokens, to: tokens });
      }
      if (key !== this.key) {
        this.key = key;
        this.lastMove = Date.now();
      }
      this.tokens = tokens;
      this.last = s;
    } catch {
      this.pollErrors++;
    } finally {
      this.busy = false;
    }
  }
}

export type Outcome = 'applied' | 'failed' | 'stuck' | 'overshoot' | 'timeout' | 'aborted';

/**
 * Waits until the session has applied everything: pending work 0 where the session reports it, else
 * tokens_ingested equal to the document's count; the same reading twice in a row. Stuck: nothing
 * moved for stallMs. Overshoot: more tokens than the document has, and still for 5 s.
 */
export async function waitApplied(
  w: SessionWatch,
  expectedTokens: number,
  o: { stallMs: number; deadline: number; signal?: AbortSignal },
): Promise<{ outcome: Outcome; reason: string }> {
  let seen = '';
  for (;;) {
    if (o.signal?.aborted) return { outcome: 'aborted', reason: String(o.signal.reason ?? 'aborted') };
    const s = w.last;
    if (s) {
      const failed = failureOf(s);
      if (failed !== undefined) return { outcome: 'failed', reason: `session status failed: ${failed}` };
      const pending = pendingWork(s);
      const done = pending !== undefined ? pending === 0 && w.tokens >= expectedTokens : w.tokens === expectedTokens;
      const reading = `${w.tokens}/${s.version}/${pending}`;
      if (done && reading === seen) return { outcome: 'applied', reason: '' };
      if (w.tokens > expectedTokens && w.idleMs() > 5000) {
        return { outcome: 'overshoot', reason: `tokens_ingested ${w.tokens} > the document's ${expectedTokens}` };
      }
      seen = done ? reading : '';
    }
    if (w.idleMs() > o.stallMs) {
      return { outcome: 'stuck', reason: `no progress for ${Math.round(w.idleMs() / 1000)} s at tokens_ingested ${w.tokens}/${expectedTokens} (${JSON.stringify(s ?? {})})` };
    }
    if (Date.now() > o.deadline) return { outcome: 'timeout', reason: `trial time limit at tokens_ingested ${w.tokens}/${expectedTokens}` };
    await sleep(w.intervalMs);
    await w.poll();
  }
}
