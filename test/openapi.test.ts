// openapi.yaml is generated from the route schemas (scripts/openapi.ts, rules in src/api/openapi.ts);
// it must equal what the running app describes, pass redocly's recommended rules, name every
// operation, and generate a client that works against the real service.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { parse } from 'yaml';
import { openapiYaml } from '../scripts/openapi.ts';
import { finishSpec } from '../src/api/openapi.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FILE = path.join(ROOT, 'openapi.yaml');
const run = promisify(execFile);
const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'];

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;
const spec: Json = parse(readFileSync(FILE, 'utf8'));

function operations(): { path: string; method: string; op: Json }[] {
  return Object.entries<Json>(spec.paths).flatMap(([p, item]) => METHODS.filter((m) => item[m]).map((m) => ({ path: p, method: m, op: item[m] })));
}

test('openapi.yaml equals the running app (regenerate: node --import tsx scripts/openapi.ts)', async () => {
  const live = await openapiYaml();
  assert.equal(readFileSync(FILE, 'utf8'), live, 'openapi.yaml is stale');
  for (const route of ['/v1/completions', '/v1/chat/completions', '/v1/models', '/v1/sessions', '/v1/sessions/{id}/append', '/v1/sessions/{id}/fork',
    '/v1/sessions/{id}/state', '/v1/sessions/{id}/stream', '/healthz', '/readyz', '/metrics']) {
    assert.ok(live.includes(`  ${route}:`), `${route} missing from the spec`);
  }
});

