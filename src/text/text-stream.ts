// Exact tokenization of text that arrives in chunks.
//
// Byte-level BPE (GPT-2 pre-tokenizer) never merges across the boundary between a non-space character
// and the whitespace after it: every pre-token pattern (` ?letters`, ` ?digits`, ` ?other`) stops at
// whitespace, and matching restarts there. So text cut at the last such boundary tokenizes, in two
// pieces, into exactly the tokens of the whole: chunking cannot change what the model reads.

/**
 * Splits `text` into [ready, pending]: `ready` is safe to tokenize now, `pending` (from the last
 * non-space→space boundary on) waits for more text. A run longer than `maxPending` without such a
 * boundary is released anyway, so a client cannot make the held-back text grow without bound (the
 * only case where chunking may change tokens).
 */
export function splitForTokenization(text: string, maxPending: number): [ready: string, pending: string] {
  for (let i = text.length - 1; i > 0; i--) {
    if (/\s/u.test(text[i]!) && !/\s/u.test(text[i - 1]!)) {
      if (text.length - i > maxPending) break;
      return [text.slice(0, i), text.slice(i)];
    }
  }
  return text.length > maxPending ? [text, ''] : ['', text];
}

/**
 * Cuts text at non-space→space boundaries into pieces of at most `pieceChars` (a window without a
 * boundary makes the rest one piece): tokenized one by one, they give the ids of the whole (above).
 */
export function piecesAtBoundaries(text: string, pieceChars: number): string[] {
  const out: string[] = [];
  // Windows are slices at an offset: re-joining the rest into a new string per piece would copy the
  // whole remainder each time (quadratic, and garbage the size of the text per piece).
  let start = 0;
  while (text.length - start > pieceChars) {
    const [ready] = splitForTokenization(text.slice(start, start + pieceChars), pieceChars);
    if (!ready) break; // no boundary in the window: the remainder is one piece
    out.push(ready);
    start += ready.length;
  }
  out.push(text.slice(start));
  return out;
}

/**
 * Tokenizes long text in pieces cut at word boundaries: the same ids as one encode() of the whole
 * (see above), with the tokenizer's working memory bounded by the piece size, not the text size.
 */
export function encodeInPieces(encode: (text: string) => number[], text: string, pieceChars = 16384): number[] {
  const out: number[] = [];
  for (const piece of piecesAtBoundaries(text, pieceChars)) for (const id of encode(piece)) out.push(id);
  return out;
}

/** Text cut at its first and last non-space→space boundary (see splitAtBoundaries). */
export interface BoundarySplit {
  head: string;
  middle: string;
  tail: string;
}

function isBoundary(text: string, i: number): boolean {
  return /\s/u.test(text[i]!) && !/\s/u.test(text[i - 1]!);
}

/**
 * Cuts `text` at its first and last non-space→space boundary (an index i >= 1 with text[i]
 * whitespace and text[i-1] not). Both cuts stay boundaries whatever text comes before `head`, so
 * encode(before + head) ++ encode(middle) ++ encode(tail) = encode(before + text): the middle can be
 * tokenized elsewhere (the API's tokenizer threads) while head and tail, the parts that text held
 * back in the session can join, stay text. The tail has no boundary after its first char, so
 * splitForTokenization(tail) holds all of it back, or releases all of it when it is longer than
 * maxPending, exactly as it would split the whole text. undefined when text has fewer than two
 * boundaries (nothing in the middle).
 */
export function splitAtBoundaries(text: string): BoundarySplit | undefined {
  let first = 0;
  for (let i = 1; i < text.length; i++) {
    if (isBoundary(text, i)) {
      first = i;
      break;
    }
  }
  if (first === 0) return undefined;
  for (let i = text.length - 1; i > first; i--) {
    if (isBoundary(text, i)) return { head: text.slice(0, first), middle: text.slice(first, i), tail: text.slice(i) };
  }
  return undefined;
}
