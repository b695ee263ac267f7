// advanceMany from the main thread: a session's segments sent as one chained advance, and the
// continuation protocol (ChainRef) by which its next request starts from this one's last memory inside
// the engine thread, before the reply is here (the thread's side: chains.ts). An aborted chain is
// dropped here and cancelled there.
import type { EngineClient } from './engine-client.ts';
import { checkSegments, checkState } from './engine-args.ts';
import type { Answer, EngineRequest, ModelInfo } from './engine-protocol.ts';

export interface AdvanceOptions {
  /** Who is asking (a session id): its segments stay on one engine thread, and the batch window expects it. */
  stream?: string;
  onState?: (index: number, state: Float32Array) => void;
  signal?: AbortSignal;
  /** Lets a later advanceMany continue from this chain before it ends (pass this ref as its state). */
  chain?: ChainRef;
}

/**
 * A chained advance a later one may continue from: advanceMany fills it in as the chain is sent and as
 * it ends. Passed as a later advanceMany's state before the chain has ended, the engine thread starts
 * that one from the chain's last memory in the run right after the chain's last, without a trip
 * through the main thread (a session's next request keeps its place in the batches).
 */
export interface ChainRef {
  /** The engine request and its thread, once sent. */
  sent?: { id: number; lane: number };
  /** Its last memory, once its reply is here. */
  final?: Float32Array;
  /** It failed or was aborted. */
  failed?: boolean;
  /** A continuation was sent before the reply came (the thread hands it the memory). */
  continued?: boolean;
}

/**
 * Sends `segments` of model `m` as one chained advance, from `state` (a memory, or a chain sent
 * earlier); resolves with the last segment's memory (see Engine.advanceMany).
 */
export async function advanceChain(client: EngineClient, m: ModelInfo, segments: readonly (readonly number[])[], state: Float32Array | ChainRef, opts: AdvanceOptions): Promise<Float32Array> {
  const name = m.name;
  const where = `advanceMany(${name})`;
  const { ids, lengths } = checkSegments(where, m, segments);
  // From a chain still running (its reply not here yet): the thread that runs it continues it.
  const from = state instanceof Float32Array ? undefined : state;
  if (from && from.final === undefined && (from.failed || from.sent === undefined)) {
    throw new Error(`${where}: the chain to continue from ${from.failed ? 'failed' : 'was never sent'}`);
  }
  const after = from && from.final === undefined ? from.sent! : undefined;
  const st = after ? new Float32Array(0) : checkState(where, m, from ? from.final! : (state as Float32Array));
  const { signal, onState, stream, chain } = opts;
  signal?.throwIfAborted();
  const placedLane = client.laneFor(stream);
  const lane = after ? client.lane(after.lane) : placedLane;
  const request: EngineRequest = {
    op: 'advance', id: client.nextId(), model: name, ids, lengths, state: st, ...(stream !== undefined ? { stream } : {}), ...(onState ? { steps: true } : {}),
    ...(chain ? { keep: true } : {}), ...(after ? { after: after.id } : {}),
  };
  if (after) from!.continued = true;
  if (chain) chain.sent = { id: request.id, lane: lane.index };
  const onAbort = () => client.abort(request.id, signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let r: Extract<Answer, { op: 'advance'; ok: true }>;
    try {
      r = await client.submit<Extract<Answer, { op: 'advance'; ok: true }>>(lane, request, [ids.buffer, st.buffer], onState);
    } catch (err) {
      if (chain) chain.failed = true;
      throw err;
    }
    if (chain) {
      chain.final = r.nextState;
      // No continuation came before the reply: a later one starts from `final`; the thread's copy can go.
      if (!chain.continued) client.forget(lane, request.id);
    }
    onState?.(segments.length - 1, r.nextState);
    return r.nextState;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
