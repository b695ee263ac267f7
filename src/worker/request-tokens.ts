// A request's tokens: what it appends to the session, from the text the session held back before it.
import type { SessionRequest } from '../queue/request.ts';
import { encodeInPieces, splitForTokenization } from '../text/text-stream.ts';
import type { TextTokenizer } from '../text/tokenizer.ts';

/**
 * Tokens of this request, derived only from the text the session held back when the request started
 * (`pendingText`), and the text to hold back after it. Pieces give the ids the same append as text
 * would: head and tail are cut at word boundaries (text-stream.ts splitAtBoundaries), so
 * pendingText + head and the middle tokenize apart exactly, and the tail splits as the whole would.
 */
export function requestTokens(
  tok: Pick<TextTokenizer, 'encode'>, pendingText: string, req: SessionRequest, maxPendingTextChars: number,
): { ids: number[]; pendingAfter: string } {
  const flush = req.kind === 'generate' || req.ids !== undefined || (req.kind === 'ingest' && req.flush === true);
  const encode = (t: string) => encodeInPieces((x) => tok.encode(x), t);
  if (req.ids !== undefined) return { ids: [...encode(pendingText), ...req.ids], pendingAfter: '' };
  if (req.kind === 'ingest' && req.pieces !== undefined) {
    const { head, ids, tail } = req.pieces;
    const before = encode(pendingText + head);
    const [ready, pending] = flush ? [tail, ''] : splitForTokenization(tail, maxPendingTextChars);
    return { ids: before.concat(ids, ready ? encode(ready) : []), pendingAfter: pending };
  }
  const text = pendingText + (req.text ?? '');
  if (flush) return { ids: encode(text), pendingAfter: '' };
  const [ready, pending] = splitForTokenization(text, maxPendingTextChars);
  return { ids: ready ? encode(ready) : [], pendingAfter: pending };
}
