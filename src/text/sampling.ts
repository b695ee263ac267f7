// Next-token sampling and stop-sequence streaming. Pure logic: no runtime, no I/O,
// so a generation can be replayed bit-for-bit from (logits, params, counts, step).
// In text/, not engine/: the engine returns logits and never samples; choosing the next token and
// cutting the text at stop sequences is per-request decoding policy (params from the API, applied
// by the worker beside its detokenizer), and the API and CLI validate the params without an engine.

export interface SamplingParams {
  /** 0 => greedy: argmax, ties go to the lowest id (like torch.argmax). */
  temperature: number;
  /** 0 => off. */
  topK: number;
  /** 1 => off. Nucleus: smallest set of highest-prob tokens whose mass >= topP; always keeps >= 1 token. */
  topP: number;
  /** OpenAI semantics: logit[t] -= presencePenalty if counts[t] > 0. */
  presencePenalty: number;
  /** logit[t] -= frequencyPenalty * counts[t]. */
  frequencyPenalty: number;
  /** 1 => off. CTRL/HF semantics for tokens with counts[t] > 0: positive logit /= p, negative logit *= p. */
  repetitionPenalty: number;
  /** uint32. */
  seed: number;
}

// Frozen so a caller spreading it into request params cannot mutate the shared default.
export const DEFAULT_SAMPLING: SamplingParams = Object.freeze({
  temperature: 1,
  topK: 0,
  topP: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  seed: 0,
});

const UINT32_MAX = 0xffffffff;

function fail(field: string, range: string, value: unknown): never {
  throw new RangeError(`${field} must be ${range} (got ${String(value)})`);
}

function isNum(v: unknown): v is number {
  // typeof guard too: params often come straight from request JSON.
  return typeof v === 'number' && Number.isFinite(v);
}

/**
 * Validates ranges; throws RangeError naming the field and the allowed range.
 * Returns the same object so it can wrap a construction expression.
 */
export function validateSampling(p: SamplingParams): SamplingParams {
  const { temperature, topK, topP, presencePenalty, frequencyPenalty, repetitionPenalty, seed } = p;
  if (!isNum(temperature) || temperature < 0 || temperature > 2) fail('temperature', 'in [0, 2]', temperature);
  if (!Number.isSafeInteger(topK) || topK < 0) fail('topK', 'an integer >= 0', topK);
  if (!isNum(topP) || topP <= 0 || topP > 1) fail('topP', 'in (0, 1]', topP);
  if (!isNum(presencePenalty) || presencePenalty < -2 || presencePenalty > 2)
    fail('presencePenalty', 'in [-2, 2]', presencePenalty);
  if (!isNum(frequencyPenalty) || frequencyPenalty < -2 || frequencyPenalty > 2)
    fail('frequencyPenalty', 'in [-2, 2]', frequencyPenalty);
  if (!isNum(repetitionPenalty) || repetitionPenalty <= 0 || repetitionPenalty > 10)
    fail('repetitionPenalty', 'in (0, 10]', repetitionPenalty);
  if (!Number.isSafeInteger(seed) || seed < 0 || seed > UINT32_MAX) fail('seed', `an integer in [0, ${UINT32_MAX}]`, seed);
  return p;
}

/** murmur3 fmix32: a bijection on uint32 with full avalanche; Math.imul keeps it exact on every engine. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Deterministic uniform in [0,1) from (seed, step): same seed and step => same number,
 * on any machine or process. Integer-only hashing, so no platform float differences.
 */
export function seededUniform(seed: number, step: number): number {
  if (!Number.isSafeInteger(seed) || seed < 0 || seed > UINT32_MAX) fail('seed', `an integer in [0, ${UINT32_MAX}]`, seed);
  if (!Number.isSafeInteger(step) || step < 0) fail('step', 'an integer >= 0', step);
  const lo = step >>> 0;
  const hi = Math.floor(step / 0x100000000) >>> 0;
  // Chained (not added) so nearby (seed, step) pairs land far apart; fmix32 being a bijection
  // means distinct steps under one seed never collide in h.
  let h = fmix32((seed ^ 0x243f6a88) >>> 0);
  h = fmix32((h ^ lo) >>> 0);
  h = fmix32((h ^ fmix32((hi ^ 0x85a308d3) >>> 0)) >>> 0);
  // Two derived words give 53 bits, the full resolution of a double.
  const a = fmix32((h ^ 0x13198a2e) >>> 0);
  const b = fmix32((h + 0x03707344) >>> 0);
  return (a * 0x200000 + (b >>> 11)) / 0x20000000000000;
}

