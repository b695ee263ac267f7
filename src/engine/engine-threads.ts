// Starting an engine's threads: each loads every model (engine-thread.ts); they share the device state
// (several threads: device-turn.ts) and the progress counters. A package or provider that cannot load
// is refused with its own message (CUDA's reasons included).
import type { EngineDevice, FromWorker, ModelInfo, WorkerConfig } from './engine-protocol.ts';
import { Lane } from './engine-lane.ts';
import type { ThreadConfig } from './engine-options.ts';
import { StateRingReader, type StateRingShared } from './state-ring.ts';
import { awaitReady, startThread } from './thread-entry.ts';

export interface EngineThreads {
  lanes: Lane[];
  /** What the threads loaded (every thread loads the same), and where. */
  infos: ModelInfo[];
  device: EngineDevice;
  /** [runs, segments] finished over every thread (WorkerConfig.progress). */
  progress: Int32Array;
}

type Ready = { infos: ModelInfo[]; device: EngineDevice; ring: StateRingShared };

/** Starts `threads` engine threads with `config` and waits until every one has loaded its models. */
export async function startEngineThreads(config: ThreadConfig, threads: number): Promise<EngineThreads> {
  const deviceState = threads > 1 ? new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT) : undefined;
  const progressState = new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT);
  const names = Array.from({ length: threads }, (_, i) => (threads > 1 ? `engine thread ${i}` : 'engine thread'));
  const workers = Array.from({ length: threads }, (_, lane) => {
    const workerData: WorkerConfig = { ...config, lane, lanes: threads, progress: progressState, ...(deviceState ? { deviceState } : {}) };
    return startThread('engine-thread', { workerData });
  });

  // Every thread is let finish loading before any is terminated: ending a thread inside
  // onnxruntime's session creation aborts the process.
  const started = await Promise.allSettled(
    workers.map((w, i) =>
      awaitReady<Ready, FromWorker>(w, names[i]!, (msg) =>
        msg.type === 'ready' ? { ready: { infos: msg.models, device: msg.device, ring: msg.ring } } : msg.type === 'loadError' ? { refused: msg.message } : undefined,
      ),
    ),
  );
  const failed = started.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.allSettled(workers.map((w) => w.terminate()));
    throw failed.reason;
  }
  const ready = started.map((r) => (r as PromiseFulfilledResult<Ready>).value);
  const { infos, device } = ready[0]!;
  const lanes = workers.map((worker, index) => new Lane(index, names[index]!, worker, new StateRingReader(ready[index]!.ring)));
  return { lanes, infos, device, progress: new Int32Array(progressState) };
}
