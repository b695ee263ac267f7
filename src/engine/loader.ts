// Loading an engine thread's models (loadModelPackage owns onnxruntime): on the configured provider,
// or, when CUDA cannot start, the reason or (cpuFallback) the fp32 graphs on the CPU; then the warm-up.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { bucketSizes } from './batch-buckets.ts';
import { cudaPreflight, explainCudaFailure } from './cuda-check.ts';
import type { EngineDevice, ModelInfo, WorkerConfig } from './engine-protocol.ts';
import { loadModelPackage, type LoadOptions, type ModelPackage } from '../model/model-package.ts';
import { modelInfo } from '../model/model-spec.ts';
import { ORT_VERSION } from './onnx-runtime.ts';
import { runSegmentState, runSegmentSteps, type SegmentOptions } from './rmt-runner.ts';
import type { FeedScratch } from './segment-feeds.ts';

export interface Loaded {
  pkg: ModelPackage;
  info: ModelInfo;
  /** The buffers this model's segment and advance runs build their feeds in (a thread runs one batch at a time). */
  scratch: FeedScratch;
}

/** How a thread's segment and advance runs are padded: to segment_length with batchInvariant (see segment-feeds.ts). */
export function segmentOptions({ pkg, scratch }: Loaded, batchInvariant: boolean): SegmentOptions {
  return batchInvariant ? { width: pkg.segmentLength, scratch } : { scratch };
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}


/** Every model with `opts`; when one fails, those loaded before are released. */
async function loadAll(config: WorkerConfig, opts: LoadOptions): Promise<Map<string, Loaded>> {
  const models = new Map<string, Loaded>();
  for (const name of config.models) {
    const dir = path.resolve(config.modelsDir, name);
    try {
      const pkg = await loadModelPackage(dir, opts);
      models.set(name, { pkg, info: modelInfo(name, pkg), scratch: {} });
    } catch (err) {
      await releaseModels(models);
      throw new Error(`failed to load model '${name}' from ${dir}: ${errorMessage(err)}`, { cause: err });
    }
  }
  return models;
}

export async function releaseModels(models: Map<string, Loaded>): Promise<void> {
  await Promise.allSettled([...models.values()].map((m) => m.pkg.release()));
  models.clear();
}

/** True when the same packages load on the CPU: then a CUDA load failure is CUDA's, not the model's. */
async function loadsOnCpu(config: WorkerConfig): Promise<boolean> {
  for (const name of config.models) {
    try {
      const pkg = await loadModelPackage(path.resolve(config.modelsDir, name), { executionProvider: 'cpu', precision: 'fp32', intraOpThreads: 1 });
      await pkg.release();
    } catch {
      return false;
    }
  }
  return true;
}

/**
 * Loads every model on the configured provider, each run going through `exclusive`. A CUDA start that
 * cannot work fails with the reason (provider files, ORT version, libraries the loader cannot find),
 * or, with cpuFallback, loads the fp32 graphs on the CPU and says why in the device.
 */
export async function loadModels(config: WorkerConfig, exclusive: NonNullable<LoadOptions['exclusive']>): Promise<{ models: Map<string, Loaded>; device: EngineDevice }> {
  const common: LoadOptions = {
    exclusive, runner: config.ortRunner, ...(config.intraOpThreads !== undefined ? { intraOpThreads: config.intraOpThreads } : {}),
  };
  // One folder per thread: each thread profiles its own sessions, under the same graph names.
  if (config.profileDir !== undefined) {
    common.profileDir = config.lanes > 1 ? path.join(config.profileDir, `thread-${config.lane}`) : config.profileDir;
    await mkdir(common.profileDir, { recursive: true });
  }
  if (config.executionProvider === 'cpu') {
    const models = await loadAll(config, { ...common, executionProvider: 'cpu', precision: config.precision });
    return { models, device: { executionProvider: 'cpu', precision: config.precision } };
  }
  let cudaProblem: string | undefined;
  const pre = cudaPreflight(ORT_VERSION);
  if (pre.length) {
    cudaProblem = `CUDA execution provider cannot start: ${pre.join('; ')}${config.cpuFallback ? '' : '; set RMT_CPU_FALLBACK=1 to run on the CPU instead'}`;
  } else {
    try {
      // On CUDA the kernels run on the GPU; an intra-op pool (onnxruntime's default: one spinning
      // thread per core) would only busy-wait, taking CPU from the worker's and the API's threads.
      const models = await loadAll(config, {
        intraOpThreads: 1, ...common, executionProvider: 'cuda', deviceId: config.deviceId, precision: config.precision,
      });
      return { models, device: { executionProvider: 'cuda', deviceId: config.deviceId, precision: config.precision } };
    } catch (err) {
      const msg = errorMessage(err);
      if (!/failed to load ONNX graph on cuda/.test(msg) || !(await loadsOnCpu(config))) throw err;
      cudaProblem = explainCudaFailure(msg, ORT_VERSION);
    }
  }
  if (!config.cpuFallback) throw new Error(cudaProblem);
  const models = await loadAll(config, { ...common, executionProvider: 'cpu', precision: 'fp32' });
  return { models, device: { executionProvider: 'cpu', precision: 'fp32', fallbackReason: cudaProblem } };
}

/**
 * Runs every batch-size bucket once through each model's ingest graph (segment_state, else segment),
 * so no request pays a size's first run. Only that graph: the full segment graph's per-position
 * logits at the largest buckets took the H100's memory (onnxruntime's arenas keep what they grew to).
 */
export async function warmUp(config: WorkerConfig, models: Map<string, Loaded>): Promise<void> {
  if (!config.batchBuckets || !config.warmup) return;
  for (const loaded of models.values()) {
    const row = { ids: [loaded.info.specialTokens.pad], state: loaded.info.initState };
    const { steps } = loaded.pkg;
    for (const b of bucketSizes(config.maxBatch)) {
      await runSegmentState(loaded.pkg, new Array<typeof row>(b).fill(row), segmentOptions(loaded, config.batchInvariant));
      if (config.segmentSteps && steps !== undefined) {
        const stepsRow = { segments: new Array<number[]>(steps).fill(row.ids), state: row.state };
        await runSegmentSteps(loaded.pkg, new Array<typeof stepsRow>(b).fill(stepsRow), segmentOptions(loaded, config.batchInvariant));
      }
    }
  }
}
