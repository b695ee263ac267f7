// Tokenizing long appends in the API, on the tokenizer threads, before they are queued: the job
// carries the text's middle as ids (TextPieces), so the worker's main thread, which also feeds the
// engine, only tokenizes the ends (joined to the text its session holds back).
import { splitAtBoundaries } from '../text/text-stream.ts';
import type { TokenizerPool } from '../text/tokenizer-pool.ts';
import type { TextPieces } from '../queue/request.ts';
import { apiMetrics } from './metrics.ts';

/**
 * Appends with a shorter middle are queued as text. Below it, the thread round trip and a wait
 * behind long appends in the pool buy little: 2048 chars are about 500 tokens, about 2 ms of a
 * worker's main thread at the 4 µs per token measured in service.
 */
export const PRETOKENIZE_MIN_CHARS = 2048;

/** What an ingest request carries for an append's text. */
export type IngestText = { text: string } | { pieces: TextPieces };

export interface PretokenizeLog {
  error(obj: object, msg: string): void;
}

export class Pretokenizer {
  constructor(private readonly pool: Pick<TokenizerPool, 'encode'>) {}

  /**
   * The text, or its pieces when its middle is long. If the pool fails, the text itself (logged):
   * the worker then tokenizes it, to the same ids, so a broken pool costs speed, not appends.
   * `sessionId`: the session's appends take turns with other sessions' in the pool.
   */
  async ingestText(model: string, text: string, log: PretokenizeLog, sessionId = ''): Promise<IngestText> {
    const split = text.length >= PRETOKENIZE_MIN_CHARS ? splitAtBoundaries(text) : undefined;
    if (!split || split.middle.length < PRETOKENIZE_MIN_CHARS) return { text };
    const end = apiMetrics.pretokenizeSeconds.startTimer();
    try {
      const pieces = { head: split.head, ids: await this.pool.encode(model, split.middle, sessionId), tail: split.tail };
      end({ outcome: 'pieces' });
      return { pieces };
    } catch (err) {
      end({ outcome: 'failed' });
      log.error({ err }, 'tokenizer pool failed: the append is queued as text (the worker tokenizes it)');
      return { text };
    }
  }
}
