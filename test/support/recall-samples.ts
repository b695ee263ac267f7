// Recall samples at a FIXED fact-to-question distance, for bench/recall-service.ts and
// test/long-recall.test.ts (one builder, so the test checks what the bench measures).
//
// Built in token ids, as the toolkit's RecallBuilder builds its samples
// (models/toolkit/rmt_toolkit/data.py): held-out Brown noise (files whose number is divisible by 5)
// tokenized with the model's tokenizer, facts inserted at sentence starts. Appended as ids, the
// service cuts exactly these segments (an append of ids is not re-tokenized), so the layout is:
//   segment 0          noise with all k facts inside (so every fact is D segments from the question)
//   segments 1..D      noise, continuing the same text
//   then the question, opening segment D + 1 (the models were trained with the question opening one).
// The card's evaluation instead places facts anywhere in n segments (an average over distances).
// A task with kind "qa2" (the toolkit's two_fact.py) has k holders instead of k facts: each picks up
// its own object and moves (plus up to `distractors` extra moves: its own earlier one, or another
// name's), all in segment 0; the question asks for an object, the answer is its holder's last place.
import type { TextTokenizer } from '../../src/text/tokenizer.ts';

/** model.json `task` (the fields a sample needs). */
export interface RecallTask {
  /** Absent: the recall task (packages shipped before kinds). */
  kind?: 'recall' | 'qa2';
  names: string[];
  places: string[];
  verbs: string[];
  fact_template: string;
  question_template: string;
  answer_template: string;
  /** qa2 only. */
  objects?: string[];
  pickup_verbs?: string[];
  pickup_template?: string;
  distractors?: number;
}

export interface Fact {
  name: string;
  verb: string;
  place: string;
  /** qa2: a pickup statement has `object` and no place; a holder (target) has both. */
  object?: string;
}

export interface RecallSample {
  /** Full segments of noise between the facts' segment and the question. */
  distance: number;
  facts: Fact[];
  /** The fact asked about (qa2: the holder, with its object and last place). */
  target: Fact;
  question: number[];
  /** What a correct answer starts with (the answer template's text). */
  answer: string;
  /** The answer's length in tokens (what generation needs at least). */
  answerTokens: number;
  /** (1 + distance) × segment_length. */
  contextTokens: number;
  /** Context ids [from, to): made on demand, so a 1M-token context is never held whole. */
  ids(from: number, to: number): number[];
}

/** FNV-1a of a string: each sample's own seed, so adding sizes or samples changes no other sample. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** mulberry32: a small seeded PRNG; returns an integer in [0, n). */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const fill = (tpl: string, v: Partial<Record<string, string>>) => tpl.replace(/\{(\w+)\}/g, (_, k: string) => v[k] ?? '');

export class RecallSampler {
  private readonly stream: Uint16Array;
  /** Stream positions where a sentence starts (a token after one ending in "." that begins a word). */
  private readonly starts: Int32Array;

  constructor(
    private readonly tokenizer: TextTokenizer,
    readonly task: RecallTask,
    readonly segmentLength: number,
    noiseText: string,
  ) {
    // One encode of " " + the text: GPT-2's pre-tokenizer splits before every space, so this gives the
    // toolkit's per-document encodes joined.
    const ids = tokenizer.encode(` ${noiseText}`);
    this.stream = Uint16Array.from(ids);
    const piece = new Map<number, string>();
    const text = (id: number) => piece.get(id) ?? (piece.set(id, tokenizer.decode([id])), piece.get(id)!);
    const starts: number[] = [];
    for (let j = 1; j < ids.length; j++) if (text(ids[j - 1]!).endsWith('.') && text(ids[j]!).startsWith(' ')) starts.push(j);
    this.starts = Int32Array.from(starts);
  }

  get noiseTokens(): number {
    return this.stream.length;
  }

