// Execution provider and precision choices of the engine, with the real onnxruntime-node and the
// shipped packages: fp16 graphs (half-precision KV cache), the state-only advance(), and how a
// CUDA worker that cannot start says why (or falls back to the CPU only when told to). The CUDA
// success path needs a GPU: bench/engine-limit.ts and the device runs in BENCHMARKS.md cover it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CUDA_PROVIDER_FILES, PROVIDER_MARKER, cudaPreflight, explainCudaFailure, missingProviderLibraries } from '../src/engine/cuda-check.ts';
import { startEngine, type Engine } from '../src/engine/engine.ts';
import { PACKAGE_DIR, maxAbsDiff } from './helpers.ts';

const MODELS_DIR = path.dirname(PACKAGE_DIR);
const SMALL = 'rmt-brown-small';
const ids = (n: number, from = 40) => Array.from({ length: n }, (_, i) => from + ((i * 37) % 3000));

describe('fp16 graphs', () => {
  let fp16: Engine;
  let fp32: Engine;
  before(async () => {
    const base = { modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048 };
    [fp16, fp32] = await Promise.all([startEngine({ ...base, precision: 'fp16' }), startEngine(base)]);
  });
  after(async () => {
    await Promise.all([fp16?.close(), fp32?.close()]);
  });

  test('load with float32 state and agree with the fp32 graphs to half precision', async () => {
    assert.deepEqual(fp16.device(), { executionProvider: 'cpu', precision: 'fp16' });
    const state = fp32.model(SMALL).initState;
    const [a, b] = await Promise.all([fp16.segment(SMALL, ids(128), state), fp32.segment(SMALL, ids(128), state)]);
    assert.equal(a.nextState.length, b.nextState.length);
    const d = maxAbsDiff(a.nextState, b.nextState);
    // Half precision through 4 layers: about 1e-2 here; the state must stay near, not equal.
    assert.ok(d > 0 && d < 0.05, `fp16 vs fp32 state max abs diff ${d}`);
  });

  test('decode over a half-precision KV cache continues what prefill computes', async () => {
    const state = fp16.model(SMALL).initState;
    const prompt = ids(20);
    const whole = await fp16.prefill(SMALL, [...prompt, 77, 78], state);
    const part = await fp16.prefill(SMALL, prompt, state);
    await fp16.decode(SMALL, part.kv, 77);
    const step = await fp16.decode(SMALL, part.kv, 78);
    const d = maxAbsDiff(step.logits, whole.logits);
    assert.ok(d < 0.05, `decode after prefill vs one prefill: logits max abs diff ${d}`);
    fp16.releaseKv(part.kv);
    fp16.releaseKv(whole.kv);
  });
});

describe('advance (state only)', () => {
  let engine: Engine;
  before(async () => {
    engine = await startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048 });
  });
  after(() => engine?.close());

  test('returns the same next memory as segment(), batched or not', async () => {
    const state = engine.model(SMALL).initState;
    const rows = [ids(128), ids(50, 900), ids(1, 7)];
    const full = await Promise.all(rows.map((r) => engine.segment(SMALL, r, state)));
    const adv = await Promise.all(rows.map((r) => engine.advance(SMALL, r, state)));
    rows.forEach((_, i) => assert.ok(maxAbsDiff(adv[i]!, full[i]!.nextState) <= 1e-6, `row ${i}: advance != segment`));
    await assert.rejects(engine.advance(SMALL, [], state), /advance\(rmt-brown-small\): 0 ids, expected 1\.\.128/);
  });
});

describe('CUDA start', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rmt-cuda-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('preflight names missing provider files and a provider built for another onnxruntime', () => {
    if (process.platform !== 'linux' || process.arch !== 'x64') {
      assert.match(cudaPreflight('1.29.0', dir)[0]!, /linux x64 only/);
      return;
    }
    assert.match(cudaPreflight('1.29.0', dir)[0]!, /CUDA provider not installed: libonnxruntime_providers_cuda\.so, libonnxruntime_providers_shared\.so missing .*npm run cuda:install/);
    for (const f of CUDA_PROVIDER_FILES) writeFileSync(path.join(dir, f), 'x');
    assert.deepEqual(cudaPreflight('1.29.0', dir), [], 'no marker: nothing to hold against it yet');
    writeFileSync(path.join(dir, PROVIDER_MARKER), JSON.stringify({ onnxruntime: '1.22.0' }));
    assert.match(cudaPreflight('1.29.0', dir)[0]!, /wrong CUDA provider build: .* onnxruntime 1\.22\.0, but onnxruntime-node is 1\.29\.0/);
    writeFileSync(path.join(dir, PROVIDER_MARKER), JSON.stringify({ onnxruntime: '1.29.0' }));
    assert.deepEqual(cudaPreflight('1.29.0', dir), []);
  });

  test('a provider whose libraries the loader cannot find is explained by name', (t) => {
    // A real ELF library that needs one missing library, built with the system compiler.
    const cc = spawnSync('cc', ['--version']);
    if (cc.error || process.platform !== 'linux') return t.skip('needs a C compiler on linux');
    const lib = path.join(dir, 'libcudart-missing-test.so');
    const dep = path.join(dir, 'librmtfake.so');
    writeFileSync(path.join(dir, 'a.c'), 'int f(void){return 1;}\n');
    assert.equal(spawnSync('cc', ['-shared', '-fPIC', '-o', dep, path.join(dir, 'a.c')]).status, 0);
    assert.equal(spawnSync('cc', ['-shared', '-fPIC', '-o', lib, path.join(dir, 'a.c'), '-Wl,--no-as-needed', `-L${dir}`, '-lrmtfake']).status, 0);
    rmSync(dep);
    copyFileSync(lib, path.join(dir, CUDA_PROVIDER_FILES[0]));
    writeFileSync(path.join(dir, PROVIDER_MARKER), JSON.stringify({ onnxruntime: '1.29.0' }));
    assert.deepEqual(missingProviderLibraries(dir), ['librmtfake.so']);
    const msg = explainCudaFailure('Failed to load library libonnxruntime_providers_cuda.so', '1.29.0', dir);
    assert.match(msg, /^CUDA execution provider failed to start: Failed to load library .*; libraries not found by the loader: librmtfake\.so; put the CUDA 13 and cuDNN 9 libraries on LD_LIBRARY_PATH .*; set RMT_CPU_FALLBACK=1/);
  });

  test('a CUDA engine that cannot start fails with the reason, not on the CPU', async (t) => {
    // Device 63 does not exist on any host, so this fails with or without a GPU.
    await assert.rejects(
      startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cuda', deviceId: 63, maxBatch: 4, maxBatchTokens: 512 }),
      (err: Error) => {
        t.diagnostic(err.message);
        assert.match(err.message, /CUDA execution provider (cannot|failed to) start: /);
        assert.match(err.message, /set RMT_CPU_FALLBACK=1 to run on the CPU instead/);
        return true;
      },
    );
  });

  test('with cpuFallback it runs the fp32 graphs on the CPU and says why', async () => {
    const engine = await startEngine({
      modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cuda', deviceId: 63, precision: 'fp16', cpuFallback: true, intraOpThreads: 1, maxBatch: 4, maxBatchTokens: 512,
    });
    try {
      const device = engine.device();
      assert.equal(device.executionProvider, 'cpu');
      assert.equal(device.precision, 'fp32');
      assert.match(device.fallbackReason ?? '', /CUDA execution provider (cannot|failed to) start: /);
      const out = await engine.advance(SMALL, ids(10), engine.model(SMALL).initState);
      assert.equal(out.length, 16 * 256);
    } finally {
      await engine.close();
    }
  });
});
