// The one source of the limits and defaults every way in shares (POST /v1/completions,
// POST /v1/chat/completions, the websocket's generate message): the same request gets the same answer
// whichever transport carries it. The OpenAI-compatible REST contract is the reference: where the
// websocket used to differ (max_tokens up to 8192, 16 stop sequences, seed 0 when none was sent) it
// now follows REST.
import { DEFAULT_SAMPLING } from '../text/sampling.ts';

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
