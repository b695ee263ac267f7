// Thin wrapper over @huggingface/tokenizers so the rest of the engine deals in number[].
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';

export interface TextTokenizer {
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
  /** One token's bytes (UTF-8; a byte-level token may hold part of a character). */
  tokenBytes?(id: number): number[];
}

export async function loadTokenizer(tokenizerFile: string): Promise<TextTokenizer> {
  const json = JSON.parse(await readFile(tokenizerFile, 'utf8')) as TokenizerJson;
  // tokenizer_config.json is optional; it carries special-token names and decode flags.
  const configFile = path.join(path.dirname(tokenizerFile), 'tokenizer_config.json');
  const config = existsSync(configFile) ? (JSON.parse(await readFile(configFile, 'utf8')) as object) : {};
  const tok = new Tokenizer(json, config);
  const plain = (text: string) => tok.encode(text, { add_special_tokens: false }).ids;
  return {
    encode: rememberingWords(json, plain) ?? plain,
    decode: (ids) => tok.decode([...ids], { skip_special_tokens: false }),
    tokenBytes: tokenBytesOf(json, (id) => tok.decode([id], { skip_special_tokens: false })),
  };
}

/**
 * A token's bytes: for byte-level BPE its vocab string read back through the byte alphabet (a token
 * may end inside a multi-byte character, which its decoded text cannot show), for added tokens and
 * other tokenizers the UTF-8 of its decoded text.
 */
function tokenBytesOf(json: TokenizerJson & { decoder?: { type?: string } | null }, decode: (id: number) => string): (id: number) => number[] {
  const utf8 = new TextEncoder();
  const byteOf = new Map(byteAlphabet().map((c, b) => [c, b]));
  const byteLevel = json.decoder?.type === 'ByteLevel' && json.model?.type === 'BPE';
  const pieces = new Map<number, string>();
  if (byteLevel) for (const [piece, id] of Object.entries(json.model?.vocab ?? {})) pieces.set(id, piece);
  for (const t of (json.added_tokens ?? []) as { id?: number; content: string }[]) if (t.id !== undefined) pieces.delete(t.id);
  return (id) => {
    const piece = pieces.get(id);
    if (piece !== undefined) {
      const bytes: number[] = [];
      for (const ch of piece) {
        const b = byteOf.get(ch);
        if (b === undefined) return Array.from(utf8.encode(decode(id)));
        bytes.push(b);
      }
      return bytes;
    }
    return Array.from(utf8.encode(decode(id)));
  };
}

/** The parts of a tokenizer.json that decide whether words can be encoded one at a time. */
export interface TokenizerJson {
  normalizer?: unknown;
  pre_tokenizer?: { type?: string; add_prefix_space?: boolean; use_regex?: boolean } | null;
  model?: {
    type?: string;
    dropout?: number | null;
    vocab?: Record<string, number>;
    merges?: (string | [string, string])[];
    continuing_subword_prefix?: string | null;
    end_of_word_suffix?: string | null;
    byte_fallback?: boolean;
    ignore_merges?: boolean;
  };
  added_tokens?: { content: string }[];
}

/** GPT-2's byte-level alphabet: each byte as a printable character (bytes_to_unicode). */
function byteAlphabet(): string[] {
  const out = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return out;
}

/**
 * Byte-level BPE of one pre-tokenizer piece: the piece's UTF-8 bytes as the byte alphabet, then the
 * lowest-ranked adjacent pair merged (leftmost first) until no pair has a merge; the library does the
 * same, but through its general pipeline (normalizer, offsets, an Encoding object) for every call
 * (with this, 2.3x on the Brown corpus read once: bench/results/cpu-4/tokenizer-throughput.txt). Undefined for a model with options
 * this does not follow (the library encodes then), and for a piece whose symbols are not all in the vocab.
 */
export function bytePairEncoder(model: NonNullable<TokenizerJson['model']>): ((piece: string) => number[] | undefined) | undefined {
  if (!model.vocab || !model.merges || model.continuing_subword_prefix || model.end_of_word_suffix || model.byte_fallback || model.ignore_merges) return undefined;
  const vocab = new Map(Object.entries(model.vocab));
  const ranks = new Map<string, number>();
  model.merges.forEach((m, rank) => {
    const [a, b] = typeof m === 'string' ? m.split(' ') : m;
    // Byte-level symbols never hold a space, so "a b" is an unambiguous pair key.
    if (a !== undefined && b !== undefined && !ranks.has(`${a} ${b}`)) ranks.set(`${a} ${b}`, rank);
  });
  const alphabet = byteAlphabet();
  const utf8 = new TextEncoder();
  return (piece) => {
    const symbols = Array.from(utf8.encode(piece), (b) => alphabet[b]!);
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const r = ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      symbols.splice(best, 2, symbols[best]! + symbols[best + 1]!);
    }
    const ids = new Array<number>(symbols.length);
    for (let i = 0; i < symbols.length; i++) {
      const id = vocab.get(symbols[i]!);
      if (id === undefined) return undefined;
      ids[i] = id;
    }
    return ids;
  };
}

