// Writes the settings table (src/config/config.ts, the one definition) into README.md's
// Configuration section, between its header row and the next blank line:
//   node --import tsx scripts/config-table.ts
// test/config.test.ts keeps the README equal to it.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { configTable } from '../src/config/config.ts';

export const README = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../README.md');
const HEADER = '| variable | flag | default | meaning |';

/** README text with its settings table replaced by `table`. */
export function withTable(readme: string, table: string): string {
  const start = readme.indexOf(HEADER);
  if (start < 0) throw new Error(`README.md has no settings table (a line "${HEADER}")`);
  const end = readme.indexOf('\n\n', start);
  return readme.slice(0, start) + table + (end < 0 ? '\n' : readme.slice(end));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileSync(README, withTable(readFileSync(README, 'utf8'), configTable()));
  console.log(`wrote the settings table into ${README}`);
}
