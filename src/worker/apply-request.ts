// Applies one queued request to its session: an ingest (apply-ingest.ts) or a generation
// (apply-generate.ts), both from the same start (request-plan.ts) and through the same commit policy
// (commit-policy.ts): every commit is a versioned compare-and-set that records how far into the request
// it got, so a retry resumes at the last commit, and a request already applied is not applied again.
import type { LoggedRequest, RequestResult } from '../queue/request.ts';
import type { ApplyContext, ApplyHooks, RequestStart } from './apply-context.ts';
import { applyGenerate } from './apply-generate.ts';
import { applyIngest } from './apply-ingest.ts';
import { requestResult } from './commit-policy.ts';
import { openSession, planRequest } from './request-plan.ts';

// The applier's signature types, for its callers.
export type { ApplyContext, ApplyHooks, RequestStart } from './apply-context.ts';

/**
 * `start`: the session as the caller just read it (one read per request; undefined: read here), or an
 * offer of the session's previous request, still landing (handoff.ts), to continue from.
 */
export async function applyRequest(ctx: ApplyContext, data: LoggedRequest, hooks: ApplyHooks, start: RequestStart = {}): Promise<RequestResult> {
  const opened = await openSession(ctx, data, start);
  // A retry of a request whose final commit landed: the session as it is, nothing applied.
  if (opened.rec.appliedSeq >= data.seq) return { ...requestResult(opened.rec, data.seq, 0), alreadyApplied: true };
  const plan = await planRequest(ctx, data, hooks, start, opened);
  const req = data.request;
  return req.kind === 'ingest' ? applyIngest(ctx, plan, req, hooks) : applyGenerate(ctx, plan, req, hooks);
}
