// The fp16 decode path of the small package run end to end (batched prefill of two rows, two batched
// decode steps over the half-precision KV caches, then prefill/decodeStep of one sequence), digested:
// SHA-256 over every logit and every KV cache's bits. Run as a script it prints
// {"float16Array": <whether this runtime has Float16Array>, "digest": "..."}; test/fp16.test.ts runs
// it with and without Float16Array (node --[no-]js-float16array) and wants the same digest.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModelPackage } from '../../src/model/model-package.ts';
import { decodeBatch, prefillBatch } from '../../src/engine/batch-decode.ts';
import type { KvArray } from '../../src/engine/kv-cache.ts';
import { decodeStep, prefill } from '../../src/engine/sequence-decode.ts';
import { PACKAGE_DIR } from '../helpers.ts';

export async function fp16Digest(): Promise<string> {
  const pkg = await loadModelPackage(PACKAGE_DIR, { precision: 'fp16', intraOpThreads: 1 });
  try {
    const hash = createHash('sha256');
    const add = (a: Float32Array | KvArray) => {
      if (!(a instanceof Float32Array || a instanceof Uint16Array)) throw new Error(`unexpected ${Object.prototype.toString.call(a)}`);
      hash.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    };
    const state = pkg.initState.memory!;
    const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => from + ((i * 37) % 3000));
    const rows = await prefillBatch(pkg, [{ ids: ids(9, 40), state }, { ids: ids(5, 900), state }]);
    for (const r of rows) add(r.logits), add(r.kv.data);
    for (const token of [77, 78]) {
      for (const l of await decodeBatch(pkg, rows.map((r) => ({ token, kv: r.kv })))) add(l);
    }
    for (const r of rows) add(r.kv.data);
    let one = await prefill(pkg, ids(12, 7), state);
    add(one.logits), add(one.kv.data);
    one = await decodeStep(pkg, 79, one.kv);
    add(one.logits), add(one.kv.data);
    return hash.digest('hex');
  } finally {
    await pkg.release();
  }
}

if (path.resolve(process.argv[1] ?? '') === fileURLToPath(import.meta.url)) {
  const float16Array = typeof (globalThis as { Float16Array?: unknown }).Float16Array === 'function';
  process.stdout.write(`${JSON.stringify({ float16Array, digest: await fp16Digest() })}\n`);
}
