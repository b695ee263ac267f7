// Scores a request's tokens: log p(token | every token before it in the session), through any number of
// segments (the memory carried across them) and the partial segment at the end, which is scored
// without being committed (a later request completes and commits it, scoring only its own tokens).
//
// A session's tokens are cut into segments of S; a segment is written to memory once the token after
// it arrives, so a session that has any token keeps a tail of 1..S of them. A chunk (a segment, or
// the final partial tail) is scored from the memory before it:
// - token t >= 1 of the chunk by the chunk's own positions (the segment graph's token_logprobs, or
//   the decode graph's logits when top alternatives are wanted: those need the whole distribution);
// - token 0 by the last position of the chunk before it, in this same pass. The old tail that opens
//   the first chunk is the session's own (not this request's), so a request's first token always has
//   its predictor; only the first token of a fresh session has none (null, as OpenAI's echo gives).
import type { Engine } from '../engine/engine.ts';
import type { ModelInfo } from '../model/model-spec.ts';
import type { SegmentScore, TokenLogprob } from '../queue/request.ts';
import { tokenLogprob } from './token-logprob.ts';

export interface ScoredChunk {
  /** The memory after the chunk (what advance() would return). */
  nextState: Float32Array;
}

export class TokenScorer {
  /** One entry per request token scored so far, in order (null: nothing precedes it). */
  readonly logprobs: (TokenLogprob | null)[] = [];
  /** Segment number (1-based, as the session counts them) of each scored token. */
  private readonly segmentOf: number[] = [];
  /** Logits at the last token scored: they predict the next chunk's first token. */
  private carry: Float32Array | undefined;

  /**
   * `requestStart`: how many tokens of the first chunk are the session's (its old tail) rather than
   * this request's; `top`: top alternatives per token (0 = the token's own log-probability only).
   */
  constructor(
    private readonly engine: Engine,
    private readonly model: ModelInfo,
    private readonly stream: string,
    private requestStart: number,
    private readonly top: number,
  ) {}

  /**
   * Scores one chunk from `state`; `segment` is its number in the session. `needState`: return the
   * memory after it (a full segment about to be committed); the final partial tail needs none.
   */
  async chunk(ids: readonly number[], state: Float32Array, segment: number, needState: boolean): Promise<ScoredChunk | undefined> {
    const skip = this.requestStart;
    this.requestStart = 0;
    const record = (t: number, lp: TokenLogprob | null) => {
      if (t < skip) return;
      this.logprobs.push(lp);
      this.segmentOf.push(segment);
    };
    const first = (): TokenLogprob | null => (this.carry ? tokenLogprob(this.carry, ids[0]!, this.top) : null);
    if (this.top === 0) {
      // The segment graph: each position's token log-probability, the last position's logits, the memory.
      const out = await this.engine.segment(this.model.name, ids, state, this.stream);
      record(0, first());
      for (let t = 1; t < ids.length; t++) record(t, { logprob: out.tokenLogprobs[t]!, top: [] });
      this.carry = out.logits;
      return needState ? { nextState: out.nextState } : undefined;
    }
    // Whole distributions: the decode graph, one token at a time (a KV cache over [memory; chunk]).
    record(0, first());
    let { logits, kv } = await this.engine.prefill(this.model.name, [ids[0]!], state);
    try {
      for (let t = 1; t < ids.length; t++) {
        record(t, tokenLogprob(logits, ids[t]!, this.top));
        ({ logits } = await this.engine.decode(this.model.name, kv, ids[t]!));
      }
    } finally {
      this.engine.releaseKv(kv);
    }
    this.carry = logits;
    return needState ? { nextState: await this.engine.advance(this.model.name, ids, state, this.stream) } : undefined;
  }

  /** Per-segment summaries of the scored tokens that have a predictor (mean NLL and perplexity). */
  segmentScores(): SegmentScore[] {
    const out: SegmentScore[] = [];
    this.logprobs.forEach((lp, i) => {
      if (!lp) return;
      const seg = this.segmentOf[i]!;
      let s = out[out.length - 1];
      if (!s || s.segment !== seg) out.push((s = { segment: seg, tokens: 0, nll: 0, perplexity: 0 }));
      s.tokens++;
      s.nll -= lp.logprob;
    });
    for (const s of out) {
      s.nll /= s.tokens;
      s.perplexity = Math.exp(s.nll);
    }
    return out;
  }
}
