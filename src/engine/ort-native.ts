// The onnxruntime IO-binding addon (src/engine/native/ort-bound-session.cc, built by `npm run
// native:build` into build/native/) as a Session (onnx-runtime.ts's interface): every run's inputs and
// outputs live in buffers the session keeps, one slot per set of input shapes, and on CUDA each slot can
// be a captured CUDA graph that later runs replay (onnxruntime-node binds no device memory, so it cannot
// capture one). The addon loads onnxruntime-node's own libonnxruntime; a run copies the feeds in on the
// calling thread and runs on a libuv thread, like onnxruntime-node's; a session's runs are queued, one at
// a time. Optional: loadBoundSessions() says why it is unavailable.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkRun, elementCount, gated, type Session, type SessionOptions, type Tensor, type ValueInfo } from './onnx-runtime.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const require = createRequire(import.meta.url);

/** Where `npm run native:build` writes the addon (RMT_NATIVE_ADDON overrides, e.g. in a bundle). */
export const NATIVE_ADDON = process.env.RMT_NATIVE_ADDON ?? path.join(ROOT, 'build/native/ort-bound-session.node');

export interface BoundSessionOptions extends SessionOptions {
  /**
   * CUDA only: capture each slot's run as a CUDA graph and replay it (the provider's enable_cuda_graph).
   * Used by bench/engine-limit.ts, not the engine: onnxruntime refuses it for the packages' graphs unless
   * freeDims fixes their shapes (bench/results/gpu-17/bound).
   */
  cudaGraph?: boolean;
  /** Fixes symbolic dimensions (e.g. { batch: 8 }): static shapes let a captured graph skip shape arithmetic. */
  freeDims?: Record<string, number>;
  /** CUDA only: the CUDA runtime library the copies in and out use (default libcudart.so.13). */
  cudart?: string;
}

export interface BoundSession extends Session {
  /** Binding slots made so far (one per distinct set of input shapes). */
  slots(): number;
}

interface Port { name: string; type: string; shape: (number | string)[] }
interface NativeTensor { type: string; dims: number[]; data: Float32Array | Uint16Array | BigInt64Array }
interface NativeSession {
  readonly inputs: Port[];
  readonly outputs: Port[];
  readonly slots: number;
  /** One run at a time: the slot's buffers are the run's (the wrapper queues them). */
  run(feeds: Record<string, NativeTensor>, fetches: string[]): Promise<Record<string, NativeTensor>>;
  release(): void;
}
type Addon = { BoundSession: new (file: string, options: object) => NativeSession };

/** onnxruntime-node's shared library: the one the addon must use (same release as the CUDA provider). */
function ortLibrary(): string {
  const pkg = path.dirname(require.resolve('onnxruntime-node/package.json'));
  return path.join(pkg, 'bin/napi-v6', process.platform, process.arch, 'libonnxruntime.so.1');
}

let addon: Addon | undefined;

/** The addon, or an Error saying why it cannot be used here. */
export function loadBoundSessions(): Addon | Error {
  if (addon) return addon;
  if (process.platform !== 'linux') return new Error(`the onnxruntime IO-binding addon is built for Linux only (this is ${process.platform})`);
  if (!existsSync(NATIVE_ADDON)) return new Error(`${NATIVE_ADDON} is missing: run npm run native:build (needs g++)`);
  try {
    addon = require(NATIVE_ADDON) as Addon;
    return addon;
  } catch (err) {
    return new Error(`${NATIVE_ADDON}: ${(err as Error).message}`);
  }
}

function info(p: Port): ValueInfo {
  return { name: p.name, type: p.type, shape: p.shape };
}

export function createBoundSession(file: string, options: BoundSessionOptions): BoundSession {
  const mod = loadBoundSessions();
  if (mod instanceof Error) throw mod;
  if (options.profilePrefix !== undefined) throw new Error(`${file}: profiling is not available through the IO-binding addon`);
  const native = new mod.BoundSession(file, {
    ortLibrary: ortLibrary(),
    provider: options.executionProvider,
    deviceId: options.deviceId ?? 0,
    ...(options.intraOpThreads !== undefined ? { intraOpThreads: options.intraOpThreads } : {}),
    cudaGraph: options.cudaGraph ?? false,
    ...(options.freeDims ? { freeDims: options.freeDims } : {}),
    cudart: options.executionProvider === 'cuda' ? options.cudart ?? 'libcudart.so.13' : '',
  });
  const label = path.basename(file);
  const inputs = native.inputs.map(info);
  const outputs = native.outputs.map(info);
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = queue.then(fn);
    queue = p.catch(() => undefined);
    return p;
  };
  return {
    file,
    inputs,
    outputs,
    async run(feeds, fetches) {
      const names = checkRun(label, inputs, outputs, feeds, fetches);
      const nativeFeeds = Object.fromEntries(Object.entries(feeds).map(([n, t]) => [n, { type: t.dtype, dims: t.dims, data: t.data }]));
      const result = await gated(options.exclusive, () => serial(() => native.run(nativeFeeds, names)));
      const out: Record<string, Tensor> = {};
      for (const name of names) {
        const t = result[name]!;
        if (elementCount(t.dims) !== t.data.length) throw new Error(`${label}: output '${name}' came back with ${t.data.length} elements for dims [${t.dims}]`);
        out[name] = { dtype: t.type, data: t.data, dims: t.dims } as Tensor;
      }
      return out;
    },
    endProfiling: () => undefined,
    slots: () => native.slots,
    async release() {
      await queue;
      native.release();
    },
  };
}