/** Copy of logits (float64) with repetition, then presence/frequency penalties applied. */
function applyPenalties(logits: Float32Array, p: SamplingParams, counts: ReadonlyMap<number, number>): Float64Array {
  const x = Float64Array.from(logits);
  const rep = p.repetitionPenalty;
  const pres = p.presencePenalty;
  const freq = p.frequencyPenalty;
  if (rep === 1 && pres === 0 && freq === 0) return x;
  for (const [id, n] of counts) {
    // The caller's map may hold ids from another vocab slice or stale zero entries; skip them.
    if (!(n > 0) || !Number.isInteger(id) || id < 0 || id >= x.length) continue;
    let v = x[id]!;
    if (rep !== 1) v = v > 0 ? v / rep : v * rep;
    v -= pres + freq * n;
    x[id] = v;
  }
  return x;
}

/**
 * First index of the maximum (strict >, so ties keep the lowest id, like torch.argmax); NaN never wins.
 * Greedy decoding everywhere (sampleNext at temperature 0, greedy-generate.ts's greedyGenerate) picks with it.
 */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

// Buckets of BUCKET_WIDTH nats below the max; the last one takes everything further down.
// Sampling usually stops within the first few tokens of the order, so sorting bucket by
// bucket on demand avoids an O(V log V) sort of the whole vocabulary per token.
const BUCKET_SCALE = 4; // 1 / bucket width in nats
const BUCKET_COUNT = 160; // covers 40 nats; exp(-40) ~ 4e-18 relative weight

/**
 * Ids with finite logits in descending-logit order (ties: lower id first). Sorting by
 * logit rather than by exp weight keeps the order exact even where exp rounds or underflows.
 */
class DescendingOrder {
  readonly length: number;
  private readonly idx: Uint32Array;
  private readonly bucketEnd: Uint32Array;
  private sortedEnd = 0;
  private nextBucket = 0;
  private readonly cmp: (a: number, b: number) => number;

  constructor(
    private readonly x: Float64Array,
    max: number,
  ) {
    const bucketOf = (v: number): number => Math.min(BUCKET_COUNT - 1, Math.floor((max - v) * BUCKET_SCALE));
    // Counting sort into buckets: two linear passes, no per-bucket arrays.
    const sizes = new Uint32Array(BUCKET_COUNT);
    let n = 0;
    for (let i = 0; i < x.length; i++) {
      const v = x[i]!;
      if (!(v > -Infinity)) continue; // -Infinity and NaN have zero probability
      sizes[bucketOf(v)]!++;
      n++;
    }
    this.length = n;
    this.bucketEnd = new Uint32Array(BUCKET_COUNT);
    const fill = new Uint32Array(BUCKET_COUNT);
    let acc = 0;
    for (let b = 0; b < BUCKET_COUNT; b++) {
      fill[b] = acc;
      acc += sizes[b]!;
      this.bucketEnd[b] = acc;
    }
    this.idx = new Uint32Array(n);
    for (let i = 0; i < x.length; i++) {
      const v = x[i]!;
      if (!(v > -Infinity)) continue;
      this.idx[fill[bucketOf(v)]!++] = i;
    }
    this.cmp = (a, b) => x[b]! - x[a]! || a - b;
  }

  /** Candidate ids in bucket (unsorted) order; for order-independent passes. */
  unordered(): Uint32Array {
    return this.idx;
  }

  /** The i-th id in descending order (0 <= i < length). */
  at(i: number): number {
    while (i >= this.sortedEnd) {
      const start = this.sortedEnd;
      const end = this.bucketEnd[this.nextBucket++]!;
      if (end - start > 1) this.idx.subarray(start, end).sort(this.cmp);
      this.sortedEnd = end;
    }
    return this.idx[i]!;
  }
}

/**
 * Picks the next token. counts: token id -> how many times it occurred (the caller decides
 * which tokens count). step: index of the token being generated (feeds seededUniform, so a
 * restarted generation re-draws the same tokens). Does not modify `logits`.
 *
 * Order: penalties (repetition, then presence/frequency) -> greedy if temperature == 0 ->
 * divide by temperature -> top-k -> softmax (float64, max-subtracted) -> top-p -> draw.
 */
