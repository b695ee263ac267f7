// The only module that touches onnxruntime-node: everything else works with
// plain typed arrays so the engine can be tested and swapped independently.
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';

export type DType = 'float32' | 'int64' | 'float16';

/** float16 data is raw IEEE half-float bits in a Uint16Array on every Node (see halfBits). */
export type Tensor =
  | { dtype: 'float32'; data: Float32Array; dims: number[] }
  | { dtype: 'int64'; data: BigInt64Array; dims: number[] }
  | { dtype: 'float16'; data: Uint16Array; dims: number[] };

/** A dimension is a fixed size or a symbolic name (free at run time). */
export type Dim = number | string;

export interface ValueInfo {
  name: string;
  type: string;
  shape: Dim[];
}

export interface SessionOptions {
  executionProvider: 'cpu' | 'cuda';
  /** CUDA device ordinal (cuda only). */
  deviceId?: number;
  intraOpThreads?: number;
  /** Writes an onnxruntime profile (JSON, one event per node run) starting with this path; see Session.endProfiling. */
  profilePrefix?: string;
  /** Wraps each onnxruntime run, inputs checked and converted (engine threads sharing a device may take turns). */
  exclusive?: RunGate;
}

/** Calls `run` when the device is this caller's (and times it); resolves with its result. */
export type RunGate = <T>(run: () => Promise<T>) => Promise<T>;

/** `run` through the gate when there is one. */
export function gated<T>(gate: RunGate | undefined, run: () => Promise<T>): Promise<T> {
  return gate ? gate(run) : run();
}

export interface Session {
  readonly file: string;
  readonly inputs: readonly ValueInfo[];
  readonly outputs: readonly ValueInfo[];
  run(feeds: Record<string, Tensor>, fetches?: string[]): Promise<Record<string, Tensor>>;
  /** Ends profiling (if on) and returns the profile file's path, else undefined. */
  endProfiling(): string | undefined;
  release(): Promise<void>;
}

export function float32(data: Float32Array, dims: number[]): Tensor {
  return { dtype: 'float32', data, dims };
}

export function float16(data: Uint16Array, dims: number[]): Tensor {
  return { dtype: 'float16', data, dims };
}

export function int64(values: ArrayLike<number> | BigInt64Array, dims: number[]): Tensor {
  const data = values instanceof BigInt64Array ? values : BigInt64Array.from(Array.from(values), (v) => BigInt(v));
  return { dtype: 'int64', data, dims };
}

