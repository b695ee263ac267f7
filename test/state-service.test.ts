// The service end to end (real redis-server, in-process worker, app.inject) on the tiny packages of
// every architecture (test/fixtures: the five state-conditioned ones and the RMT), with no code of
// theirs in the service: the model listing, chunked ingest == one ingest, generation across a segment
// boundary == the reference (segment.onnx alone, the same seeded sampler), snapshot export / import
// and fork round trips, a session's bytes constant in its input, and refusals of a stored state or a
// snapshot of the wrong size. References run in-process on the same graphs (one intra-op thread, as
// the worker's engine), so states compare bit for bit.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { samplingOf } from '../src/api/generation.ts';
import { decodeSnapshot, encodeSnapshot } from '../src/api/state-snapshot.ts';
import { greedyGenerate } from '../src/engine/greedy-generate.ts';
import { runSegmentState } from '../src/engine/rmt-runner.ts';
import { loadModelPackage, type ModelPackage } from '../src/model/model-package.ts';
import { sampleNext } from '../src/text/sampling.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { bytesOf } from './support/chunks.ts';
import { FIXTURES_DIR, STATE_PACKAGES } from './support/state-packages.ts';

const MODELS = [...STATE_PACKAGES.map((p) => ({ name: p.name, architecture: p.architecture })), { name: 'rmt-tiny-masked', architecture: 'rmt' }];

/** `n` token ids in 2..vocab-1, the same for the same seed. */
function idsOf(seed: number, n: number, vocab: number): number[] {
  let s = seed;
  return Array.from({ length: n }, () => 2 + ((s = (s * 1103515245 + 12345) >>> 0) % (vocab - 2)));
}

/** Sizes 1..max adding up to n, the same for the same seed. */
function chunkSizes(seed: number, n: number, max: number): number[] {
  let s = seed;
  const out: number[] = [];
  for (let done = 0; done < n; ) {
    const k = Math.min(n - done, 1 + ((s = (s * 1103515245 + 12345) >>> 0) % max));
    out.push(k);
    done += k;
  }
  return out;
}

