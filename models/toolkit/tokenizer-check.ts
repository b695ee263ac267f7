// Compares the toolkit's pure-Python tokenizer (used where `tokenizers` for Python is missing) with
// @huggingface/tokenizers on the same texts:
//   python3 -m rmt_toolkit encode --tokenizer T --data DATA --out /tmp/ids.json   (writes [{text, ids}])
//   node --import tsx models/toolkit/tokenizer-check.ts T /tmp/ids.json
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';

const [tokFile, idsFile] = process.argv.slice(2);
if (!tokFile || !idsFile) {
  console.error('usage: node --import tsx models/toolkit/tokenizer-check.ts <tokenizer.json> <ids.json>');
  process.exit(2);
}
const tok = new Tokenizer(JSON.parse(readFileSync(tokFile, 'utf8')), {});
const rows = JSON.parse(readFileSync(idsFile, 'utf8')) as { text: string; ids: number[] }[];
let same = 0;
let tokens = 0;
for (const [i, r] of rows.entries()) {
  const want: number[] = tok.encode(r.text, { add_special_tokens: false }).ids;
  tokens += want.length;
  const k = want.findIndex((id: number, j: number) => id !== r.ids[j]);
  if (k < 0 && want.length === r.ids.length) same++;
  else console.log(`text ${i}: differs at token ${k < 0 ? Math.min(want.length, r.ids.length) : k}: library ${want.slice(k, k + 5)} vs python ${r.ids.slice(k, k + 5)}`);
}
console.log(`${same} passed, ${rows.length - same} failed (${tokens} tokens)`);
process.exit(same === rows.length ? 0 : 1);
