// One stream connection's backpressure. Bytes of messages received but not yet applied by a worker
// (or rejected) are counted; over MAX_UNAPPLIED_BYTES the socket is paused (ws pause(): the TCP
// socket stops being read, so the client's sends back up in TCP) until 'done' progress events for
// earlier appends bring the count under half of it. While paused, the session's appliedSeq is also
// polled, so a lost pub/sub message cannot keep a connection paused forever. With
// @fastify/websocket's 4 MB maxPayload, a connection holds at most about MAX_UNAPPLIED_BYTES + 2 * 4 MB
// of client text. An overload refusal stops reading too, for the retry time.
import { streamStats } from './stream-stats.ts';

/** Per connection: bytes received and not yet applied before reading from the socket pauses. */
export const MAX_UNAPPLIED_BYTES = 8 * 1024 * 1024;
const POLL_MS = 500;

/** The socket's flow control (ws pause() and resume()). */
export interface Pausable {
  pause(): void;
  resume(): void;
}

export class Backpressure {
  private unappliedBytes = 0;
  private unappliedCharCount = 0;
  // Our submitted-not-applied appends, in queue-seq order: bytes and chars to release.
  private readonly inflight: { q: number; bytes: number; chars: number }[] = [];
  // Queue seqs known to be applied (done events arrive in queue order per session).
  private appliedQ: number;
  private paused = false;
  private poll: NodeJS.Timeout | undefined;
  /** Appends are refused until then (performance.now()): the service was overloaded. */
  private overloadedUntil = 0;
  /** The connection closed: the socket is not resumed any more. */
  private stopped = false;

  constructor(
    private readonly socket: Pausable,
    appliedSeq: number,
    /** The session's appliedSeq field, read while paused. */
    private readonly readAppliedSeq: () => Promise<string | null>,
  ) {
    this.appliedQ = appliedSeq;
  }

  /** Text of accepted appends that no worker has applied yet (acks report it). */
  get unappliedChars(): number {
    return this.unappliedCharCount;
  }

  /** A frame arrived: its bytes count until released. */
  hold(bytes: number): void {
    this.unappliedBytes += bytes;
    if (this.unappliedBytes > MAX_UNAPPLIED_BYTES) this.setPaused(true);
  }

  /** Bytes (and an accepted append's chars) no longer held: handled without being queued, or applied. */
  release(bytes: number, chars = 0): void {
    this.unappliedBytes -= bytes;
    this.unappliedCharCount -= chars;
    if (this.paused && this.unappliedBytes <= MAX_UNAPPLIED_BYTES / 2) this.setPaused(false);
  }

  /** An append was accepted as queue seq `q`: its bytes and chars stay held until a worker applied it. */
  track(q: number, bytes: number, chars: number): void {
    this.inflight.push({ q, bytes, chars });
    this.unappliedCharCount += chars;
  }

  /** Queue seq `q` (and so every earlier one) was applied: release what those appends held. */
  applied(q: number): void {
    if (q > this.appliedQ) this.appliedQ = q;
    while (this.inflight.length > 0 && this.inflight[0]!.q <= this.appliedQ) {
      const e = this.inflight.shift()!;
      this.release(e.bytes, e.chars);
    }
  }

  /** Releases what is known applied already: a done event may have raced ahead of the submit's reply. */
  catchUp(): void {
    this.applied(this.appliedQ);
  }

  /** Whether an earlier overload's pause is still running (appends are refused until it ends). */
  get overloaded(): boolean {
    return performance.now() < this.overloadedUntil;
  }

  /** Stops reading for `ms` after an overload refusal: TCP holds the client back meanwhile. */
  pauseForOverload(ms: number): void {
    this.overloadedUntil = performance.now() + ms;
    streamStats.overloaded++;
    this.socket.pause();
    setTimeout(() => {
      if (!this.stopped && !this.paused) this.socket.resume();
    }, ms).unref();
  }

  /** The connection closed: no more polling, and the socket stays as it is. */
  stop(): void {
    this.stopped = true;
    if (this.paused) {
      streamStats.paused--;
      clearInterval(this.poll);
      this.paused = false;
    }
  }

  private setPaused(p: boolean): void {
    if (p === this.paused) return;
    this.paused = p;
    if (p) {
      streamStats.paused++;
      streamStats.pausesTotal++;
      this.socket.pause();
      this.poll = setInterval(() => {
        this.readAppliedSeq().then((v) => this.applied(Number(v ?? 0)), () => undefined);
      }, POLL_MS);
      this.poll.unref();
    } else {
      streamStats.paused--;
      clearInterval(this.poll);
      this.poll = undefined;
      if (!this.stopped) this.socket.resume();
    }
  }
}
