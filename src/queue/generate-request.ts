// The one source of the limits and defaults every way in shares (POST /v1/completions,
// POST /v1/chat/completions, the websocket's generate message, the CLI's generate), and the one
// builder of a GenerateRequest: the same request gets the same answer whichever way it came. Each
// edge validates its own input into these values first (with its own error shape); the builder then
// asserts the invariants. The OpenAI-compatible REST contract is the reference: where the
// websocket used to differ (max_tokens up to 8192, 16 stop sequences, seed 0 when none was sent) it
// now follows REST.
import { DEFAULT_SAMPLING, validateSampling, type SamplingParams } from '../text/sampling.ts';
import type { GenerateRequest } from './request.ts';

/** Most tokens one request may generate (max_tokens, max_completion_tokens, generate.max_tokens). */
export const MAX_TOKENS = 4096;

/** max_tokens when none is sent: OpenAI's legacy completions default (a short continuation). */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16;
/** max_completion_tokens / max_tokens of a chat completion when neither is sent (a whole reply). */
export const DEFAULT_CHAT_MAX_TOKENS = 256;
/** generate.max_tokens on the websocket when none is sent: a continuation, like /v1/completions. */
export const DEFAULT_STREAM_MAX_TOKENS = DEFAULT_COMPLETION_MAX_TOKENS;

/** Most stop sequences a request may carry (OpenAI's limit). */
export const MAX_STOP_SEQUENCES = 4;

/**
 * Sampling when a field is not sent: temperature 1, top_p 1, no top_k or penalties (text/sampling.ts);
 * the seed is random unless sent, or 0 for greedy decoding (generation.ts uint32Seed).
 */
export { DEFAULT_SAMPLING };

export interface GenerateFields {
  /** The prompt appended first (absent: generate from what the session holds). */
  text?: string;
  ids?: number[];
  maxTokens: number;
  sampling: SamplingParams;
  stop: readonly string[];
  /** Generated tokens' log-probabilities with this many alternatives (0..5). */
  logprobs?: number;
  /** The prompt's scores (echo with logprobs), with this many alternatives (0..5). */
  promptLogprobs?: number;
}

/** A GenerateRequest within the shared limits; throws a RangeError naming the field otherwise. */
export function generateRequest(f: GenerateFields): GenerateRequest {
  if (!Number.isSafeInteger(f.maxTokens) || f.maxTokens < 0 || f.maxTokens > MAX_TOKENS) {
    throw new RangeError(`max_tokens must be an integer in [0, ${MAX_TOKENS}], got ${f.maxTokens}`);
  }
  if (f.stop.length > MAX_STOP_SEQUENCES) throw new RangeError(`at most ${MAX_STOP_SEQUENCES} stop sequences, got ${f.stop.length}`);
  for (const [name, v] of [['logprobs', f.logprobs], ['prompt logprobs', f.promptLogprobs]] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 5)) throw new RangeError(`${name} must be an integer in [0, 5], got ${v}`);
  }
  return {
    kind: 'generate',
    ...(f.text !== undefined ? { text: f.text } : {}),
    ...(f.ids !== undefined ? { ids: f.ids } : {}),
    maxTokens: f.maxTokens,
    sampling: validateSampling(f.sampling),
    stop: [...f.stop],
    ...(f.logprobs !== undefined ? { logprobs: f.logprobs } : {}),
    ...(f.promptLogprobs !== undefined ? { promptLogprobs: f.promptLogprobs } : {}),
  };
}
