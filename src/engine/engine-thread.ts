// The engine thread: loads the models (loader.ts: onnxruntime is owned through loadModelPackage) and
// runs the loop of vLLM's engine core: ops come in (requests queue up, cancels, releases) while a run
// executes; each iteration the scheduler plans groups (scheduler.ts), the executor runs each
// (executor.ts) and the replies go back, the chains going on leading the next iteration (chains.ts).
// KV caches live here, keyed by handle (kv-registry.ts); the main thread only ever sees handles.
// An engine may run several of these threads (stream-placement.ts places each session on one); their runs overlap
// on the device (or, with deviceTurns, take turns through a shared ticket lock: device-turn.ts), so one
// thread's run covers the others' turnaround (replies, the sessions' next requests, planning) instead of
// the device waiting through it.
import { parentPort, workerData } from 'node:worker_threads';
import { Chains } from './chains.ts';
import { DeviceTurn } from './device-turn.ts';
import type { FromWorker, Op, Reply, ToWorker, WorkerConfig } from './engine-protocol.ts';
import { errorMessage, Executor, RunClock } from './executor.ts';
import { KvRegistry } from './kv-registry.ts';
import { loadModels, warmUp } from './loader.ts';
import { validate } from './request-check.ts';
import { Scheduler, type Group } from './scheduler.ts';
import { createStateRing, StateRingWriter } from './state-ring.ts';

if (!parentPort) throw new Error('engine-thread.ts must run as a worker thread (see startEngine in engine.ts)');
const port = parentPort;
const config = workerData as WorkerConfig;
/** [runs, segments] finished over every thread (engine.ts progress()): shared memory, counted before the replies go. */
const progress = config.progress ? new Int32Array(config.progress) : undefined;

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

/** Lets the event loop deliver messages that arrived meanwhile (the poll phase runs before setImmediate). */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The thread's loop over its parts, and whether it is running and closing. */
class EngineLoop {
  private running = false;
  private closing = false;
  private closed = false;

  constructor(
    private readonly device: DeviceTurn,
    private readonly clock: RunClock,
    private readonly kvs: KvRegistry,
    private readonly chains: Chains,
    private readonly scheduler: Scheduler,
    private readonly executor: Executor,
  ) {}

  /** Takes in a message's ops, in order: requests are checked and queued, the rest applied at once. */
  onOps(ops: Op[]): void {
    const rejected: Reply[] = [];
    for (const op of ops) {
      if (op.kind === 'cancel') {
        this.scheduler.cancel(op.id);
        rejected.push(...this.chains.cancel(op.id));
        continue;
      }
      if (op.kind === 'forget') {
        this.chains.forget(op.id);
        continue;
      }
      if (op.kind === 'release') {
        this.kvs.release(op.kv);
        continue;
      }
      const r = op.request;
      const problem = this.closing ? 'engine closed' : validate(r, this.executor.models, this.kvs);
      if (problem !== undefined) {
        rejected.push({ id: r.id, ok: false, message: problem });
        continue;
      }
      if (r.op === 'decode') this.kvs.hold(r.kv);
      if (r.op === 'advance') {
        const admitted = this.chains.admit(r);
        if (admitted === 'parked') continue;
        if (admitted !== 'run') {
          rejected.push({ id: r.id, ok: false, message: admitted.refused });
          continue;
        }
      }
      this.scheduler.push(r);
    }
    if (rejected.length) post({ type: 'replies', replies: rejected, stats: [] });
    this.scheduler.wake();
    void this.pump();
  }

  close(): void {
    this.closing = true;
    this.scheduler.wake();
    if (!this.running) void this.finishClose();
  }

  /** One group: run it, send its replies in one message, and let the scheduler take what goes on. */
  private async step(group: Group): Promise<void> {
    const out = await this.executor.run(group);
    if (progress) {
      Atomics.add(progress, 1, out.stats.reduce((n, st) => n + st.steps * st.rows, 0));
      Atomics.add(progress, 0, out.stats.length);
    }
    // Every ring slice written so far is in this message or an earlier one (onOps' messages carry none).
    post({ type: 'replies', replies: out.replies, stats: out.stats, ringEnd: this.executor.ringEnd }, out.transfer);
    this.scheduler.update(group, out.again);
  }

  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.device.setReady(1);
    try {
      // Requests sent together arrive together: let the rest of a burst land before planning.
      await yieldToEventLoop();
      while (this.scheduler.waiting && !this.closing) {
        const runsBefore = this.clock.runs;
        await this.scheduler.gather(() => this.closing);
        for (const g of this.scheduler.plan()) {
          if (this.closing) break;
          try {
            await this.step(g);
          } catch (err) {
            // The executor answers every request itself; this only guards against a failed postMessage.
            post({ type: 'replies', replies: g.requests.map((r) => ({ id: r.id, ok: false, message: errorMessage(err) })), stats: [] });
          }
        }
        // onnxruntime-node starts each run from setImmediate (its backend's run()), so an iteration that ran
        // one has let the event loop deliver what arrived meanwhile; another turn here would cost every
        // dependent run its time (a few hundredths of a ms) while the device waits. Requests that arrived
        // while the run was being planned join the next one.
        if (this.clock.runs === runsBefore) await yieldToEventLoop();
      }
    } finally {
      this.running = false;
      this.device.setReady(-1);
      if (this.closing) await this.finishClose();
    }
  }

  private async finishClose(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.scheduler.clear();
    this.chains.clear();
    this.kvs.clear();
    await Promise.allSettled([...this.executor.models.values()].map((m) => m.pkg.release()));
    post({ type: 'closed' });
  }
}

async function start(): Promise<void> {
  const device = new DeviceTurn(config.deviceState, config.deviceTurns);
  const clock = new RunClock(device);
  const kvs = new KvRegistry(config.lane, config.lanes);
  const chains = new Chains();
  let loop: EngineLoop;
  let ready: Extract<FromWorker, { type: 'ready' }>;
  try {
    const { models, device: where } = await loadModels(config, clock.exclusive);
    // Where advances' memory goes to the main thread, sized by the models' state; a steps run hands back K memories per row.
    const perRun = config.maxBatch * Math.max(...[...models.values()].map((m) => (config.segmentSteps ? (m.pkg.steps ?? 1) : 1)));
    const ring = new StateRingWriter(createStateRing(perRun, Math.max(...[...models.values()].map((m) => m.info.initState.length))));
    await warmUp(config, models);
    const executor = new Executor(config, models, ring, kvs, chains, clock);
    loop = new EngineLoop(device, clock, kvs, chains, new Scheduler(config, chains, device), executor);
    ready = { type: 'ready', models: [...models.values()].map((m) => m.info), device: where, ring: ring.shared };
  } catch (err) {
    post({ type: 'loadError', message: errorMessage(err) });
    return;
  }
  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'ops') loop.onOps(msg.ops);
    else if (msg.type === 'close') loop.close();
  });
  post(ready);
}

void start();
