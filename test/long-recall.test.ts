// Long recall through the service: each sample's facts are followed by exactly D full segments of
// held-out Brown noise, appended as token ids in chunks over HTTP, then one fact's question asked
// greedily on the session. The samples are bench/recall-service.ts's (test/support/recall-samples.ts),
// at sizes two cores afford: one fact 256 segments back (32,768 tokens, twice rmt-brown-small's card's
// longest length), and five facts stored at once, 64 segments back, for rmt-brown-recall5 (binding).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { heldOutText } from './support/brown.ts';
import { askRecall } from './support/recall-client.ts';
import { RecallSampler, type RecallTask } from './support/recall-samples.ts';

// Greedy decoding is deterministic: seed 1's samples below are ones each model answers (for
// rmt-brown-small, seed 2's first is not), so these are checks of these samples, not accuracy figures
// (bench/recall-service.ts measures those).
const CASES = [
  { model: 'rmt-brown-small', distance: 256, facts: 1, expected: [['Fred', 'hallway'], ['Sandra', 'kitchen'], ['Mary', 'bathroom'], ['Jeff', 'garden']] },
  { model: 'rmt-brown-recall5', distance: 64, facts: 5, expected: [['Jeff', 'kitchen'], ['Fred', 'kitchen'], ['Sandra', 'bathroom'], ['Sandra', 'garden']] },
] as const;
const SEED = 1;

for (const { model, distance, facts, expected } of CASES) {
  describe(`long recall through the service: ${model}`, { timeout: 180_000 }, () => {
    let h: ApiHarness;
    let base: string;

    before(async () => {
      h = await startApiHarness({}, { RMT_MODELS: model });
      base = await h.listen();
    });

    after(async () => {
      await h?.close();
    });

    test(`${facts} fact(s), ${distance} segments of noise, then the question: each of ${expected.length} samples answered`, async () => {
      const m = h.deps.catalog.get(model)!;
      const sampler = new RecallSampler(h.deps.tokenizers.get(model)!, m.task as RecallTask, m.segmentLength, heldOutText());
      const samples = expected.map((_, i) => sampler.sample(SEED, distance, facts, i));
      assert.deepEqual(samples.map((s) => [s.target.name, s.target.place]), expected);
      for (const s of samples) {
        assert.equal(s.facts.length, facts);
        assert.equal(new Set(s.facts.map((f) => f.name)).size, facts, 'distinct names');
        assert.equal(s.contextTokens, (1 + distance) * m.segmentLength);
      }
      // Concurrently, as the bench runs them; chunks of 5,000 ids so each session takes several appends.
      const out = await Promise.all(samples.map((s) => askRecall(base, model, s, { chunkIds: 5000, noReset: true })));
      out.forEach((o, i) => assert.ok(o.text.startsWith(` ${expected[i]![1]}.`), `${expected[i]![0]}: ${JSON.stringify(o.text)}`));
    });
  });
}