test('every operation: a unique camelCase operationId, tags, a summary, security as auth.ts enforces it, errors in the Error shape', () => {
  const ids = new Set<string>();
  const tags = new Set((spec.tags as { name: string }[]).map((t) => t.name));
  assert.ok(operations().length >= 13);
  for (const { path: p, method, op } of operations()) {
    const where = `${method.toUpperCase()} ${p}`;
    assert.match(op.operationId ?? '', /^[a-z][A-Za-z0-9]*$/, `${where}: operationId`);
    assert.ok(!ids.has(op.operationId), `${where}: operationId ${op.operationId} is not unique`);
    ids.add(op.operationId);
    assert.ok(op.tags?.length > 0 && op.tags.every((t: string) => tags.has(t)), `${where}: tags`);
    assert.ok(op.summary, `${where}: summary`);
    const open = ['/healthz', '/readyz', '/metrics'].includes(p);
    assert.deepEqual(op.security, open ? [] : [{ bearer: [] }, {}], `${where}: security`);
    for (const status of ['500', '503', '4XX', '5XX', ...(open ? [] : ['401'])]) assert.ok(op.responses[status], `${where}: no ${status}`);
    for (const [status, res] of Object.entries<Json>(op.responses)) {
      if (!/^[45]/.test(status) || (p === '/readyz' && status === '503')) continue;
      assert.match(res.$ref ?? '', /^#\/components\/responses\//, `${where} ${status}: a shared error response`);
    }
  }
  for (const name of ['Session', 'Completion', 'CompletionRequest', 'Error', 'Model', 'ModelList', 'AppendRequest', 'AppendResponse']) {
    assert.ok(spec.components.schemas[name], `components.schemas.${name}`);
  }
  assert.match(spec.components.securitySchemes.bearer.description, /required when the server sets RMT_API_KEYS/i);
});

test('finishSpec refuses an operation without operationId, tags or summary, an unknown tag, two schemas under one title', () => {
  const error = { type: 'object', title: 'Error', properties: { error: { type: 'object' } } };
  const json = (schema: Json) => ({ content: { 'application/json': { schema } } });
  const doc = {
    openapi: '3.1.0', info: { title: 't', version: '1' }, components: {},
    paths: {
      '/v1/a': { get: { responses: { 200: json({ type: 'object', title: 'Thing', properties: { a: { type: 'string' } } }), '4XX': json(error) } } },
      '/v1/b': {
        post: {
          operationId: 'createB', summary: 'b', tags: ['nope'],
          responses: { 200: json({ type: 'object', title: 'Thing', properties: { b: { type: 'string' } } }), '4XX': json(error) },
        },
      },
    },
  };
  assert.throws(() => finishSpec(doc), (err: Error) => {
    for (const m of ['GET /v1/a has no operationId', 'GET /v1/a has no summary', 'GET /v1/a has no tags', 'POST /v1/b: tag "nope" is not in TAGS',
      'two different schemas are titled "Thing"']) {
      assert.ok(err.message.includes(m), `${m} missing from: ${err.message}`);
    }
    return true;
  });
  // Fixed, the same document is finished: titled schemas become components, errors shared responses.
  doc.paths['/v1/a'].get = { ...doc.paths['/v1/a'].get, operationId: 'getA', summary: 'a', tags: ['models'] } as Json;
  doc.paths['/v1/b'].post.tags = ['models'];
  doc.paths['/v1/b'].post.responses[200] = json({ type: 'object', title: 'OtherThing', properties: { b: { type: 'string' } } });
  const done = finishSpec(doc);
  assert.deepEqual(Object.keys(done.components.schemas), ['Error', 'OtherThing', 'Thing']);
  assert.deepEqual(done.paths['/v1/a'].get.responses['200'].content['application/json'].schema, { $ref: '#/components/schemas/Thing' });
  assert.deepEqual(done.paths['/v1/a'].get.responses['401'], { $ref: '#/components/responses/Unauthorized' });
  assert.deepEqual(done.paths['/v1/a'].get.security, [{ bearer: [] }, {}]);
});

test('redocly lint with the recommended rules (redocly.yaml): no error, no warning, offline', async () => {
  const cli = path.join(ROOT, 'node_modules/@redocly/cli/bin/cli.js');
  // No telemetry, no update check (both would reach the network); the lint itself reads only local files.
  const env = { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' };
  const r = await run(process.execPath, [cli, 'lint', 'openapi.yaml', '--format=json'], { cwd: ROOT, env, timeout: 120_000 }).catch((e) => e);
  const out = JSON.parse(r.stdout) as { totals: { errors: number; warnings: number }; problems: { ruleId: string; message: string }[] };
  assert.deepEqual(out.totals.errors + out.totals.warnings, 0, out.problems.map((p) => `${p.ruleId}: ${p.message}`).join('\n'));
  assert.equal(r.code ?? 0, 0);
});

/** Checks a body against the spec's schema of that operation's response, as a client would trust it. */
function validator(): (operationId: string, status: number, body: unknown) => void {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addSchema({ $id: 'spec', components: spec.components }, 'spec');
  return (operationId, status, body) => {
    const found = operations().find((o) => o.op.operationId === operationId);
    assert.ok(found, operationId);
    let res = found.op.responses[String(status)] ?? found.op.responses[`${String(status)[0]}XX`];
    assert.ok(res, `${operationId} does not declare ${status}`);
    if (res.$ref) res = spec.components.responses[res.$ref.split('/').pop()];
    const schema = res.content['application/json'].schema;
    const ref = schema.$ref ? `spec${schema.$ref}` : undefined;
    const validate = ref ? ajv.getSchema(ref)! : ajv.compile(schema);
    assert.ok(validate(body), `${operationId} ${status}: ${ajv.errorsText(validate.errors)} in ${JSON.stringify(body)}`);
  };
}

describe('a client generated from openapi.yaml (@hey-api/openapi-ts) against the service with API keys', () => {
  const TEXT = 'The Fulton County Grand Jury said Friday an investigation of recent primary election produced no evidence that any irregularities took place. ';
  let dir: string;
  let h: ApiHarness;
  let baseUrl: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let sdk: any;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let clientLib: any;
  const check = validator();

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'rmt-openapi-client-'));
    await run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'scripts/openapi-client.ts'), path.join(dir, 'api'), FILE], { cwd: ROOT, timeout: 120_000 });
    sdk = await import(pathToFileURL(path.join(dir, 'api/index.ts')).href);
    clientLib = await import(pathToFileURL(path.join(dir, 'api/client/index.ts')).href);
    h = await startApiHarness({ apiKeys: ['k1'] });
    baseUrl = await h.listen();
  });
  after(async () => {
    await h?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('its types compile and are strict (the project tsc)', async () => {
    writeFileSync(path.join(dir, 'package.json'), '{ "type": "module" }\n');
    writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'ES2022', lib: ['ES2022', 'DOM', 'DOM.Iterable'], module: 'NodeNext', moduleResolution: 'NodeNext',
        strict: true, noEmit: true, skipLibCheck: true, types: [],
      },
      include: ['*.ts', 'api/**/*.ts'],
    }));
    writeFileSync(path.join(dir, 'usage.ts'), `
import { appendToSession, createCompletion, createSession, getSession, listModels } from './api/index.js';
import { createClient, createConfig } from './api/client/index.js';

export async function usage(baseUrl: string): Promise<string> {
  const client = createClient(createConfig({ baseUrl, auth: 'k1' }));
  const models = await listModels({ client, throwOnError: true });
  const model: string = models.data.data[0]!.id;
  const s = await createSession({ client, body: { model }, throwOnError: true });
  const a = await appendToSession({ client, path: { id: s.data.id }, body: { text: 'x', perplexity: true }, throwOnError: true });
  const tokens: number = a.data.tokens + a.data.session.tokens_ingested;
  const got = await getSession({ client, path: { id: s.data.id } });
  if (got.error) return got.error.error.code ?? got.error.error.message;
  // @ts-expect-error a misspelt field is not a CompletionRequest
  await createCompletion({ client, body: { model, prompt: 'x', max_token: 4 } });
  const c = await createCompletion({ client, body: { model, prompt: [1, 2], max_tokens: 4, session_id: s.data.id }, throwOnError: true });
  return c.data.choices[0]!.text + String(tokens) + c.data.usage.total_tokens;
}
`);
    const tsc = path.join(ROOT, 'node_modules/.bin/tsc');
    const r = await run(tsc, ['-p', path.join(dir, 'tsconfig.json')], { cwd: dir, timeout: 120_000 }).catch((e) => e);
    assert.equal(r.code ?? 0, 0, `${r.stdout}${r.stderr}`);
  });

  test('models, a session, an append, the session, a completion: authenticated by the bearer scheme', async () => {
    const client = clientLib.createClient(clientLib.createConfig({ baseUrl, auth: 'k1' }));

    const models = await sdk.listModels({ client });
    assert.equal(models.response.status, 200, JSON.stringify(models.error));
    check('listModels', 200, models.data);
    const model: string = models.data.data[0].id;
    assert.deepEqual(models.data.data.map((m: { id: string }) => m.id), h.deps.catalog.list().map((m) => m.name));

    const s = await sdk.createSession({ client, body: { model } });
    assert.equal(s.response.status, 201, JSON.stringify(s.error));
    check('createSession', 201, s.data);
    assert.equal(s.data.model, model);
    const id: string = s.data.id;

    const a = await sdk.appendToSession({ client, path: { id }, body: { text: TEXT, perplexity: true } });
    assert.equal(a.response.status, 200, JSON.stringify(a.error));
    check('appendToSession', 200, a.data);
    assert.ok(a.data.tokens > 0);
    assert.equal(a.data.session.id, id);

    const got = await sdk.getSession({ client, path: { id } });
    assert.equal(got.response.status, 200, JSON.stringify(got.error));
    check('getSession', 200, got.data);
    assert.equal(got.data.tokens_ingested, a.data.session.tokens_ingested);

    const c = await sdk.createCompletion({ client, body: { model, prompt: ' The jury', max_tokens: 4, temperature: 0, session_id: id, logprobs: 2 } });
    assert.equal(c.response.status, 200, JSON.stringify(c.error));
    check('createCompletion', 200, c.data);
    assert.equal(c.data.object, 'text_completion');
    assert.equal(c.data.session_id, id);
    assert.ok(c.data.usage.completion_tokens >= 1 && c.data.usage.completion_tokens <= 4);
    assert.equal(c.data.choices[0].logprobs.tokens.length, c.data.usage.completion_tokens);

    // A session id that is not the caller's: the spec's 404 NotFound (an Error).
    const missing = await sdk.getSession({ client, path: { id: 'no-such-session' } });
    assert.equal(missing.response.status, 404);
    check('getSession', 404, missing.error);
    assert.equal(missing.error.error.code, 'session_not_found');

    const bad = await sdk.createCompletion({ client, body: { model, prompt: 'x', max_tokens: 0 } });
    assert.equal(bad.response.status, 400);
    check('createCompletion', 400, bad.error);
  });

  test('without the key: the spec\'s 401 (Unauthorized, an Error); with a wrong one too; probes stay open', async () => {
    const anonymous = clientLib.createClient(clientLib.createConfig({ baseUrl }));
    const r = await sdk.listModels({ client: anonymous });
    assert.equal(r.response.status, 401);
    assert.equal(r.data, undefined);
    check('listModels', 401, r.error);
    assert.deepEqual(r.error.error, { message: 'missing API key: send "Authorization: Bearer <key>"', type: 'authentication_error', param: null, code: 'missing_api_key' });

    const wrong = clientLib.createClient(clientLib.createConfig({ baseUrl, auth: 'not-a-key' }));
    const w = await sdk.createSession({ client: wrong, body: {} });
    assert.equal(w.response.status, 401);
    check('createSession', 401, w.error);
    assert.equal(w.error.error.code, 'invalid_api_key');

    const health = await sdk.getHealth({ client: anonymous });
    assert.equal(health.response.status, 200);
    check('getHealth', 200, health.data);
  });
});
