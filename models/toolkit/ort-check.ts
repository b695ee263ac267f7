// Checks a state-conditioned package's ONNX graphs in onnxruntime-node (CPU), for machines without
// onnxruntime for Python (the toolkit's verify then writes golden.json from PyTorch alone):
//   node --import tsx models/toolkit/ort-check.ts <package dir> [<package dir> ...]
// 1. golden.json replayed: 10 carried segments (every state entry, top logits, token_logprobs), the
//    padded batch (against golden and each row alone; padding log-probs exactly 0), the greedy
//    continuation with the KV cache and the state on every decode call, token for token;
// 2. decode computes what segment computes: prefill and steps (one row, and a padded two-row prefill)
//    against segment.onnx over the same tokens from the same state;
// 3. segment.state.onnx gives segment.onnx's next state.
// Prints one line per check and "N passed, N failed"; exits non-zero on any failure.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';

type State = Record<string, Float32Array>;
interface Entry { name: string; shape: number[]; init: string }
interface Top { ids: number[]; values: number[] }

let passed = 0;
let failed = 0;
function report(ok: boolean, label: string, detail = ''): void {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${label}${detail ? `: ${detail}` : ''}`);
}
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
function close(label: string, a: ArrayLike<number>, b: ArrayLike<number>, tol: number): void {
  const d = maxDiff(a, b);
  report(d <= tol, label, `max-abs-diff ${d.toExponential(2)} (tol ${tol})`);
}
function decodeF32(b64: string): Float32Array {
  const buf = Buffer.from(b64, 'base64');
  const out = new Float32Array(buf.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readFloatLE(i * 4);
  return out;
}
function topK(v: Float32Array, k: number): Top {
  const ids = Array.from(v.keys()).sort((x, y) => v[y]! - v[x]! || x - y).slice(0, k);
  return { ids, values: ids.map((i) => v[i]!) };
}
const i64 = (rows: number[][]) =>
  new ort.Tensor('int64', BigInt64Array.from(rows.flat(), (x) => BigInt(x)), [rows.length, rows[0]!.length]);
const argmax = (v: Float32Array) => v.reduce((best, x, i) => (x > v[best]! ? i : best), 0);

async function checkPackage(dir: string): Promise<void> {
  const meta = JSON.parse(readFileSync(path.join(dir, 'model.json'), 'utf8'));
  if (meta.decode?.conditioning !== 'state') throw new Error(`${dir}: not a state-conditioned package (RMT packages: test/golden.test.ts)`);
  const golden = JSON.parse(readFileSync(path.join(dir, 'golden.json'), 'utf8'));
  const tol = golden.tolerance as { state: number; logits: number; token_logprobs: number };
  const g = meta.graphs.fp32;
  const open = (f: string) => ort.InferenceSession.create(path.join(dir, f), { executionProviders: ['cpu'] });
  const [seg, dec, segState] = await Promise.all([open(g.segment), open(g.decode), open(g.segment_state)]);
  const entries = meta.state as Entry[];
  const size = (e: Entry) => e.shape.reduce((a, b) => a * b, 1);
  const init: State = Object.fromEntries(entries.map((e) => {
    const buf = readFileSync(path.join(dir, e.init));
    return [e.name, new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength))];
  }));
  const kv = meta.decode.past_key_values as { layers: number; heads: number; head_dim: number };
  const S = meta.segment_length as number;
  const V = meta.vocab_size as number;
  console.log(`# ${dir} (${meta.architecture}; state ${entries.map((e) => `${e.name}[${e.shape}]`).join(', ')})`);

  const stateFeeds = (states: State[]) => Object.fromEntries(entries.map((e) => {
    const n = size(e);
    const data = new Float32Array(states.length * n);
    states.forEach((s, b) => data.set(s[e.name]!, b * n));
    return [`state.${e.name}`, new ort.Tensor('float32', data, [states.length, ...e.shape])];
  }));
  const rowsOf = (t: ort.Tensor, b: number, n: number) => (t.data as Float32Array).slice(b * n, (b + 1) * n);
  // Rows right-padded to the longest; returns per-row next state, logits and token_logprobs (real tokens).
  async function segment(rows: number[][], states: State[], session = seg) {
    const T = Math.max(...rows.map((r) => r.length));
    const ids = rows.map((r) => [...r, ...new Array(T - r.length).fill(meta.special_tokens.pad)]);
    const mask = rows.map((r) => r.map(() => 1).concat(new Array(T - r.length).fill(0)));
    const out = await session.run({ input_ids: i64(ids), attention_mask: i64(mask), ...stateFeeds(states) });
    return rows.map((r, b) => ({
      state: Object.fromEntries(entries.map((e) => [e.name, rowsOf(out[`next_state.${e.name}`]!, b, size(e))])) as State,
      logits: out.logits ? rowsOf(out.logits, b, V) : new Float32Array(),
      lp: out.token_logprobs ? rowsOf(out.token_logprobs, b, T).slice(0, r.length) : new Float32Array(),
      lpPadding: out.token_logprobs ? rowsOf(out.token_logprobs, b, T).slice(r.length) : new Float32Array(),
    }));
  }
  async function decode(ids: number[][], mask: number[][], states: State[], past: ort.Tensor | null) {
    const B = ids.length;
    const p = past ?? new ort.Tensor('float32', new Float32Array(0), [kv.layers, 2, B, kv.heads, 0, kv.head_dim]);
    const out = await dec.run({ input_ids: i64(ids), attention_mask: i64(mask), ...stateFeeds(states), past_key_values: p });
    return { logits: ids.map((_, b) => rowsOf(out.logits!, b, V)), present: out.present_key_values! };
  }
  const stateClose = (label: string, a: State, b: State) => {
    for (const e of entries) close(`${label} ${e.name}`, a[e.name]!, b[e.name]!, tol.state);
  };
  const goldenState = (s: Record<string, string>): State => Object.fromEntries(entries.map((e) => [e.name, decodeF32(s[e.name]!)]));
  const topClose = (label: string, logits: Float32Array, want: Top) => {
    const got = topK(logits, want.ids.length);
    report(JSON.stringify(got.ids) === JSON.stringify(want.ids), `${label} top-${want.ids.length} ids`);
    close(`${label} top logits`, got.values, want.values, tol.logits);
  };

  // 1. golden replay
  let state = init;
  for (const [i, s] of (golden.sequence.segments as any[]).entries()) {
    const [r] = await segment([s.input_ids], [state]);
    stateClose(`sequence ${i} state`, r!.state, goldenState(s.state_after));
    close(`sequence ${i} token_logprobs`, r!.lp, s.token_logprobs, tol.token_logprobs);
    topClose(`sequence ${i}`, r!.logits, s.top_logits);
    state = r!.state;
  }
  const pb = golden.padded_batch;
  const prow = (pb.input_ids as number[][]).map((ids, b) => ids.filter((_, t) => pb.attention_mask[b][t] === 1));
  const batched = await segment(prow, prow.map(() => init));
  for (const [b, r] of batched.entries()) {
    stateClose(`padded row ${b} next_state vs golden`, r.state, goldenState(pb.next_state[b]));
    close(`padded row ${b} token_logprobs vs golden`, r.lp, pb.token_logprobs[b].slice(0, prow[b]!.length), tol.token_logprobs);
    topClose(`padded row ${b}`, r.logits, pb.top_logits[b]);
    report(r.lpPadding.every((x) => x === 0), `padded row ${b} token_logprobs exactly 0 at padding`);
    const [alone] = await segment([prow[b]!], [init]);
    stateClose(`padded row ${b} vs alone`, r.state, alone!.state);
    close(`padded row ${b} logits vs alone`, r.logits, alone!.logits, tol.logits);
  }
  const gr = golden.greedy;
  const gen = await greedy(gr.prompt_ids, gr.max_new_tokens);
  report(JSON.stringify(gen.ids) === JSON.stringify(gr.expected_ids), 'greedy ids equal golden', JSON.stringify(gen.ids.slice(0, 12)));
  report(gen.commits === gr.segments_committed_during_generation && gen.commits >= 1, `greedy committed ${gen.commits} segment(s) while generating`);

  async function greedy(prompt: number[], maxNew: number) {
    let st = init;
    let logits = new Float32Array();
    const full = Math.floor(prompt.length / S) * S;
    for (let i = 0; i < full; i += S) [{ state: st, logits }] = (await segment([prompt.slice(i, i + S)], [st])) as any;
    let tail = prompt.slice(full);
    let past: ort.Tensor | null = null;
    if (tail.length) ({ logits: [logits], present: past } = (await decode([tail], [tail.map(() => 1)], [st], null)) as any);
    const ids: number[] = [];
    let commits = 0;
    while (ids.length < maxNew) {
      const tok = argmax(logits);
      ids.push(tok);
      tail = [...tail, tok];
      if (tail.length === S) {
        [{ state: st, logits }] = (await segment([tail], [st])) as any;
        tail = [];
        past = null;
        commits++;
      } else if (!past) {
        ({ logits: [logits], present: past } = (await decode([tail], [tail.map(() => 1)], [st], null)) as any);
      } else {
        const P = past.dims[4]!;
        ({ logits: [logits], present: past } = (await decode([[tok]], [new Array(P + 1).fill(1)], [st], past)) as any);
      }
    }
    return { ids, commits };
  }

  // 2. decode vs segment, from a carried state (golden's state after segment 2)
  const st2 = goldenState(golden.sequence.segments[2].state_after);
  const toks = golden.sequence.segments[3].input_ids as number[];
  const k = Math.min(S - 4, 9);
  let d = await decode([toks.slice(0, k)], [new Array(k).fill(1)], [st2], null);
  close(`decode prefill (${k} tokens) vs segment`, d.logits[0]!, (await segment([toks.slice(0, k)], [st2]))[0]!.logits, tol.logits);
  for (let t = k; t < k + 3; t++) {
    d = await decode([[toks[t]!]], [new Array(t + 1).fill(1)], [st2], d.present);
    close(`decode step to ${t + 1} tokens vs segment`, d.logits[0]!, (await segment([toks.slice(0, t + 1)], [st2]))[0]!.logits, tol.logits);
  }
  const rows = [toks.slice(0, k), toks.slice(k, k + 3)];
  const pad = (r: number[]) => [...r, ...new Array(k - r.length).fill(meta.special_tokens.pad)];
  const pm = rows.map((r) => r.map(() => 1).concat(new Array(k - r.length).fill(0)));
  let dp = await decode(rows.map(pad), pm, [st2, init], null);
  const nxt = [5, 6];
  dp = await decode(nxt.map((x) => [x]), pm.map((m) => [...m, 1]), [st2, init], dp.present);
  for (const b of [0, 1]) {
    const [want] = await segment([[...rows[b]!, nxt[b]!]], [[st2, init][b]!]);
    close(`padded decode prefill + step, row ${b} vs segment`, dp.logits[b]!, want!.logits, tol.logits);
  }

  // 3. segment.state graph
  const [full] = await segment([toks], [st2]);
  const [pruned] = await segment([toks], [st2], segState);
  stateClose('segment.state next_state vs segment', pruned!.state, full!.state);
}

const dirs = process.argv.slice(2);
if (!dirs.length) {
  console.error('usage: node --import tsx models/toolkit/ort-check.ts <package dir> [...]');
  process.exit(2);
}
for (const dir of dirs) await checkPackage(dir);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