export function sampleNext(
  logits: Float32Array,
  params: SamplingParams,
  counts: ReadonlyMap<number, number>,
  step: number,
): number {
  validateSampling(params); // a handful of comparisons, negligible next to the O(V) passes
  if (logits.length === 0) throw new RangeError('logits must not be empty');
  if (!Number.isSafeInteger(step) || step < 0) fail('step', 'an integer >= 0', step);

  const x = applyPenalties(logits, params, counts);
  if (params.temperature === 0) return argmax(x);

  let max = -Infinity;
  const invT = 1 / params.temperature;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]! * invT;
    x[i] = v;
    if (v > max) max = v;
  }
  // +Infinity (possibly from dividing by a tiny temperature) holds all the mass; -Infinity/NaN
  // everywhere leaves no distribution. Both degenerate to argmax.
  if (max === Infinity || max === -Infinity || Number.isNaN(max)) return argmax(x);

  const order = new DescendingOrder(x, max);
  const limit = params.topK > 0 ? Math.min(params.topK, order.length) : order.length;

  // Unnormalised softmax weights exp(x - max) <= 1; normalising is deferred to the draw.
  let total = 0;
  if (limit === order.length) {
    for (const id of order.unordered()) total += Math.exp(x[id]! - max);
  } else {
    for (let i = 0; i < limit; i++) total += Math.exp(x[order.at(i)]! - max);
  }

  // Nucleus: walk in descending order until the kept mass reaches topP.
  let keep = limit;
  let mass = total;
  if (params.topP < 1) {
    const target = params.topP * total;
    let acc = 0;
    for (let i = 0; i < limit; i++) {
      acc += Math.exp(x[order.at(i)]! - max);
      if (acc >= target) {
        keep = i + 1;
        mass = acc;
        break;
      }
    }
  }

  const r = seededUniform(params.seed, step) * mass;
  let acc = 0;
  let lastPositive = order.at(0);
  for (let i = 0; i < keep; i++) {
    const id = order.at(i);
    const w = Math.exp(x[id]! - max);
    if (w > 0) lastPositive = id;
    acc += w;
    if (r < acc) return id;
  }
  // Only reachable through rounding (mass summed in a different order, or u*mass rounding up).
  return lastPositive;
}

/**
 * Streams generated text and detects stop sequences across chunk boundaries: text that
 * might be the start of a stop sequence is held back until it is known not to be.
 *
 * When several stops could apply, the one that completes first wins (earliest end, then
 * earliest start), which makes the result independent of how the text was chunked.
 */
export class StopSequenceMatcher {
  private readonly stops: readonly string[];
  private readonly maxHold: number;
  private held = '';
  private stopped = false;

  constructor(stops: readonly string[]) {
    // An empty stop would match before any text; treat it as absent.
    this.stops = [...new Set(stops.filter((s) => s.length > 0))];
    this.maxHold = this.stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
  }

  /** Returns the text safe to emit now; stopped=true when a stop sequence completed (the stop text itself and anything after it are not emitted). */
  push(text: string): { text: string; stopped: boolean } {
    if (this.stopped) return { text: '', stopped: true };
    if (this.stops.length === 0) return { text, stopped: false };

    const buf = this.held + text;
    let cut = -1;
    let cutEnd = Infinity;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i < 0) continue;
      const end = i + s.length;
      if (end < cutEnd || (end === cutEnd && i < cut)) {
        cut = i;
        cutEnd = end;
      }
    }
    if (cut >= 0) {
      this.stopped = true;
      this.held = '';
      return { text: buf.slice(0, cut), stopped: true };
    }

    // Hold back the longest suffix that is a proper prefix of some stop.
    let hold = 0;
    for (let len = Math.min(this.maxHold, buf.length); len > 0; len--) {
      const tail = buf.slice(buf.length - len);
      if (this.stops.some((s) => s.startsWith(tail))) {
        hold = len;
        break;
      }
    }
    this.held = buf.slice(buf.length - hold);
    return { text: buf.slice(0, buf.length - hold), stopped: false };
  }

  /** At the end of generation (no stop hit): the held-back text. */
  flush(): string {
    const out = this.held;
    this.held = '';
    return out;
  }
}
