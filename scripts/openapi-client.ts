// Generates a typed TypeScript client (fetch-based, no runtime dependency) from openapi.yaml with
// @hey-api/openapi-ts: `node --import tsx scripts/openapi-client.ts OUT_DIR [SPEC]`. test/openapi.test.ts
// generates one into a temporary folder and drives the service through it.
//
// @hey-api/openapi-ts builds its output with the TypeScript 5 compiler API, which TypeScript 7 (this
// project's `typescript`, a native compiler) no longer has: the devDependency `typescript-5` (an npm
// alias of typescript@5) is what the generator gets when it imports 'typescript'. Offline: it reads
// only the spec.
import { register } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const HOOK = `
export async function resolve(specifier, context, next) {
  if (specifier === 'typescript' && context.parentURL && context.parentURL.includes('/node_modules/@hey-api/')) {
    return next('typescript-5', context);
  }
  return next(specifier, context);
}`;

export async function generateClient(outDir: string, spec = path.join(ROOT, 'openapi.yaml')): Promise<void> {
  register(`data:text/javascript,${encodeURIComponent(HOOK)}`, pathToFileURL(path.join(ROOT, 'package.json')));
  const { createClient } = await import('@hey-api/openapi-ts');
  await createClient({ input: spec, output: outDir, logs: { level: 'silent' } });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = process.argv[2];
  if (!out) {
    console.error('usage: node --import tsx scripts/openapi-client.ts OUT_DIR [SPEC]');
    process.exit(2);
  }
  await generateClient(path.resolve(out), process.argv[3] ? path.resolve(process.argv[3]) : undefined);
  console.log(`wrote ${path.resolve(out)}`);
}
