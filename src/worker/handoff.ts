// A session's next request may start before its previous one has landed in Redis. An ingest request
// knows, as soon as it has its tokens, what the session will hold after it (tail, held-back text);
// its memory comes when its last segment has run, a few milliseconds before its final commit lands.
// It offers these to the session's next request waiting in the same process, which tokenizes
// meanwhile and sends its segments to the engine the moment that memory exists: the session keeps its
// place in the engine's batches instead of sitting out the commit, the job handoff and a session
// read (bench/gpu-suite.sh, bench/results/gpu-6). Its own commits wait for the previous request's last one (each is a
// compare-and-set on the version that one wrote); if the previous request does not apply, the next
// one starts again the ordinary way, from what Redis holds.
import type { ChainRef } from '../engine/engine.ts';
import type { SessionRecord } from '../state/session-record.ts';

export interface Handoff {
  /** The request that offers it. */
  seq: number;
  /**
   * The session as that request's final commit will leave it (tail, held-back text, counters, seqs),
   * but for its version and its state (empty here: `memory` is the state).
   */
  record: SessionRecord;
  /**
   * Its last segment's memory (the state it will commit) and when it was made (performance.now(), for
   * the turn-gap metric); rejects if the request stops before.
   */
  memory: Promise<{ state: Float32Array; at: number }>;
  /** The record its final commit wrote; rejects if the request did not apply. */
  applied: Promise<SessionRecord>;
  /**
   * Its segments' chain in the engine (when it has one): the next request may continue from it before
   * `memory` is here, inside the engine thread (engine.ts, ChainRef).
   */
  chain?: ChainRef;
}

/** Thrown by the next request when the one it continued from did not apply: it starts again from Redis. */
export class HandoffLost extends Error {
  constructor(seq: number, cause: unknown) {
    super(`request ${seq}, continued from, did not apply: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = 'HandoffLost';
  }
}
