// Requests as they travel through a session's log: validated before they are accepted, plain JSON in Redis.
import type { SamplingParams } from '../text/sampling.ts';

/**
 * An append's text with its middle already tokenized (by the API's tokenizer threads): the text cut
 * at its first and last non-space→space boundary (splitAtBoundaries in text-stream.ts). The worker
 * tokenizes the session's held-back text + head and the tail, so the tokens are exactly those of
 * the same append sent as `text`.
 */
export interface TextPieces {
  head: string;
  /** Tokens of the text between head and tail. */
  ids: number[];
  tail: string;
}

/** Exactly one of text, ids and pieces. */
export interface IngestRequest {
  kind: 'ingest';
  /** Text (tokenized by the worker, exactly across chunk boundaries) or token ids. */
  text?: string;
  ids?: number[];
  /** Text whose long middle the API tokenized (see TextPieces); held-back text works as with `text`. */
  pieces?: TextPieces;
  /** Also tokenize text held back at the end (a trailing partial word); set for the last chunk. */
  flush?: boolean;
  /** Return the mean negative log-likelihood and perplexity of the request's tokens in each segment they fall in (the partial last one too). */
  score?: boolean;
}

export interface GenerateRequest {
  kind: 'generate';
  /** Appended to the session first (the prompt); the session's held-back text is flushed. */
  text?: string;
  ids?: number[];
  maxTokens: number;
  sampling: SamplingParams;
  stop: string[];
  /** Also return each generated token's log-probability and this many top alternatives (0..5). */
  logprobs?: number;
  /** Score the prompt too (OpenAI's echo with logprobs): each prompt token's log-probability and this many top alternatives (0..5). */
  promptLogprobs?: number;
}

/** Log-probabilities under the model's distribution (before temperature, top-k/p and penalties). */
export interface TokenLogprob {
  logprob: number;
  top: { id: number; logprob: number }[];
}

export type SessionRequest = IngestRequest | GenerateRequest;

/** An accepted request as a worker reads it from the session's log (session-log.ts). */
export interface LoggedRequest {
  sessionId: string;
  seq: number;
  request: SessionRequest;
  /** The websocket append number it was accepted as, if any. */
  clientSeq?: number;
  /** Its submitter waits for the result: the final commit keeps it in the session's results. */
  wantResult?: boolean;
  /** Its submitter went away before it ran: it is completed without running (a generation stops). */
  cancelled?: boolean;
  /** Ids generated before the last commit, kept so a resumed generation returns the whole text. */
  generated?: number[];
  /** Their log-probabilities, when the request asked for them. */
  generatedLogprobs?: TokenLogprob[];
  /** The prompt's scores (promptLogprobs), kept with the first generated ids: a resumed generation does not score its prompt again. */
  promptLogprobs?: (TokenLogprob | null)[];
  /** When it was accepted into the log (ms since the epoch, Redis's clock; absent for entries logged before this field existed). */
  acceptedAt?: number;
}

export interface SegmentScore {
  /** The segment's number in the session (1-based); the last may be the partial one, not committed yet. */
  segment: number;
  /** The request's tokens scored in it (a token with nothing before it in the session is not). */
  tokens: number;
  nll: number;
  perplexity: number;
}

/** 'cancelled': the submitter went away and the generation stopped between tokens. */
export type FinishReason = 'length' | 'stop' | 'eos' | 'cancelled';

export interface RequestResult {
  sessionId: string;
  seq: number;
  /** True when a retry found the request already applied: counters are current, text may be absent. */
  alreadyApplied?: boolean;
  tokensIngested: number;
  segmentsCommitted: number;
  tokensGenerated: number;
  pendingTokens: number;
  promptTokens: number;
  scores?: SegmentScore[];
  completion?: { ids: number[]; text: string; finishReason: FinishReason; logprobs?: TokenLogprob[] };
  /** With promptLogprobs: the prompt's tokens and their scores (null where nothing precedes the token). */
  prompt?: { ids: number[]; logprobs: (TokenLogprob | null)[] };
  error?: { code: string; message: string };
}

/** Progress published while a request runs (Redis pub/sub, per session). */
export type ProgressEvent =
  | { type: 'segment'; seq: number; segmentsCommitted: number; tokensIngested: number; requestTokens: number; requestConsumed: number }
  | { type: 'token'; seq: number; index: number; id: number; text: string; logprob?: TokenLogprob }
  | { type: 'done'; seq: number; result: RequestResult }
  /** The session failed at request `seq`: it and every later request wait until the owner resets the session. */
  | { type: 'failed'; seq: number; failure: { seq: number; code: string; message: string; clientSeq?: number } }
  /** The owner reset a failed session: 'drop' discarded requests from..to (none for 'retry'). */
  | { type: 'reset'; seq: number; action: 'retry' | 'drop'; from: number; to: number };

/**
 * Why a worker could not apply a request (RequestResult.error.code, the session's failure code):
 * a client mistake completes the request with the error, the others fail the session
 * (session-runner.ts); the API maps each to a status (api/errors.ts fromCode).
 */
export type RequestErrorCode = 'empty_prompt' | 'invalid_request' | 'lost_progress' | 'model_not_loaded' | 'session_not_found';

export class RequestError extends Error {
  constructor(
    readonly code: RequestErrorCode,
    message: string,
  ) {
    super(message);
  }
}