  /** Sample `index` of (seed, distance, k facts): deterministic. */
  sample(seed: number, distance: number, k: number, index: number): RecallSample {
    const t = this.task;
    const S = this.segmentLength;
    if (!(k >= 1 && k <= t.names.length)) throw new Error(`${k} facts: each needs its own name, and there are ${t.names.length}`);
    const rand = rng(hash32(`${seed}/${distance}/${k}/${index}`));
    const qa2 = t.kind === 'qa2';
    // k distinct names (a partial Fisher-Yates shuffle), each with a random verb and place.
    const names = [...t.names];
    let facts: Fact[] = [];
    for (let i = 0; i < k; i++) {
      const j = i + rand(names.length - i);
      [names[i], names[j]] = [names[j]!, names[i]!];
      facts.push({ name: names[i]!, verb: t.verbs[rand(t.verbs.length)]!, place: t.places[rand(t.places.length)]! });
    }
    const holders = qa2 ? facts : [];
    if (qa2) facts = this.qa2Statements(rand, holders, names.slice(k));
    const factIds = facts.map((f) =>
      this.tokenizer.encode(f.object !== undefined && !f.place ? fill(t.pickup_template!, { ...f }) : fill(t.fact_template, { ...f })));
    const noiseLen = S - factIds.reduce((n, f) => n + f.length, 0);
    if (noiseLen < 0) throw new Error(`${k} facts (${S - noiseLen} tokens) do not fit in one segment of ${S}`);
    // The crop starts at a sentence start (so there is always one to insert at) and fits unwrapped.
    let lastStart = this.starts.length;
    while (lastStart > 0 && this.starts[lastStart - 1]! + noiseLen > this.stream.length) lastStart--;
    const start = this.starts[rand(lastStart)]!;
    const cand: number[] = [];
    for (const s of this.starts) if (s >= start && s < start + noiseLen) cand.push(s - start);
    if (cand.length === 0) cand.push(0); // facts filling the whole segment
    const offs = facts.map(() => cand[rand(cand.length)]!).sort((a, b) => a - b);
    const order = facts.map((_, i) => i);
    for (let i = order.length - 1; i > 0 && !qa2; i--) { // qa2 statements keep their (constrained) order
      const j = rand(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const head: number[] = [];
    let prev = 0;
    offs.forEach((off, i) => {
      head.push(...this.stream.subarray(start + prev, start + off), ...factIds[order[i]!]!);
      prev = off;
    });
    head.push(...this.stream.subarray(start + prev, start + noiseLen));
    if (head.length !== S) throw new Error(`fact segment of ${head.length} tokens, expected ${S}`);
    const target = qa2 ? holders[rand(k)]! : facts[rand(k)]!;
    const stream = this.stream;
    const L = stream.length;
    const noiseFrom = start + noiseLen; // the noise segments continue the same text, wrapping round
    const contextTokens = (1 + distance) * S;
    const answer = fill(t.answer_template, { place: target.place });
    return {
      distance, facts, target, contextTokens,
      question: this.tokenizer.encode(fill(t.question_template, { name: target.name, object: target.object })),
      answer, answerTokens: this.tokenizer.encode(answer).length,
      ids(from, to) {
        const out = new Array<number>(Math.max(0, Math.min(to, contextTokens) - from));
        for (let p = from, i = 0; i < out.length; p++, i++) out[i] = p < S ? head[p]! : stream[(noiseFrom + p - S) % L]!;
        return out;
      },
    };
  }

  /** qa2: gives each holder a distinct object; returns the statements in context order: per holder a
   * pickup and its final move (the holder's place), up to `distractors` extra moves (its own earlier
   * one, or a non-holder's), shuffled, a holder's earlier move kept before its final one. */
  private qa2Statements(rand: (n: number) => number, holders: Fact[], others: string[]): Fact[] {
    const t = this.task;
    const objects = [...(t.objects ?? [])];
    if (holders.length > objects.length) throw new Error(`${holders.length} holders: each needs its own object, and there are ${objects.length}`);
    const move = (name: string): Fact => ({ name, verb: t.verbs[rand(t.verbs.length)]!, place: t.places[rand(t.places.length)]! });
    const out: { f: Fact; early?: string; final?: string }[] = [];
    holders.forEach((h, i) => {
      const j = i + rand(objects.length - i);
      [objects[i], objects[j]] = [objects[j]!, objects[i]!];
      h.object = objects[i]!;
      const pv = t.pickup_verbs!;
      out.push({ f: { name: h.name, verb: pv[rand(pv.length)]!, place: '', object: h.object } }, { f: h, final: h.name });
      for (let d = rand((t.distractors ?? 1) + 1); d > 0; d--) {
        if (others.length === 0 || rand(2) === 0) out.push({ f: move(h.name), early: h.name });
        else out.push({ f: move(others[rand(others.length)]!) });
      }
    });
    for (let i = out.length - 1; i > 0; i--) {
      const j = rand(i + 1);
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    for (const h of holders) {
      let fin = out.findIndex((o) => o.final === h.name);
      for (let i = fin + 1; i < out.length; i++) {
        if (out[i]!.early === h.name) {
          [out[i], out[fin]] = [out[fin]!, out[i]!];
          fin = i;
        }
      }
    }
    return out.map((o) => o.f);
  }
}
