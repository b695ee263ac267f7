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
  const json = JSON.parse(await readFile(tokenizerFile, 'utf8')) as object;
  // tokenizer_config.json is optional; it carries special-token names and decode flags.
  const configFile = path.join(path.dirname(tokenizerFile), 'tokenizer_config.json');
  const config = existsSync(configFile) ? (JSON.parse(await readFile(configFile, 'utf8')) as object) : {};
  const tok = new Tokenizer(json, config);
  return {
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) => tok.decode([...ids], { skip_special_tokens: false }),
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
