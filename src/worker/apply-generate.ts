// Applies a generation request: its prompt appended like an ingest (scored when echo asks), then
// decoding from the committed state. Generation continues the same recurrence: when the tail is full,
// it is committed and decoding goes on in the next segment, so a retry resumes after the last commit
// with the tokens generated before it (saved with each commit). Commits go through the request's
// commit policy (commit-policy.ts).
import type { KvHandle } from '../engine/engine.ts';
import type { FinishReason, GenerateRequest, RequestResult, TokenLogprob } from '../queue/request.ts';
import { RequestError } from '../queue/request.ts';
import { StopSequenceMatcher, sampleNext } from '../text/sampling.ts';
import { IncrementalDetokenizer } from '../text/tokenizer.ts';
import type { ApplyContext, ApplyHooks } from './apply-context.ts';
import { chainAll, scoreAll, type RequestPlan } from './request-plan.ts';
import { tokenLogprob } from './token-logprob.ts';

export async function applyGenerate(ctx: ApplyContext, p: RequestPlan, req: GenerateRequest, hooks: ApplyHooks): Promise<RequestResult> {
  const { data, model, commits, ids, resumeAt } = p;
  const S = model.segmentLength;
  let tail = p.tail;
  // 1. The prompt.
  let promptLogprobs: (TokenLogprob | null)[] | undefined;
  if (p.scoring) {
    promptLogprobs = (await scoreAll(ctx, p)).logprobs;
    // Kept before the prompt's commit: a retry resumed past the prompt returns these scores.
    await hooks.saveGenerated([], req.logprobs !== undefined ? [] : undefined, promptLogprobs);
  } else if (p.segments.length > 0) await chainAll(p, hooks);
  if (req.promptLogprobs !== undefined && !p.scoring) promptLogprobs = data.promptLogprobs ?? [];
  await commits.inputDone(ids.length);

  // 2. Generation, from the committed state (prefill reads rec.state). Tokens generated before the last
  // commit (an earlier attempt) are already in the state.
  await commits.flush({ tail, pendingText: '', curOffset: ids.length });
  if (tail.length === 0) throw new RequestError('empty_prompt', 'generation needs a prompt or earlier text in the session');
  const generated = resumeAt > ids.length ? [...(data.generated ?? [])].slice(0, resumeAt - ids.length) : [];
  if (generated.length !== Math.max(0, resumeAt - ids.length)) {
    throw new RequestError('lost_progress', `request ${data.seq}: ${resumeAt - ids.length} tokens were committed but only ${generated.length} recorded`);
  }
  const wantLogprobs = req.logprobs !== undefined;
  const logprobs: TokenLogprob[] = wantLogprobs ? (data.generatedLogprobs ?? []).slice(0, generated.length) : [];
  const counts = new Map<number, number>();
  for (const t of generated) counts.set(t, (counts.get(t) ?? 0) + 1);
  const tok = ctx.tokenizer(model.name);
  const detok = new IncrementalDetokenizer(tok);
  const stops = new StopSequenceMatcher(req.stop);
  let text = '';
  for (const t of generated) text += stops.push(detok.push(t)).text;

  let kv: KvHandle | undefined;
  let finish: FinishReason = 'length';
  try {
    // max_tokens 0 (echo scoring the prompt alone): no prefill.
    let logits: Float32Array = new Float32Array(0);
    if (req.maxTokens > 0) ({ logits, kv } = await ctx.engine.prefill(model.name, tail, commits.rec.state));
    while (generated.length < req.maxTokens) {
      // Every generated token is in `tail` here: stopping now leaves the session consistent.
      if (hooks.cancelled?.()) {
        finish = 'cancelled';
        break;
      }
      const next = sampleNext(logits, req.sampling, counts, generated.length);
      if (next === model.specialTokens.eos) {
        finish = 'eos';
        break;
      }
      generated.push(next);
      const lp = wantLogprobs ? tokenLogprob(logits, next, req.logprobs!) : undefined;
      if (lp) logprobs.push(lp);
      counts.set(next, (counts.get(next) ?? 0) + 1);
      commits.generatedToken();
      const piece = stops.push(detok.push(next));
      text += piece.text;
      hooks.progress({ type: 'token', seq: data.seq, index: generated.length - 1, id: next, text: piece.text, ...(lp ? { logprob: lp } : {}) });
      if (piece.stopped) {
        finish = 'stop';
        tail.push(next);
        break;
      }
      if (generated.length === req.maxTokens) {
        tail.push(next);
        break;
      }
      if (tail.length === S) {
        // The segment is full: write it to memory and go on decoding in the next one.
        ctx.engine.releaseKv(kv!);
        kv = undefined;
        // `next` opens the new tail, stored with this commit, so it counts as consumed.
        await hooks.saveGenerated(generated, wantLogprobs ? logprobs : undefined, promptLogprobs);
        await commits.commitSegment(tail, ids.length + generated.length, [next]);
        tail = [next];
        ({ logits, kv } = await ctx.engine.prefill(model.name, tail, commits.rec.state));
      } else {
        tail.push(next);
        ({ logits } = await ctx.engine.decode(model.name, kv!, next));
      }
    }
  } finally {
    if (kv !== undefined) ctx.engine.releaseKv(kv);
  }
  if (finish !== 'stop') text += stops.flush();
  const completion = { ids: generated, text, finishReason: finish, ...(wantLogprobs ? { logprobs } : {}) };
  const prompt = promptLogprobs ? { prompt: { ids, logprobs: promptLogprobs } } : {};
  const result = await commits.commitFinal({ tail, pendingText: '', curOffset: ids.length + generated.length }, { completion, ...prompt });
  hooks.progress({ type: 'done', seq: data.seq, result });
  return result;
}
