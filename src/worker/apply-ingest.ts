// Applies an ingest request: its text (or ids) appended to the session through the segment graph,
// scored when asked, and committed through the request's commit policy (commit-policy.ts). An unscored
// append offers the session's next request a start before its own final commit lands (handoff.ts).
import type { ChainRef } from '../engine/engine.ts';
import type { IngestRequest, RequestResult, SegmentScore } from '../queue/request.ts';
import type { ApplyContext, ApplyHooks } from './apply-context.ts';
import { offerNext } from './handoff.ts';
import { chainAll, scoreAll, type RequestPlan } from './request-plan.ts';

export async function applyIngest(ctx: ApplyContext, p: RequestPlan, req: IngestRequest, hooks: ApplyHooks): Promise<RequestResult> {
  const { data, commits, ids, segments, tail, pendingAfter } = p;
  let scores: SegmentScore[] | undefined;
  let result: RequestResult;
  // The chain the session's next request may continue from inside the engine (before this one lands).
  const chain: ChainRef | undefined = hooks.offer && !p.scoring && segments.length > 0 ? {} : undefined;
  const offer = hooks.offer
    ? offerNext(hooks.offer, p.rec, data.seq, { tail, pendingText: pendingAfter, consumed: ids.length, addSegments: segments.length, addTokens: ids.length - p.from }, chain)
    : undefined;
  try {
    if (p.scoring) {
      scores = (await scoreAll(ctx, p)).segmentScores();
    } else if (req.score) {
      scores = []; // a retry of a request already applied up to its end: nothing left to score
    } else if (segments.length > 0) {
      await chainAll(p, hooks, chain);
    }
    offer?.memory(commits.memory);
    await commits.inputDone(ids.length);
    result = await commits.commitFinal({ tail, pendingText: pendingAfter, curOffset: ids.length }, scores ? { scores } : {});
    offer?.applied(commits.rec);
  } catch (err) {
    // The next request must not keep waiting on (or committing after) a request that did not apply.
    offer?.lost(err);
    throw err;
  }
  hooks.progress({ type: 'done', seq: data.seq, result });
  return result;
}
