// Writes openapi.yaml from the running app's route schemas (no Redis or models needed: routes are
// registered against stub dependencies that are never called). test/openapi.test.ts keeps it equal,
// lints it (npm run openapi:lint) and drives a client generated from it (npm run openapi:client -- DIR).
// A new route or schema: give it an operationId, tags and a summary, and its named schemas a `title`;
// the rules that do the rest (components, shared error responses, security) are in src/api/openapi.ts.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildApp } from '../src/api/app.ts';
import type { ApiDeps } from '../src/api/deps.ts';
import { loadConfig } from '../src/config/config.ts';
import { loadCatalog } from '../src/model/model-catalog.ts';

export async function openapiYaml(): Promise<string> {
  const config = loadConfig({});
  const catalog = await loadCatalog(config.modelsDir, config.models);
  const unused = new Proxy({}, { get: () => { throw new Error('openapi generation must not touch runtime dependencies'); } });
  const deps = { config, catalog, tokenizers: new Map(), redis: unused, store: unused, queue: unused, progress: unused } as unknown as ApiDeps;
  const app = await buildApp(deps);
  await app.ready();
  const yaml = app.swagger({ yaml: true });
  await app.close();
  return yaml;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../openapi.yaml');
  writeFileSync(out, await openapiYaml());
  console.log(`wrote ${out}`);
}
