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
 * Tokenizes long text in pieces cut at word boundaries: the same ids as one encode() of the whole
 * (see above), with the tokenizer's working memory bounded by the piece size, not the text size.
 */
export function encodeInPieces(encode: (text: string) => number[], text: string, pieceChars = 16384): number[] {
  const out: number[] = [];
  let rest = text;
  while (rest.length > pieceChars) {
    const [ready, pending] = splitForTokenization(rest.slice(0, pieceChars), pieceChars);
    if (!ready) break; // no boundary in the window: encode the remainder whole
    for (const id of encode(ready)) out.push(id);
    rest = pending + rest.slice(pieceChars);
  }
  for (const id of encode(rest)) out.push(id);
  return out;
}
