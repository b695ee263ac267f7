// A session's next request may start before its previous one has landed in Redis. An ingest request
// knows, as soon as it has its tokens, what the session will hold after it (tail, held-back text);
// its memory comes when its last segment has run, a few milliseconds before its final commit lands.
// It offers these to the session's next request waiting in the same process, which tokenizes
// meanwhile and sends its segments to the engine the moment that memory exists: the session keeps its
// place in the engine's batches instead of sitting out the commit, the job handoff and a session
// read (bench/gpu-suite.sh, bench/results/gpu-6). Its own commits wait for the previous request's last one (each is a
// compare-and-set on the version that one wrote); if the previous request does not apply, the next
// one starts again the ordinary way, from what Redis holds.
import { performance } from 'node:perf_hooks';
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

/**
 * Offers the session's next request a start and returns the calls that settle the
 * offer: the memory once the last segment ran, the record once the final commit landed, or lost.
 */
export function offerNext(
  offer: (h: Handoff) => void, rec: SessionRecord, seq: number,
  after: { tail: number[]; pendingText: string; consumed: number; addSegments: number; addTokens: number },
  chain?: ChainRef,
): { memory(state: Float32Array): void; applied(r: SessionRecord): void; lost(err: unknown): void } {
  let setMemory!: (m: { state: Float32Array; at: number }) => void;
  let failMemory!: (e: unknown) => void;
  let setApplied!: (r: SessionRecord) => void;
  let failApplied!: (e: unknown) => void;
  const memory = new Promise<{ state: Float32Array; at: number }>((res, rej) => ((setMemory = res), (failMemory = rej)));
  const applied = new Promise<SessionRecord>((res, rej) => ((setApplied = res), (failApplied = rej)));
  // Nobody may take the offer: its rejections must not count as unhandled.
  memory.catch(() => undefined);
  applied.catch(() => undefined);
  offer({
    seq,
    record: {
      ...rec, state: new Float32Array(0), tail: [...after.tail], pendingText: after.pendingText,
      segmentsCommitted: rec.segmentsCommitted + after.addSegments, tokensIngested: rec.tokensIngested + after.addTokens,
      curSeq: seq, curOffset: after.consumed, appliedSeq: seq,
    },
    memory,
    applied,
    ...(chain ? { chain } : {}),
  });
  return {
    memory: (state) => setMemory({ state, at: performance.now() }),
    applied: (r) => setApplied(r),
    lost: (err) => {
      const lost = new HandoffLost(seq, err);
      failMemory(lost);
      failApplied(lost);
    },
  };
}
