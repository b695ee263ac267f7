// What applying a request is given by its worker turn (session-runner.ts): the engine and store, the
// turn's lease, hooks back to the turn, and where the request starts. Shared by the dispatcher
// (apply-request.ts) and the two appliers (apply-ingest.ts, apply-generate.ts).
import type { Engine } from '../engine/engine.ts';
import type { ProgressEvent, TokenLogprob } from '../queue/request.ts';
import type { CommitLease, SessionStore } from '../state/session-store.ts';
import type { SessionRecord } from '../state/session-record.ts';
import type { TextTokenizer } from '../text/tokenizer.ts';
import type { Handoff } from './handoff.ts';

export interface ApplyContext {
  engine: Engine;
  store: SessionStore;
  tokenizer(model: string): TextTokenizer;
  maxPendingTextChars: number;
  /** Ingest commits at most every this many segments or milliseconds (default: every segment). */
  commitEvery?: { segments: number; ms: number };
  /** The worker turn's lease on the session: every commit is refused once another worker holds it. */
  lease?: CommitLease;
}

export interface ApplyHooks {
  progress(ev: ProgressEvent): void;
  /** Persists ids generated so far (with each commit) so a retry can return the whole completion. */
  saveGenerated(ids: number[], logprobs?: TokenLogprob[], prompt?: (TokenLogprob | null)[]): Promise<void>;
  /** An ingest request offers the session's next request a start before it has landed (handoff.ts). */
  offer?(h: Handoff): void;
  /** A request that continued from an offer sent its segments after the session sat idle this long. */
  continued?(idleMs: number): void;
  /** Its segments continued the previous request's chain inside the engine thread (engine.ts, ChainRef). */
  continuedInEngine?(): void;
  /** True once the submitter went away: a generation stops before its next token (finish reason 'cancelled'). */
  cancelled?(): boolean;
}

/**
 * Where a request starts: the session as just read (undefined: read it here), or an offer of the request
 * before it. `eager`: commit after its first segment (the first request of a worker's turn: a worker that
 * dies soon after taking the session still leaves progress, so its start is not counted as one without
 * progress — acquire.lua — unless the request itself kills workers before its first segment).
 */
export type RequestStart = { stored?: SessionRecord | null; eager?: boolean } | { handoff: Handoff };
