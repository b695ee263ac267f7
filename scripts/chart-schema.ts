// Writes the `config` property of the Helm chart's values.schema.json from SETTINGS
// (src/config/config.ts, the one definition): one property per environment name, typed and bounded
// like the setting's parser, unknown names refused. The rest of the schema is written by hand; this
// rewrites the file in place, formatted compactly (one line per leaf object):
//   node --import tsx scripts/chart-schema.ts
// test/deploy/chart.test.ts fails when the committed schema differs from what this writes.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SETTINGS } from '../src/config/config.ts';

export const CHART_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../helm/rmt-serve');
export const SCHEMA_FILE = path.join(CHART_DIR, 'values.schema.json');

/** Settings the chart sets itself (ports, Redis, keys, model folder), so `config` refuses them. */
export const CHART_OWNED = [
  'PORT', 'HOST', 'REDIS_URL', 'RMT_API_KEYS', 'RMT_API_KEY_HASHES', 'RMT_MODELS_DIR', 'RMT_WORKER_METRICS_PORT', 'RMT_DATA_DIR',
] as const;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** The JSON schema of `config`. */
export function configSchema(): Json {
  const properties: Record<string, Json> = {};
  for (const s of Object.values(SETTINGS)) {
    if ((CHART_OWNED as readonly string[]).includes(s.env)) continue;
    // A list setting is a comma-separated string, as in the environment.
    const def = Array.isArray(s.default) ? s.default.join(',') : (s.default as Json);
    properties[s.env] = { ...s.schema, default: def, description: s.doc };
  }
  return {
    type: 'object',
    additionalProperties: false,
    description: `RMT_* settings by environment name (generated from src/config/config.ts by scripts/chart-schema.ts); not here, set by the chart: ${CHART_OWNED.join(', ')}`,
    properties,
  };
}

const isLeaf = (v: Json): boolean =>
  v !== null && typeof v === 'object' && Object.values(v).every((x) => x === null || typeof x !== 'object' || (Array.isArray(x) && x.every((y) => typeof y !== 'object')));

/** JSON with two-space indentation, but on one line each object or array that holds only scalars or is short. */
export function formatJson(v: Json, indent = ''): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  const one = (x: Json): string =>
    x !== null && typeof x === 'object'
      ? Array.isArray(x)
        ? `[${x.map(one).join(', ')}]`
        : `{${Object.entries(x).map(([k, y]) => `${JSON.stringify(k)}: ${one(y)}`).join(', ')}}`
      : JSON.stringify(x);
  if (isLeaf(v) || indent.length + one(v).length <= 100) return one(v);
  const inner = indent + '  ';
  const parts = Array.isArray(v)
    ? v.map((x) => inner + formatJson(x, inner))
    : Object.entries(v).map(([k, x]) => `${inner}${JSON.stringify(k)}: ${formatJson(x, inner)}`);
  return `${Array.isArray(v) ? '[' : '{'}\n${parts.join(',\n')}\n${indent}${Array.isArray(v) ? ']' : '}'}`;
}

/** The schema file's text with its `config` property regenerated. */
export function withConfigSchema(text: string): string {
  const schema = JSON.parse(text) as { properties: Record<string, Json> };
  schema.properties.config = configSchema();
  return formatJson(schema as unknown as Json) + '\n';
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileSync(SCHEMA_FILE, withConfigSchema(readFileSync(SCHEMA_FILE, 'utf8')));
  console.log(`wrote the config schema into ${SCHEMA_FILE}`);
}
