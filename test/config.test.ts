// One typed config: environment, flags over environment, clear errors naming the setting.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, SETTINGS, configTable, loadConfig } from '../src/config/config.ts';
import { engineThreads } from '../src/worker/runtime.ts';
import { readFileSync } from 'node:fs';
import { README, withTable } from '../scripts/config-table.ts';

test('defaults, environment, and flags over environment', () => {
  const d = loadConfig({});
  assert.equal(d.maxBatch, 32);
  assert.deepEqual(d.models, ['rmt-brown-lm', 'rmt-brown-small']);
  const e = loadConfig({ RMT_MAX_BATCH: '8', RMT_MODELS: 'a, b' });
  assert.equal(e.maxBatch, 8);
  assert.deepEqual(e.models, ['a', 'b']);
  const f = loadConfig({ RMT_MAX_BATCH: '8' }, ['--max-batch', '16', '--redis-url=redis://h:1']);
  assert.equal(f.maxBatch, 16);
  assert.equal(f.redisUrl, 'redis://h:1');
});

test('bad values are refused with the variable or flag named', () => {
  assert.throws(() => loadConfig({ RMT_MAX_BATCH: '0' }), (e: unknown) => e instanceof ConfigError && /RMT_MAX_BATCH: expected an integer in \[1, 4096\], got "0"/.test(e.message));
  assert.throws(() => loadConfig({}, ['--execution-provider', 'tpu']), /--execution-provider: expected one of cpu, cuda, got "tpu"/);
  assert.throws(() => loadConfig({ RMT_LOCK_MS: '12abc' }), /RMT_LOCK_MS/);
});

test('the settings table documents every setting', () => {
  const table = configTable();
  for (const s of Object.values(SETTINGS)) assert.ok(table.includes(`\`${s.env}\``), `${s.env} missing from the table`);
});

test('RMT_ENGINE_THREADS: 0 means 2 on cuda and 1 on cpu; a number is taken as it is', () => {
  assert.equal(engineThreads(loadConfig({ RMT_EXECUTION_PROVIDER: 'cuda' })), 2);
  assert.equal(engineThreads(loadConfig({})), 1);
  assert.equal(engineThreads(loadConfig({ RMT_EXECUTION_PROVIDER: 'cuda', RMT_ENGINE_THREADS: '3' })), 3);
  assert.equal(engineThreads(loadConfig({ RMT_ENGINE_THREADS: '2' })), 2);
  assert.throws(() => loadConfig({ RMT_ENGINE_THREADS: '17' }), /RMT_ENGINE_THREADS/);
});

test('RMT_ENGINE_TURNS: the engine threads take turns on the device only when it is 1', () => {
  assert.equal(loadConfig({}).engineTurns, false);
  assert.equal(loadConfig({ RMT_ENGINE_TURNS: '0' }).engineTurns, false);
  assert.equal(loadConfig({ RMT_ENGINE_TURNS: '1' }).engineTurns, true);
  assert.throws(() => loadConfig({ RMT_ENGINE_TURNS: 'sometimes' }), /RMT_ENGINE_TURNS/);
});

test('README.md\'s settings table is the generated one (node --import tsx scripts/config-table.ts)', () => {
  const readme = readFileSync(README, 'utf8');
  assert.equal(withTable(readme, configTable()), readme, 'README.md settings table is stale');
});