export function elementCount(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

function describeShape(shape: readonly Dim[]): string {
  return `[${shape.join(', ')}]`;
}

function toValueInfo(meta: ort.InferenceSession.ValueMetadata): ValueInfo {
  if (!meta.isTensor) return { name: meta.name, type: 'non-tensor', shape: [] };
  return { name: meta.name, type: meta.type, shape: [...meta.shape] };
}

type HalfArray = ArrayBufferView & { readonly length: number };
const Float16Array = (globalThis as { Float16Array?: abstract new (...args: never[]) => HalfArray }).Float16Array;

/**
 * The bits of float16 data as a Uint16Array. onnxruntime-common hands float16 outputs back as a
 * Float16Array where the runtime has one (Node >= 24; 22 with --js-float16array) and as a Uint16Array
 * of bit patterns elsewhere: either is viewed as Uint16Array here (same memory: no copy, no rounding),
 * so the engine sees the same bits on every Node. Inputs go the other way in toOrt.
 */
export function halfBits(data: unknown): Uint16Array {
  if (data instanceof Uint16Array) return data;
  if (Float16Array && data instanceof Float16Array) return new Uint16Array(data.buffer, data.byteOffset, data.length);
  throw new TypeError(`float16 data must be a Uint16Array or a Float16Array, found ${Object.prototype.toString.call(data)}`);
}

/**
 * Our tensor as onnxruntime's (the data is shared, not copied). Where the runtime has Float16Array,
 * ort.Tensor holds float16 data as one, and onnxruntime-node 1.29's binding reads a Float16Array input
 * as 0 bytes ("not enough space: expected N, got 0" on Node 24; rejected on 22 with
 * --js-float16array): microsoft/onnxruntime issue #26791, fix proposed in PR #32323. The binding reads `data` from the
 * tensor object, so the Uint16Array of bits is put there, as an own property over the getter; every
 * onnxruntime-node release takes a Uint16Array for float16.
 */
export function toOrt(t: Tensor): ort.Tensor {
  const tensor = new ort.Tensor(t.dtype, t.data, t.dims);
  if (t.dtype === 'float16' && !(tensor.data instanceof Uint16Array)) Object.defineProperty(tensor, 'data', { value: t.data });
  return tensor;
}

export function fromOrt(value: ort.OnnxValue, file: string, name: string): Tensor {
  const t = value as ort.Tensor;
  const dims = [...t.dims];
  switch (t.type) {
    case 'float32':
      return { dtype: 'float32', data: t.data as Float32Array, dims };
    case 'int64':
      return { dtype: 'int64', data: t.data as BigInt64Array, dims };
    case 'float16':
      return { dtype: 'float16', data: halfBits(t.data), dims };
    default:
      throw new Error(`${file}: output '${name}' has unsupported dtype ${t.type}`);
  }
}

/** Checks feeds against the graph's declared inputs; ORT's own errors do not name the file. */
export function checkFeeds(file: string, inputs: readonly ValueInfo[], feeds: Record<string, Tensor>): void {
  const expected = inputs.map((i) => i.name).sort();
  const given = Object.keys(feeds).sort();
  const missing = expected.filter((n) => !given.includes(n));
  const extra = given.filter((n) => !expected.includes(n));
  if (missing.length || extra.length) {
    throw new Error(
      `${file}: feed names do not match graph inputs (missing: ${missing.join(', ') || 'none'}; ` +
        `unexpected: ${extra.join(', ') || 'none'})`,
    );
  }
  for (const info of inputs) {
    const t = feeds[info.name]!;
    if (t.dtype !== info.type) {
      throw new Error(`${file}: input '${info.name}' expects dtype ${info.type}, found ${t.dtype}`);
    }
    const shapeError = () =>
      new Error(
        `${file}: input '${info.name}' expects shape ${describeShape(info.shape)}, ` +
          `found ${describeShape(t.dims)}`,
      );
    if (t.dims.length !== info.shape.length) throw shapeError();
    info.shape.forEach((d, i) => {
      if (typeof d === 'number' && d >= 0 && d !== t.dims[i]) throw shapeError();
    });
    if (elementCount(t.dims) !== t.data.length) {
      throw new Error(
        `${file}: input '${info.name}' has dims ${describeShape(t.dims)} ` +
          `(${elementCount(t.dims)} elements) but ${t.data.length} data elements`,
      );
    }
  }
}

/** A run's feeds checked and its fetches resolved (all outputs when none are named): the output names. */
export function checkRun(label: string, inputs: readonly ValueInfo[], outputs: readonly ValueInfo[], feeds: Record<string, Tensor>, fetches?: string[]): string[] {
  checkFeeds(label, inputs, feeds);
  const names = fetches ?? outputs.map((o) => o.name);
  const unknown = names.filter((n) => !outputs.some((o) => o.name === n));
  if (unknown.length) throw new Error(`${label}: unknown outputs requested: ${unknown.join(', ')}`);
  return names;
}

export async function createSession(file: string, options: SessionOptions): Promise<Session> {
  // Loading by path (not buffer) lets ORT resolve external weight files next to the graph.
  // 'all' turns on onnxruntime's fusions (layer norm, GELU, MatMul+bias, attention where the pattern
  // matches) for the provider the graph is placed on. Only the named provider is listed: onnxruntime
  // then fails to create the session if it cannot load it, instead of quietly running on the CPU.
  const provider: ort.InferenceSession.ExecutionProviderConfig =
    options.executionProvider === 'cuda' ? { name: 'cuda', deviceId: options.deviceId ?? 0 } : 'cpu';
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: [provider],
    graphOptimizationLevel: 'all',
  };
  if (options.intraOpThreads !== undefined) sessionOptions.intraOpNumThreads = options.intraOpThreads;
  if (options.profilePrefix !== undefined) {
    sessionOptions.enableProfiling = true;
    sessionOptions.profileFilePrefix = options.profilePrefix;
  }
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(file, sessionOptions);
  } catch (err) {
    throw new Error(`${file}: failed to load ONNX graph on ${options.executionProvider}: ${(err as Error).message}`);
  }
  let profiling = options.profilePrefix !== undefined;
  const label = path.basename(file);
  const inputs = session.inputMetadata.map(toValueInfo);
  const outputs = session.outputMetadata.map(toValueInfo);

  const endProfiling = (): string | undefined => {
    if (!profiling) return undefined;
    profiling = false;
    // onnxruntime-node's endProfiling() returns nothing: find the newest file with the prefix.
    session.endProfiling();
    return newestWithPrefix(options.profilePrefix!);
  };
  return {
    file,
    inputs,
    outputs,
    async run(feeds, fetches) {
      const names = checkRun(label, inputs, outputs, feeds, fetches);
      const ortFeeds: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrt(t);
      const result = await gated(options.exclusive, () => session.run(ortFeeds, names));
      const out: Record<string, Tensor> = {};
      for (const name of names) out[name] = fromOrt(result[name]!, label, name);
      return out;
    },
    endProfiling,
    async release() {
      endProfiling();
      await session.release();
    },
  };
}

function newestWithPrefix(prefix: string): string | undefined {
  const dir = path.dirname(prefix);
  const base = path.basename(prefix);
  let best: { file: string; t: number } | undefined;
  for (const f of readdirSync(dir)) {
    if (!f.startsWith(base) || !f.endsWith('.json')) continue;
    const file = path.join(dir, f);
    const t = statSync(file).mtimeMs;
    if (!best || t > best.t) best = { file, t };
  }
  return best?.file;
}

/** Version of the onnxruntime-node package in use (the CUDA provider must be built for the same). */
export const ORT_VERSION: string = ort.env.versions.node ?? ort.env.versions.common;
