// openapi.yaml is generated from the route schemas; it must equal what the running app describes.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { openapiYaml } from '../scripts/openapi.ts';

const FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../openapi.yaml');

test('openapi.yaml equals the running app (regenerate: node --import tsx scripts/openapi.ts)', async () => {
  const live = await openapiYaml();
  assert.equal(readFileSync(FILE, 'utf8'), live, 'openapi.yaml is stale');
  for (const route of ['/v1/completions', '/v1/chat/completions', '/v1/models', '/v1/sessions', '/v1/sessions/{id}/append', '/v1/sessions/{id}/fork',
    '/v1/sessions/{id}/state', '/v1/sessions/{id}/stream', '/healthz', '/readyz', '/metrics']) {
    assert.ok(live.includes(`  ${route}:`), `${route} missing from the spec`);
  }
});
