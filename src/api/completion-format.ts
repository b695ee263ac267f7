// OpenAI's legacy completions shapes: logprobs objects (the echoed prompt's and the generated
// tokens'), best_of ranking. (What the chat route shares with completions is in generation.ts.)
import type { RequestResult, TokenLogprob } from '../queue/request.ts';

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

/** best_of: the mean log-probability per generated token (OpenAI ranks candidates by it); no token ranks last. */
export function meanLogprob(c: NonNullable<RequestResult['completion']>): number {
  const lps = c.logprobs ?? [];
  if (lps.length === 0) return -Infinity;
  return lps.reduce((s, l) => s + l.logprob, 0) / lps.length;
}
