// OpenAI's legacy completions shapes, built from request results: logprobs objects (the echoed
// prompt's and the generated tokens'), finish reasons, usage, best_of ranking.
import type { FinishReason, RequestResult, TokenLogprob } from '../queue/request.ts';
import { ApiError, fromCode } from './errors.ts';

export interface OpenAiLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/**
 * The logprobs object of `ids` (the first text_offset is `offset`); a null entry has nothing before it
 * to predict it (the first token of a fresh session), and gets null as OpenAI's echo did.
 */
export function openAiLogprobs(ids: readonly number[], lps: readonly (TokenLogprob | null)[], text: (id: number) => string, offset: number): OpenAiLogprobs {
  const out: OpenAiLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let at = offset;
  ids.forEach((id, i) => {
    const t = text(id);
    const lp = lps[i] ?? null;
    out.tokens.push(t);
    out.token_logprobs.push(lp ? lp.logprob : null);
    out.top_logprobs.push(lp ? Object.fromEntries(lp.top.map((c) => [text(c.id), c.logprob])) : null);
    out.text_offset.push(at);
    at += t.length;
  });
  return out;
}

/** Two logprobs objects one after the other (the echoed prompt's, then the generated tokens'). */
export function concatLogprobs(a: OpenAiLogprobs, b: OpenAiLogprobs): OpenAiLogprobs {
  return {
    tokens: [...a.tokens, ...b.tokens],
    token_logprobs: [...a.token_logprobs, ...b.token_logprobs],
    top_logprobs: [...a.top_logprobs, ...b.top_logprobs],
    text_offset: [...a.text_offset, ...b.text_offset],
  };
}

export function openAiFinish(f: FinishReason): 'stop' | 'length' {
  // 'cancelled' reaches no client: its submitter is gone.
  return f === 'length' ? 'length' : 'stop';
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** A finished request's completion, or the API error it ended with. */
export function completionOf(r: RequestResult): NonNullable<RequestResult['completion']> {
  if (r.error) throw fromCode(r.error.code, r.error.message);
  if (!r.completion) {
    throw new ApiError('internal', 'the request was applied but its completion text was not kept (a retried request); the session holds the result', null, 'completion_lost');
  }
  return r.completion;
}

/** best_of: the mean log-probability per generated token (OpenAI ranks candidates by it); no token ranks last. */
export function meanLogprob(c: NonNullable<RequestResult['completion']>): number {
  const lps = c.logprobs ?? [];
  if (lps.length === 0) return -Infinity;
  return lps.reduce((s, l) => s + l.logprob, 0) / lps.length;
}
