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