describe('the service on every architecture (tiny packages)', { timeout: 300_000 }, () => {
  let h: ApiHarness;
  const pkgs = new Map<string, ModelPackage>();

  before(async () => {
    h = await startApiHarness({}, { RMT_MODELS_DIR: FIXTURES_DIR, RMT_MODELS: MODELS.map((m) => m.name).join(',') });
    for (const m of MODELS) pkgs.set(m.name, await loadModelPackage(path.join(FIXTURES_DIR, m.name), { intraOpThreads: 1 }));
  });
  after(async () => {
    await Promise.all([...pkgs.values()].map((p) => p.release()));
    await h?.close();
  });

  const call = (method: 'GET' | 'POST' | 'PUT', url: string, payload?: object | Buffer) =>
    h.app.inject({ method, url, ...(Buffer.isBuffer(payload) ? { headers: { 'content-type': 'application/octet-stream' } } : {}), ...(payload ? { payload } : {}) });
  const ok = (r: LightMyRequestResponse, status = 200) => {
    assert.equal(r.statusCode, status, r.body);
    return r.json();
  };
  const newSession = async (model: string): Promise<string> => ok(await call('POST', '/v1/sessions', { model }), 201).id;
  const append = async (id: string, ids: number[]) => ok(await call('POST', `/v1/sessions/${id}/append`, { ids }));
  const exportState = async (id: string): Promise<Buffer> => {
    const r = await call('GET', `/v1/sessions/${id}/state`);
    assert.equal(r.statusCode, 200, r.body);
    return r.rawPayload;
  };
  const assertError = (r: LightMyRequestResponse, status: number, code: string) => {
    assert.equal(r.statusCode, status, r.body);
    assert.equal(r.json().error.code, code, r.body);
  };
  /** The state after `ids` (whole segments) from `state`, as an ingest computes it: the segment_state graph at segment_length. */
  const ingestRef = async (pkg: ModelPackage, ids: number[], state: Float32Array): Promise<Float32Array> => {
    const S = pkg.segmentLength;
    for (let i = 0; i < ids.length; i += S) [state] = (await runSegmentState(pkg, [{ ids: ids.slice(i, i + S), state }], { width: S })) as [Float32Array];
    return state;
  };

  test('GET /v1/models: architecture, the state entries and the flat shape sessions carry', async () => {
    const body = ok(await call('GET', '/v1/models'));
    assert.deepEqual(body.data.map((m: { id: string }) => m.id), MODELS.map((m) => m.name));
    for (const m of MODELS) {
      const listed = body.data.find((x: { id: string }) => x.id === m.name);
      const manifest = JSON.parse(readFileSync(path.join(FIXTURES_DIR, m.name, 'model.json'), 'utf8'));
      let offset = 0;
      const entries = manifest.state.map((e: { name: string; shape: number[] }) => {
        const size = e.shape.reduce((a, b) => a * b, 1);
        offset += size;
        return { name: e.name, shape: e.shape, dtype: 'float32', offset: offset - size, size };
      });
      assert.equal(listed.architecture, m.architecture);
      assert.deepEqual(listed.state_entries, entries);
      assert.equal(listed.state_bytes, offset * 4);
      assert.deepEqual(listed.state_shape, entries.length === 1 ? entries[0].shape : [offset]);
      assert.equal(listed.memory_tokens, manifest.memory_tokens);
      assert.equal(listed.segment_length, manifest.segment_length);
      assert.deepEqual(ok(await call('GET', `/v1/models/${m.name}`)), listed);
    }
  });

  for (const m of MODELS) {
    describe(m.architecture, () => {
      test('ingest in random chunks == one ingest == the reference, bit for bit; bytes per session constant in the input', async () => {
        const pkg = pkgs.get(m.name)!;
        const S = pkg.segmentLength;
        const ids = idsOf(1, 7 * S + 11, pkg.vocabSize);
        const [one, chunked, short] = await Promise.all([newSession(m.name), newSession(m.name), newSession(m.name)]);
        const whole = await append(one, ids);
        assert.equal(whole.segments_committed, 7);
        let at = 0;
        for (const n of chunkSizes(2, ids.length, 40)) await append(chunked, ids.slice(at, (at += n)));
        await append(short, ids.slice(0, S + 11));
        const [a, b] = [await exportState(one), await exportState(chunked)];
        assert.ok(a.equals(b), 'the snapshots of one ingest and of chunks differ');
        const snap = decodeSnapshot(a);
        assert.deepEqual(snap.tail, ids.slice(7 * S));
        assert.ok(bytesOf(snap.state).equals(bytesOf(await ingestRef(pkg, ids.slice(0, 7 * S), pkg.initFlat))), 'the state is not the reference');
        // A session's state is one constant size: S + 11 tokens vs 7S + 11 (the same tail length).
        const small = decodeSnapshot(await exportState(short));
        assert.equal(small.state.byteLength, snap.state.byteLength);
        const info = ok(await call('GET', `/v1/sessions/${short}`));
        assert.equal(info.state_bytes, pkg.stateLayout.size * 4);
        assert.equal(ok(await call('GET', `/v1/sessions/${one}`)).state_bytes, info.state_bytes);
        const [sb, bb] = [await h.deps.store.storedBytes(short), await h.deps.store.storedBytes(one)];
        assert.ok(Math.abs(sb - bb) <= 16, `${S + 11} tokens: ${sb} bytes, ${7 * S + 11} tokens: ${bb} bytes`);
      });

      test('generation across a segment boundary == the reference (segment.onnx alone, the same seeded sampler)', async () => {
        const pkg = pkgs.get(m.name)!;
        const S = pkg.segmentLength;
        const id = await newSession(m.name);
        const ingested = idsOf(3, 3 * S + S - 6, pkg.vocabSize);
        await append(id, ingested);
        const before = decodeSnapshot(await exportState(id));
        const prompt = idsOf(4, 2, pkg.vocabSize);
        const NEW = 10;
        const body = { model: m.name, session_id: id, prompt, max_tokens: NEW, temperature: 1, seed: 11 };
        const r = ok(await call('POST', '/v1/completions', body));
        // The reference: the tail and prompt (S - 4 tokens) from the committed state; the 4th new token fills the segment.
        const sampling = samplingOf(body);
        const counts = new Map<number, number>();
        const ref = await greedyGenerate(pkg, [...before.tail, ...prompt], NEW, {
          state: before.state, via: 'segment',
          pick: (logits, index) => {
            const t = sampleNext(logits, sampling, counts, index);
            counts.set(t, (counts.get(t) ?? 0) + 1);
            return t;
          },
        });
        assert.ok(!ref.ids.includes(pkg.specialTokens.eos), 'the reference draws no eos (the service would stop there)');
        assert.equal(ref.segmentsCommitted, 1);
        assert.equal(r.choices[0].finish_reason, 'length');
        assert.equal(r.usage.completion_tokens, NEW);
        assert.equal(r.choices[0].text, pkg.tokenizer.decode(ref.ids), 'the generated text is not the reference\'s');
        const after = decodeSnapshot(await exportState(id));
        const all = [...before.tail, ...prompt, ...ref.ids];
        assert.deepEqual(after.tail, all.slice(S), 'the tail after the boundary');
        assert.ok(bytesOf(after.state).equals(bytesOf(await ingestRef(pkg, all.slice(0, S), before.state))), 'the committed state is not the reference');
        assert.equal(after.header.segments_committed, before.header.segments_committed + 1);
        assert.equal(after.header.tokens_generated, NEW);
      });

      test('snapshot export / import and fork round trips: the same bytes, and the same state after the same input', async () => {
        const pkg = pkgs.get(m.name)!;
        const S = pkg.segmentLength;
        const a = await newSession(m.name);
        await append(a, idsOf(5, 2 * S + 5, pkg.vocabSize));
        const snap = await exportState(a);
        const b = await newSession(m.name);
        ok(await call('PUT', `/v1/sessions/${b}/state`, snap));
        assert.ok((await exportState(b)).equals(snap), 'import then export changed the snapshot');
        const c = ok(await call('POST', `/v1/sessions/${a}/fork`), 201).id;
        assert.ok((await exportState(c)).equals(snap), 'the fork differs from its source');
        const more = idsOf(6, S + 3, pkg.vocabSize);
        for (const s of [a, b, c]) await append(s, more);
        const outs = await Promise.all([a, b, c].map(exportState));
        assert.ok(outs[1]!.equals(outs[0]!) && outs[2]!.equals(outs[0]!), 'source, import and fork went different ways');
        const from = decodeSnapshot(snap);
        const want = await ingestRef(pkg, [...from.tail, ...more].slice(0, S), from.state);
        assert.ok(bytesOf(decodeSnapshot(outs[0]!).state).equals(bytesOf(want)), 'the state after the same input is not the reference');
      });

      test('a snapshot of another model or another state size, and a stored state of the wrong size, are refused', async () => {
        const pkg = pkgs.get(m.name)!;
        const id = await newSession(m.name);
        const other = MODELS.find((x) => x.name !== m.name)!.name;
        assertError(await call('PUT', `/v1/sessions/${id}/state`, await exportState(await newSession(other))), 422, 'snapshot_model_mismatch');
        const snap = decodeSnapshot(await exportState(id));
        const size = pkg.stateLayout.size;
        const source = { model: m.name, stateDtype: 'float32' as const, tail: [], pendingText: '', tokensIngested: 0, segmentsCommitted: 0, tokensGenerated: 0 };
        // One entry short (the first), or the whole state as one flat list where the model has one entry.
        const first = pkg.stateLayout.slots[0]!;
        const wrong = pkg.stateLayout.slots.length > 1
          ? { stateShape: [size - first.size], state: snap.state.slice(first.size) }
          : { stateShape: [size], state: snap.state };
        assertError(await call('PUT', `/v1/sessions/${id}/state`, encodeSnapshot({ ...source, ...wrong })), 422, 'snapshot_shape_mismatch');
        // A stored state one float short: the session's reads refuse it.
        await h.deps.redis.hset(h.deps.store.keys.session(id), 'state', Buffer.alloc(size * 4 - 4));
        assertError(await call('GET', `/v1/sessions/${id}`), 409, 'state_mismatch');
      });
    });
  }
});
