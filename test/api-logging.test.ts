// pino JSON logs with a request id per request; prompts, bodies and API keys are not logged.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';

const lines: string[] = [];
const sink = new Writable({
  write(chunk, _enc, cb) {
    lines.push(...String(chunk).split('\n').filter(Boolean));
    cb();
  },
});
let h: ApiHarness;

before(async () => {
  h = await startApiHarness({ logger: { level: 'info', stream: sink }, apiKeys: ['sekret-key-123'] });
});
after(async () => {
  await h.close();
});

test('request logs carry request ids and never the prompt or the key', async () => {
  const prompt = 'Zanzibar quokka prompt text';
  const res = await h.app.inject({
    method: 'POST', url: '/v1/completions',
    headers: { authorization: 'Bearer sekret-key-123', 'content-type': 'application/json' },
    payload: { model: 'rmt-brown-lm', prompt, max_tokens: 3, temperature: 0 },
  });
  assert.equal(res.statusCode, 200, res.body);
  const bad = await h.app.inject({ method: 'POST', url: '/v1/completions', headers: { authorization: 'Bearer wrong-key-456' }, payload: {} });
  assert.equal(bad.statusCode, 401);
  const logs = lines.map((l) => JSON.parse(l) as { reqId?: string; msg?: string });
  const ids = new Set(logs.filter((l) => l.msg === 'incoming request' || l.msg === 'request completed').map((l) => l.reqId));
  assert.ok(ids.size >= 2 && [...ids].every((id) => typeof id === 'string' && id.length > 8), `request ids: ${[...ids].join(', ')}`);
  const all = lines.join('\n');
  for (const secret of ['Zanzibar', 'quokka', 'sekret-key-123', 'wrong-key-456']) assert.ok(!all.includes(secret), `logs contain ${secret}`);
});
