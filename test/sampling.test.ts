import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DEFAULT_SAMPLING,
  sampleNext,
  seededUniform,
  StopSequenceMatcher,
  validateSampling,
  type SamplingParams,
} from '../src/text/sampling.ts';

// Every assert.ok carries a message: without one, node re-reads the call site to build it,
// which can hang on tsx-transformed sources when the assertion fails.
const NO_COUNTS: ReadonlyMap<number, number> = new Map();

function params(over: Partial<SamplingParams> = {}): SamplingParams {
  return { ...DEFAULT_SAMPLING, ...over };
}

function f32(values: number[]): Float32Array {
  return Float32Array.from(values);
}

/** Reference argmax with the lowest id winning ties. */
function refArgmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

function softmax(xs: number[]): number[] {
  const m = Math.max(...xs);
  const e = xs.map((v) => Math.exp(v - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / z);
}

/** Token frequencies over `draws` consecutive steps. */
function histogram(logits: Float32Array, p: SamplingParams, draws: number, counts = NO_COUNTS): number[] {
  const h = new Array<number>(logits.length).fill(0);
  for (let step = 0; step < draws; step++) h[sampleNext(logits, p, counts, step)]!++;
  return h.map((c) => c / draws);
}

/** Deterministic pseudo-random logits so failures reproduce. */
function randomLogits(n: number, salt: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (seededUniform(salt, i) - 0.5) * 8;
  return out;
}

describe('seededUniform', () => {
  test('is deterministic and in [0, 1)', () => {
    for (let step = 0; step < 1000; step++) {
      const u = seededUniform(42, step);
      assert.equal(u, seededUniform(42, step));
      assert.ok(u >= 0 && u < 1, `u=${u}`);
    }
    // Pinned values: guards against a change in the hash, which would silently change
    // every replayed generation.
    assert.equal(seededUniform(0, 0), 0.5425302643117613);
    assert.equal(seededUniform(42, 7), 0.5364472802990442);
    assert.equal(seededUniform(2 ** 32 - 1, 123456789), 0.9518504442533788);
    assert.notEqual(seededUniform(0, 0), seededUniform(0, 1));
    assert.notEqual(seededUniform(0, 0), seededUniform(1, 0));
    assert.notEqual(seededUniform(1, 0), seededUniform(0, 1));
  });

  test('is roughly uniform', () => {
    const bins = new Array<number>(10).fill(0);
    const n = 20000;
    for (let step = 0; step < n; step++) bins[Math.floor(seededUniform(7, step) * 10)]!++;
    for (const b of bins) assert.ok(Math.abs(b / n - 0.1) < 0.01, `bin share ${b / n}`);
  });

  test('rejects bad seed and step', () => {
    assert.throws(() => seededUniform(-1, 0), /seed/);
    assert.throws(() => seededUniform(2 ** 32, 0), /seed/);
    assert.throws(() => seededUniform(0, 1.5), /step/);
  });
});

describe('sampleNext', () => {
  test('greedy equals argmax, ties go to the lowest id', () => {
    const g = params({ temperature: 0 });
    assert.equal(sampleNext(f32([0, 5, 5, 1]), g, NO_COUNTS, 0), 1);
    assert.equal(sampleNext(f32([3, 3, 3]), g, NO_COUNTS, 0), 0);
    assert.equal(sampleNext(f32([-Infinity, -2, -1, -1]), g, NO_COUNTS, 0), 2);
    for (let salt = 0; salt < 20; salt++) {
      const logits = randomLogits(1000, salt);
      assert.equal(sampleNext(logits, g, NO_COUNTS, salt), refArgmax(logits));
    }
  });

  test('does not modify logits', () => {
    const logits = f32([1, 2, 3, -1]);
    const copy = logits.slice();
    const p = params({ temperature: 0.7, topK: 3, topP: 0.9, presencePenalty: 1, frequencyPenalty: 1, repetitionPenalty: 2 });
    sampleNext(logits, p, new Map([[2, 3], [3, 1]]), 0);
    assert.deepEqual(logits, copy);
  });

  test('same seed and step give the same token; different seeds differ', () => {
    const logits = f32(new Array(10).fill(0));
    const a: number[] = [];
    const b: number[] = [];
    for (let step = 0; step < 200; step++) {
      const t = sampleNext(logits, params({ seed: 1 }), NO_COUNTS, step);
      assert.equal(t, sampleNext(logits, params({ seed: 1 }), NO_COUNTS, step));
      a.push(t);
      b.push(sampleNext(logits, params({ seed: 2 }), NO_COUNTS, step));
    }
    const differing = a.filter((t, i) => t !== b[i]).length;
    // Independent uniform draws over 10 tokens differ ~90% of the time.
    assert.ok(differing > 150, `only ${differing}/200 draws differ`);
    assert.ok(new Set(a).size === 10, 'every token should appear');
  });

  test('empirical distribution at temperature 1 matches softmax', () => {
    const raw = [1, 2, 0.5, -1, 3];
    const expected = softmax(raw);
    const got = histogram(f32(raw), params({ seed: 123 }), 20000);
    for (let i = 0; i < raw.length; i++) {
      assert.ok(Math.abs(got[i]! - expected[i]!) < 0.015, `token ${i}: got ${got[i]}, expected ${expected[i]}`);
    }
  });

  test('temperature scales the distribution', () => {
    const raw = [1, 2, 0.5, -1, 3];
    const expected = softmax(raw.map((v) => v / 2));
    const got = histogram(f32(raw), params({ temperature: 2, seed: 9 }), 20000);
    for (let i = 0; i < raw.length; i++) {
      assert.ok(Math.abs(got[i]! - expected[i]!) < 0.015, `token ${i}: got ${got[i]}, expected ${expected[i]}`);
    }
  });

  test('works on a vocabulary-sized vector', () => {
    const logits = randomLogits(50257, 3);
    const p = params({ seed: 5 });
    const seen = new Set<number>();
    for (let step = 0; step < 200; step++) {
      const t = sampleNext(logits, p, NO_COUNTS, step);
      assert.ok(t >= 0 && t < logits.length && Number.isInteger(t), `bad token id ${t}`);
      seen.add(t);
    }
    assert.ok(seen.size > 100, 'a near-flat distribution should spread draws');
  });

  test('topK=1 equals greedy', () => {
    for (let salt = 0; salt < 50; salt++) {
      const logits = randomLogits(200, salt);
      assert.equal(sampleNext(logits, params({ topK: 1, seed: salt }), NO_COUNTS, salt), refArgmax(logits));
    }
    // Tie at the top: the lower id is kept.
    for (let step = 0; step < 100; step++) assert.equal(sampleNext(f32([0, 4, 4]), params({ topK: 1 }), NO_COUNTS, step), 1);
  });

  test('topK keeps exactly k tokens, ties broken by lower id', () => {
    const got = histogram(f32([1, 1, 1, 1]), params({ topK: 2, seed: 3 }), 2000);
    assert.deepEqual([got[2], got[3]], [0, 0]);
    assert.ok(got[0]! > 0.4 && got[1]! > 0.4, `shares ${got.join(', ')}`);
    const got2 = histogram(f32([0, 3, 2, 1]), params({ topK: 2, seed: 4 }), 5000);
    assert.deepEqual([got2[0], got2[3]], [0, 0]);
    const e = softmax([3, 2]);
    assert.ok(Math.abs(got2[1]! - e[0]!) < 0.03, `renormalised over top-k: ${got2[1]}`);
  });

  test('tiny topP keeps only the top token', () => {
    const logits = f32([0.5, 1, 0.9, 0.95]);
    for (let step = 0; step < 500; step++) assert.equal(sampleNext(logits, params({ topP: 1e-6 }), NO_COUNTS, step), 1);
  });

  test('topP keeps the smallest nucleus reaching the mass and renormalises', () => {
    // Probabilities 0.5, 0.3, 0.2: topP 0.75 needs the top two tokens.
    const logits = f32([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
    const got = histogram(logits, params({ topP: 0.75, seed: 11 }), 20000);
    assert.equal(got[2], 0);
    assert.ok(Math.abs(got[0]! - 0.625) < 0.015, `got ${got[0]}`);
    // topP 0.4 is covered by the top token alone.
    const only = histogram(logits, params({ topP: 0.4, seed: 11 }), 500);
    assert.deepEqual(only, [1, 0, 0]);
  });

  test('temperature near 0 approaches greedy', () => {
    const logits = f32([1, 1.5, 0.5, 1.4]);
    for (let step = 0; step < 1000; step++) {
      assert.equal(sampleNext(logits, params({ temperature: 0.005, seed: 77 }), NO_COUNTS, step), 1);
    }
    // Sanity: at temperature 1 the same vector is not always token 1.
    assert.ok(histogram(logits, params({ seed: 77 }), 1000)[1]! < 0.6, 'temperature 1 should not be near-greedy');
  });

  test('presence penalty changes the choice', () => {
    const g = params({ temperature: 0 });
    const logits = f32([2, 1.5, 0]);
    const counts = new Map([[0, 1]]);
    assert.equal(sampleNext(logits, g, counts, 0), 0);
    // 2 - 1 = 1 < 1.5
    assert.equal(sampleNext(logits, { ...g, presencePenalty: 1 }, counts, 0), 1);
    // A negative presence penalty encourages repeats: 1.5 + 2 = 3.5 > 2.
    assert.equal(sampleNext(logits, { ...g, presencePenalty: -2 }, new Map([[1, 1]]), 0), 1);
  });

  test('frequency penalty scales with the count', () => {
    const g = params({ temperature: 0, frequencyPenalty: 0.5 });
    const logits = f32([3, 2]);
    // 3 - 0.5 * 1 = 2.5 > 2
    assert.equal(sampleNext(logits, g, new Map([[0, 1]]), 0), 0);
    // 3 - 0.5 * 3 = 1.5 < 2
    assert.equal(sampleNext(logits, g, new Map([[0, 3]]), 0), 1);
    // Zero counts and out-of-range ids are ignored.
    assert.equal(sampleNext(logits, g, new Map([[0, 0], [7, 9], [-1, 4]]), 0), 0);
  });

  test('repetition penalty divides positive and multiplies negative logits', () => {
    const g = params({ temperature: 0, repetitionPenalty: 2 });
    // 2 / 2 = 1 < 1.5
    assert.equal(sampleNext(f32([2, 1.5]), g, new Map([[0, 1]]), 0), 1);
    // -1 * 2 = -2 < -1.5 (dividing would have made it -0.5 and kept token 0)
    assert.equal(sampleNext(f32([-1, -1.5]), g, new Map([[0, 1]]), 0), 1);
    // Count does not matter, only presence: 2 / 2 = 1 > 0.9 even with count 5.
    assert.equal(sampleNext(f32([2, 0.9]), g, new Map([[0, 5]]), 0), 0);
    // Repetition applies before presence: 4 / 2 - 1 = 1 < 1.2, whereas (4 - 1) / 2 = 1.5 would keep token 0.
    assert.equal(sampleNext(f32([4, 1.2]), { ...g, presencePenalty: 1 }, new Map([[0, 1]]), 0), 1);
  });

  test('penalties apply before sampling too', () => {
    // Token 0 dominates (~99%) until a frequency penalty moves its logit to 5 - 2 * 5 = -5.
    const logits = f32([5, 0, 0]);
    assert.ok(histogram(logits, params({ seed: 1 }), 2000)[0]! > 0.97, 'unpenalised token 0 should dominate');
    const got = histogram(logits, params({ frequencyPenalty: 2, seed: 1 }), 2000, new Map([[0, 5]]));
    const expected = softmax([-5, 0, 0])[0]!; // ~0.0034
    assert.ok(Math.abs(got[0]! - expected) < 0.005, `token 0 share ${got[0]}, expected ${expected}`);
  });

  test('rejects empty logits and bad step', () => {
    assert.throws(() => sampleNext(new Float32Array(0), params(), NO_COUNTS, 0), RangeError);
    assert.throws(() => sampleNext(f32([1]), params(), NO_COUNTS, -1), /step/);
  });
});

describe('validateSampling', () => {
  test('accepts the defaults and boundary values', () => {
    assert.equal(validateSampling(params()).temperature, 1);
    validateSampling(params({ temperature: 0, topP: 1, presencePenalty: -2, frequencyPenalty: 2, repetitionPenalty: 10, seed: 2 ** 32 - 1 }));
    validateSampling(params({ temperature: 2, topK: 50, topP: 1e-9 }));
  });

  const bad: [keyof SamplingParams, unknown][] = [
    ['temperature', -0.1],
    ['temperature', 2.5],
    ['temperature', NaN],
    ['topK', -1],
    ['topK', 1.5],
    ['topP', 0],
    ['topP', 1.01],
    ['presencePenalty', 2.1],
    ['frequencyPenalty', -3],
    ['repetitionPenalty', 0],
    ['repetitionPenalty', 11],
    ['seed', -1],
    ['seed', 2 ** 32],
    ['seed', 0.5],
    ['temperature', '1'],
  ];
  for (const [field, value] of bad) {
    test(`rejects ${field}=${String(value)} naming the field`, () => {
      const p = { ...params(), [field]: value } as SamplingParams;
      assert.throws(
        () => validateSampling(p),
        (err: unknown) => err instanceof RangeError && err.message.startsWith(`${field} must be`) && /\[|\(/.test(err.message),
      );
    });
  }

  test('DEFAULT_SAMPLING has the documented values and is frozen', () => {
    assert.deepEqual({ ...DEFAULT_SAMPLING }, {
      temperature: 1,
      topK: 0,
      topP: 1,
      presencePenalty: 0,
      frequencyPenalty: 0,
      repetitionPenalty: 1,
      seed: 0,
    });
    assert.ok(Object.isFrozen(DEFAULT_SAMPLING), 'DEFAULT_SAMPLING should be frozen');
  });
});

describe('StopSequenceMatcher', () => {
  test('detects a stop split across pushes', () => {
    const m = new StopSequenceMatcher(['\nQuestion']);
    assert.deepEqual(m.push('Hel'), { text: 'Hel', stopped: false });
    assert.deepEqual(m.push('lo\nQu'), { text: 'lo', stopped: false });
    assert.deepEqual(m.push('estion'), { text: '', stopped: true });
    assert.equal(m.flush(), '');
    // After a stop everything is dropped.
    assert.deepEqual(m.push('more'), { text: '', stopped: true });
  });

  test('drops text after the stop within the same push', () => {
    const m = new StopSequenceMatcher(['END']);
    assert.deepEqual(m.push('abcENDxyz'), { text: 'abc', stopped: true });
  });

  test('handles multiple stops', () => {
    const m = new StopSequenceMatcher(['###', '\n\n']);
    assert.deepEqual(m.push('one\n'), { text: 'one', stopped: false });
    assert.deepEqual(m.push('two#'), { text: '\ntwo', stopped: false });
    assert.deepEqual(m.push('##tail'), { text: '', stopped: true });

    const m2 = new StopSequenceMatcher(['###', '\n\n']);
    assert.deepEqual(m2.push('a#'), { text: 'a', stopped: false });
    assert.deepEqual(m2.push('\n\nb'), { text: '#', stopped: true });
  });

  test('the stop that completes first wins regardless of chunking', () => {
    const stops = ['abcd', 'bc'];
    const whole = new StopSequenceMatcher(stops).push('xabcd');
    const pieces = new StopSequenceMatcher(stops);
    let text = '';
    let stopped = false;
    for (const ch of 'xabcd') {
      const r = pieces.push(ch);
      text += r.text;
      stopped ||= r.stopped;
      if (r.stopped) break;
    }
    assert.deepEqual(whole, { text: 'xa', stopped: true });
    assert.deepEqual({ text, stopped }, whole);
  });

  test('releases a false prefix once it cannot be a stop', () => {
    const m = new StopSequenceMatcher(['\nQuestion']);
    assert.deepEqual(m.push('foo\nQu'), { text: 'foo', stopped: false });
    assert.deepEqual(m.push('ick'), { text: '\nQuick', stopped: false });
    // A prefix that restarts inside held text is still caught.
    assert.deepEqual(m.push('\n\nQues'), { text: '\n', stopped: false });
    assert.deepEqual(m.push('tion?'), { text: '', stopped: true });
  });

  test('flush returns held text', () => {
    const m = new StopSequenceMatcher(['</s>']);
    assert.deepEqual(m.push('done </'), { text: 'done ', stopped: false });
    assert.equal(m.flush(), '</');
    assert.equal(m.flush(), '');
  });

  test('no stops => passthrough', () => {
    for (const stops of [[], ['']]) {
      const m = new StopSequenceMatcher(stops);
      for (const chunk of ['a', '\nQuestion', '', 'xyz']) assert.deepEqual(m.push(chunk), { text: chunk, stopped: false });
      assert.equal(m.flush(), '');
    }
  });

  test('emitted text never contains a stop, for every chunking', () => {
    const text = 'The answer is 4.\nQuestion: next';
    const stop = '\nQuestion';
    for (let a = 0; a <= text.length; a++) {
      for (let b = a; b <= text.length; b++) {
        const m = new StopSequenceMatcher([stop]);
        let out = '';
        let stopped = false;
        for (const piece of [text.slice(0, a), text.slice(a, b), text.slice(b)]) {
          const r = m.push(piece);
          out += r.text;
          if (r.stopped) {
            stopped = true;
            break;
          }
        }
        assert.ok(stopped, `no stop for split at ${a}, ${b}`);
        assert.equal(out, 'The answer is 4.');
      }
    }
  });
});
