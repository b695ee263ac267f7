// The service benches' documents: a text file cut into per-session documents of an exact number of
// tokens, or deterministic synthetic English (bench/service-stream.ts, bench/tokenizer-throughput.ts).
import { readFileSync } from 'node:fs';
import { loadCatalog } from '../src/model/model-catalog.ts';
import { GPT2_SPLIT, loadTokenizer } from '../src/text/tokenizer.ts';

/** Measured with the shipped Brown tokenizer on this text: about 4.3 characters per token. */
export const CHARS_PER_TOKEN = 4.3;

export const WORDS = ('the of and to a in that is was he for it with as his on be at by this had not are but from or have an they which one you were ' +
  'her all she there would their we him been has when who will more no if out so said what up its about into than them can only other new some ' +
  'could time these two may then do first any my now such like our over man me even most made after also did many before must through back years ' +
  'where much your way well down should because each just those people how too little state good very make world still own see men work long get ' +
  'here between both life being under never day same another know while last might us great old year off come since against go came right used take three').split(' ');

/**
 * A text file as its tokenizer pieces (GPT-2's pre-tokenizer split; byte-level BPE encodes each on its
 * own) with each piece's token count, so a session's document can be cut at an exact number of tokens:
 * cut by characters, the sessions' documents differed by 7 % (64 sessions) and 12 % (256) in tokens,
 * and a level's end ran on the few longest (run 7: end time against tokens, correlation 0.97 at 64).
 */
// The promise is kept, not its value: a level asks for all its documents at once, and every call made
// before the first finished used to split and count the whole text again (n times at n sessions: 109 s
// of a 64-session run on the development VM, and run 14's 256-session level did not start in its call).
type Pieces = Promise<{ text: string[]; tokens: Uint16Array }>;

/**
 * A level's document for session i of n: `textFile`'s text from the session's own offset (wrapping) for
 * exactly `tokens` tokens (counted with `model`'s tokenizer), else synthetic text.
 */
export function documentSource(textFile: string | undefined, modelsDir: string, model: string): (i: number, n: number, tokens: number) => Promise<string> {
  if (!textFile) return async (i, _n, tokens) => syntheticText(i + 1, tokens);
  const corpus = readFileSync(textFile, 'utf8');
  let pieces: Pieces | undefined;
  const piecesOf = (): Pieces =>
    (pieces ??= (async () => {
      const tok = await loadTokenizer((await loadCatalog(modelsDir, [model])).get(model)!.tokenizerFile);
      const split = corpus.match(GPT2_SPLIT) ?? [];
      return { text: split, tokens: Uint16Array.from(split, (p) => tok.encode(p).length) };
    })());
  return async (i, n, tokens) => {
    const { text, tokens: counts } = await piecesOf();
    const out: string[] = [];
    let k = Math.floor((i * text.length) / n);
    for (let have = 0; have < tokens; k = (k + 1) % text.length) {
      out.push(text[k]!);
      have += counts[k]!;
    }
    return out.join('');
  };
}

/** Deterministic English-like text of about `tokens` tokens, from `words` (the whole list by default). */
export function syntheticText(seed: number, tokens: number, words: readonly string[] = WORDS): string {
  let x = (seed * 2654435761) >>> 0 || 1;
  const parts: string[] = [];
  let chars = 0;
  const want = tokens * CHARS_PER_TOKEN;
  while (chars < want) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const w = words[(x >>> 8) % words.length]!;
    parts.push(w);
    chars += w.length + 1;
    if ((x >>> 3) % 13 === 0) parts.push(x % 2 ? '.' : ',');
  }
  return parts.join(' ');
}

/** `text` in pieces of `n` characters (the appends). */
export function chunksOf(text: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += n) out.push(text.slice(i, i + n));
  return out;
}