/**
 * GPT-2's pre-tokenizer split, as @huggingface/tokenizers' ByteLevel pre-tokenizer applies it
 * (use_regex): byte-level BPE then encodes each piece on its own.
 */
export const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Distinct pieces remembered per tokenizer (about 100 bytes each); the cache starts over when full. */
export const WORD_CACHE_SIZE = 65536;

/**
 * Longer pieces (a run of letters or digits with no space: a URL, base64, a long number) go to the
 * library and are not remembered: our merge loop is quadratic in a piece's length (40,000 letters took
 * 18.7 s with this cap lifted: the bound in test/tokenizer.test.ts), and such pieces rarely repeat, so remembering them would only
 * let one client fill the cache with megabytes.
 */
export const MAX_REMEMBERED_CHARS = 64;

/**
 * Byte-level BPE encodes each pre-tokenizer piece on its own, so a piece's ids can be remembered:
 * running text repeats its words (Zipf), so most pieces skip the library's byte mapping and merges
 * (about 3x on the Brown corpus read once: bench/tokenizer-throughput.ts).
 * Only for tokenizers whose output is that concatenation: no normalizer, a ByteLevel pre-tokenizer
 * with its regex and without a prefix space, a BPE model without dropout. A text holding an added
 * token, or a piece that the split would not give back whole on its own, goes the plain way.
 */
function rememberingWords(json: TokenizerJson, plain: (text: string) => number[]): ((text: string) => number[]) | undefined {
  const pre = json.pre_tokenizer;
  if (json.normalizer || !pre || pre.type !== 'ByteLevel' || pre.add_prefix_space || pre.use_regex === false) return undefined;
  if (json.model?.type !== 'BPE' || json.model.dropout) return undefined;
  const added = (json.added_tokens ?? []).map((t) => t.content).filter((c) => c.length > 0);
  const bpe = bytePairEncoder(json.model);
  let cache = new Map<string, readonly number[]>();
  const piece = (p: string): readonly number[] | undefined => {
    const hit = cache.get(p);
    if (hit) return hit;
    // A piece is encoded alone only if the split gives it back whole when it stands alone.
    const alone = p.match(GPT2_SPLIT);
    if (!alone || alone.length !== 1 || alone[0] !== p) return undefined;
    if (p.length > MAX_REMEMBERED_CHARS) return plain(p);
    const ids = bpe?.(p) ?? plain(p);
    if (cache.size >= WORD_CACHE_SIZE) cache = new Map();
    cache.set(p, ids);
    return ids;
  };
  return (text) => {
    if (added.some((a) => text.includes(a))) return plain(text);
    const out: number[] = [];
    for (const m of text.matchAll(GPT2_SPLIT)) {
      const ids = piece(m[0]);
      if (!ids) return plain(text);
      for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
    }
    return out;
  };
}

/**
 * Streams text for ids appended one at a time. Byte-level BPE can split a
 * multi-byte UTF-8 character across tokens; decoding such a prefix yields a
 * trailing U+FFFD, so text is held back until the character completes.
 */
export class IncrementalDetokenizer {
  private readonly ids: number[] = [];
  private emitted = '';

  constructor(private readonly tokenizer: Pick<TextTokenizer, 'decode'>) {}

  /** Adds one id and returns the newly completed text ('' if none yet). */
  push(id: number): string {
    this.ids.push(id);
    const text = this.tokenizer.decode(this.ids);
    if (text.endsWith('\uFFFD')) return '';
    return this.take(text);
  }

  /** Returns whatever is left, incomplete sequences included. */
  flush(): string {
    return this.take(this.tokenizer.decode(this.ids));
  }

  private take(text: string): string {
    // Earlier text can only change if decoding is not prefix-stable; emit the new suffix only.
    const delta = text.startsWith(this.emitted) ? text.slice(this.emitted.length) : text;
    this.emitted = text;
    return delta;
  }
}
