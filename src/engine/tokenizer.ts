// Thin wrapper over @huggingface/tokenizers so the rest of the engine deals in number[].
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';

export interface TextTokenizer {
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
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
  };
}

/** The parts of a tokenizer.json that decide whether words can be encoded one at a time. */
interface TokenizerJson {
  normalizer?: unknown;
  pre_tokenizer?: { type?: string; add_prefix_space?: boolean; use_regex?: boolean } | null;
  model?: { type?: string; dropout?: number | null };
  added_tokens?: { content: string }[];
}

/**
 * GPT-2's pre-tokenizer split, as @huggingface/tokenizers' ByteLevel pre-tokenizer applies it
 * (use_regex): byte-level BPE then encodes each piece on its own.
 */
export const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Distinct pieces remembered per tokenizer (about 100 bytes each); the cache starts over when full. */
export const WORD_CACHE_SIZE = 65536;

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
  let cache = new Map<string, readonly number[]>();
  const piece = (p: string): readonly number[] | undefined => {
    const hit = cache.get(p);
    if (hit) return hit;
    // A piece is cached only if the split gives it back whole when it stands alone.
    const alone = p.match(GPT2_SPLIT);
    if (!alone || alone.length !== 1 || alone[0] !== p) return undefined;
    const ids = plain(p);
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
