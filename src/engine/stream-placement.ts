// Which engine thread serves a stream (a session): the one it was placed on while it streams, or for a
// new stream the fullest one below packStreams, else the one with the fewest, so sessions that start
// together split into even cohorts (after filling threads to packStreams one by one). Unnamed requests
// go to the least busy thread (a KV cache's steps go to the thread that holds it: kv-registry.ts).
import { performance } from 'node:perf_hooks';
import type { Lane } from './engine-lane.ts';

export class StreamPlacement {
  /** Per stream: its thread, its requests in flight, and when it last sent or was answered. */
  private readonly placed = new Map<string, { lane: Lane; busy: number; at: number }>();
  /** Streams placed on each thread (by lane index). */
  private readonly streams: number[];
  /** When idle streams are next let go. */
  private pruneAt = 0;

  constructor(
    private readonly lanes: readonly Lane[],
    /** Fill threads up to this many streams before spreading (0: spread at once). */
    private readonly packStreams: number,
    /** How long a stream keeps its thread after its last request. */
    private readonly idleMs: number,
  ) {
    this.streams = lanes.map(() => 0);
  }

  /** The thread for a request of `stream` (counted as busy until done()). */
  laneFor(stream: string | undefined): Lane {
    const { lanes } = this;
    if (lanes.length === 1) return lanes[0]!;
    if (stream === undefined) return lanes.reduce((a, b) => (b.inFlight < a.inFlight ? b : a));
    const now = performance.now();
    const known = this.placed.get(stream);
    if (known) {
      known.at = now;
      known.busy++;
      return known.lane;
    }
    if (now >= this.pruneAt) {
      for (const [s, p] of this.placed) {
        if (p.busy === 0 && now - p.at > this.idleMs) {
          this.placed.delete(s);
          this.streams[p.lane.index]!--;
        }
      }
      this.pruneAt = now + this.idleMs;
    }
    const count = (l: Lane) => this.streams[l.index]!;
    const open = lanes.filter((l) => count(l) < this.packStreams);
    const lane = open.length > 0
      ? open.reduce((a, b) => (count(b) > count(a) ? b : a))
      : lanes.reduce((a, b) => (count(b) < count(a) || (count(b) === count(a) && b.inFlight < a.inFlight) ? b : a));
    this.streams[lane.index]!++;
    this.placed.set(stream, { lane, busy: 1, at: now });
    return lane;
  }

  /** A stream's request is over (answered, failed or aborted): its idle time counts from now. */
  done(stream: string | undefined): void {
    const p = stream === undefined ? undefined : this.placed.get(stream);
    if (!p) return;
    p.busy--;
    p.at = performance.now();
  }
}
