// The one reader of a model package's model.json (format rmt-serve/model@1), with the state init files
// and the chat template it points at. No onnxruntime here: the API's catalog reads packages with it and
// never runs a graph; the engine's loader (model-package.ts) reads them with it, then opens the graphs.
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { readChatTemplate } from '../text/chat-template.ts';
import { flatShape, flattenState, stateLayout, type StateLayout, type StateSlot } from './state-layout.ts';

export const MODEL_FORMAT = 'rmt-serve/model@1';

/** One entry of model.json `state`: a named state tensor and the file of its initial value. */
export interface StateEntry {
  name: string;
  /** Without the batch axis, e.g. [16, 256] (the RMT's memory) or [2, 32, 64] (Transformer-XL's mems). */
  shape: number[];
  dtype: 'float32';
  init: string;
}

/**
 * How decode.onnx is conditioned on the session state (model.json `decode.conditioning`), the one
 * thing about generation that differs between packages:
 * - `prefix` (no `conditioning`: the RMT's v1 contract): the one state entry `memory` [M, d_model] is
 *   the decode graph's `memory` input at prefill and becomes the KV cache's first M positions; later
 *   steps feed an empty `memory`. `positions` = M;
 * - `state` (`"conditioning": "state"`): every call takes `state.<name>` of every entry; the cache
 *   holds token positions only.
 */
export type DecodeConditioning = { kind: 'prefix'; positions: number } | { kind: 'state' };

export interface KvLayout {
  layers: number;
  heads: number;
  headDim: number;
}

/** model.json, validated and typed; paths resolved against the package folder. */
export interface ModelSpec {
  dir: string;
  /** model.json `name` (the service names a model by its folder: see ModelInfo.name). */
  name: string;
  description: string;
  /** model.json `architecture`, as written (descriptive: what the engine runs follows from the contract). */
  architecture: string;
  segmentLength: number;
  /** model.json `memory_tokens` (the RMT's M; 0 for architectures without memory tokens). */
  memoryTokens: number;
  /** The RMT's memory width; for other packages config.d_model (heads x head_dim without it). */
  dModel: number;
  vocabSize: number;
  specialTokens: { eos: number; pad: number };
  /** The tokenizer.json path. */
  tokenizerFile: string;
  state: StateEntry[];
  /** Where each entry lies in a session's flat state (state-layout.ts). */
  stateLayout: StateLayout;
  /** Initial value of each state entry, keyed by state name. */
  initState: Record<string, Float32Array>;
  /** The initial flat state (every entry's initial value, in manifest order). */
  initFlat: Float32Array;
  conditioning: DecodeConditioning;
  kv: KvLayout;
  /** model.json `graphs`, per precision, as written: the loader checks the precision it opens. */
  graphs: Record<string, unknown>;
  task?: unknown;
  /** The chat template of tokenizer_config.json (`chat_template`); absent: chat is refused. */
  chatTemplate?: string;
  /** Special tokens the chat template may use (tokenizer_config.json bos_token, eos_token). */
  bosToken?: string;
  eosToken?: string;
}

/**
 * What the API and the workers know of a served model: the package's facts, with its state entries
 * flattened into one float32 array (state-layout.ts). `name` is the configured name (the package's folder).
 */
export interface ModelInfo extends Pick<ModelSpec,
  'dir' | 'description' | 'architecture' | 'segmentLength' | 'memoryTokens' | 'dModel' | 'vocabSize' | 'specialTokens' | 'tokenizerFile' | 'task' | 'chatTemplate' | 'bosToken' | 'eosToken'> {
  name: string;
  /** The flat state's shape as sessions and snapshots record it: the one entry's shape, or [total floats] (flatShape). */
  stateShape: number[];
  stateDtype: 'float32';
  stateBytes: number;
  /** The entries within the flat state. */
  stateEntries: StateSlot[];
  initState: Float32Array;
}

export function modelInfo(name: string, spec: ModelSpec): ModelInfo {
  const layout = spec.stateLayout;
  return {
    name, dir: spec.dir, description: spec.description, architecture: spec.architecture, segmentLength: spec.segmentLength, memoryTokens: spec.memoryTokens,
    dModel: spec.dModel, vocabSize: spec.vocabSize, specialTokens: { ...spec.specialTokens }, stateShape: flatShape(layout), stateDtype: 'float32',
    stateBytes: layout.size * 4,
    stateEntries: layout.slots.map((s) => ({ ...s, shape: [...s.shape] })),
    // A copy: the info is posted between threads and handed to callers; the package keeps its own.
    initState: spec.initFlat.slice(),
    tokenizerFile: spec.tokenizerFile,
    ...(spec.task !== undefined ? { task: spec.task } : {}),
    ...(spec.chatTemplate !== undefined ? { chatTemplate: spec.chatTemplate } : {}),
    ...(spec.bosToken !== undefined ? { bosToken: spec.bosToken } : {}),
    ...(spec.eosToken !== undefined ? { eosToken: spec.eosToken } : {}),
  };
}

class PackageError extends Error {}

export function fail(file: string, message: string): never {
  throw new PackageError(`${file}: ${message}`);
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** An integer >= min (1: positive, 0: non-negative), or a failure naming the key. */
function intAtLeast(v: unknown, min: number, file: string, where: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    fail(file, `'${where}' must be ${min > 0 ? 'a positive' : 'a non-negative'} integer, found ${JSON.stringify(v)}`);
  }
  return v;
}

function positiveInt(obj: Record<string, unknown>, key: string, file: string, where = key): number {
  return intAtLeast(obj[key], 1, file, where);
}

export function str(obj: Record<string, unknown>, key: string, file: string, where = key): string {
  const v = obj[key];
  if (typeof v !== 'string' || v === '') fail(file, `'${where}' must be a non-empty string`);
  return v;
}

export function requireFile(dir: string, name: string, what: string): string {
  const full = path.join(dir, name);
  if (!existsSync(full)) fail(name, `${what} file not found at ${full}`);
  return full;
}

/** Reads and validates `<dir>/model.json`; a problem fails naming the offending file. */
export async function readModelSpec(dir: string): Promise<ModelSpec> {
  const MJ = 'model.json';
  const manifestPath = requireFile(dir, MJ, 'manifest');
  let manifest: unknown;
  try {
    manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
  } catch (err) {
    fail(MJ, `invalid JSON: ${(err as Error).message}`);
  }
  if (!isRecord(manifest)) fail(MJ, 'must be a JSON object');
  if (manifest.format !== MODEL_FORMAT) {
    fail(MJ, `'format' expected "${MODEL_FORMAT}", found ${JSON.stringify(manifest.format)}`);
  }
  const architecture = str(manifest, 'architecture', MJ);
  const decodeRaw = isRecord(manifest.decode) ? manifest.decode : undefined;
  const conditioningRaw = decodeRaw?.conditioning;
  if (conditioningRaw !== undefined && conditioningRaw !== 'state') {
    fail(MJ, `'decode.conditioning' expected "state" (or absent: the RMT's memory prefix), found ${JSON.stringify(conditioningRaw)}`);
  }
  // v1 packages without `conditioning` are RMTs, and say so.
  if (conditioningRaw === undefined && architecture !== 'rmt') {
    fail(MJ, `'architecture' expected "rmt" for a package without 'decode.conditioning', found ${JSON.stringify(architecture)}`);
  }
  const name = str(manifest, 'name', MJ);
  const segmentLength = positiveInt(manifest, 'segment_length', MJ);
  const memoryTokens = intAtLeast(manifest.memory_tokens, conditioningRaw === 'state' ? 0 : 1, MJ, 'memory_tokens');
  const vocabSize = positiveInt(manifest, 'vocab_size', MJ);

  const special = manifest.special_tokens;
  if (!isRecord(special)) fail(MJ, "'special_tokens' must be an object");
  const specialTokens = {
    eos: intAtLeast(special.eos, 0, MJ, 'special_tokens.eos'),
    pad: intAtLeast(special.pad, 0, MJ, 'special_tokens.pad'),
  };

  const tokenizerName = str(manifest, 'tokenizer', MJ);
  const tokenizerFile = requireFile(dir, tokenizerName, 'tokenizer');

  // State entries: each init file holds raw little-endian float32 of product(shape) elements.
  if (!Array.isArray(manifest.state) || manifest.state.length === 0) fail(MJ, "'state' must be a non-empty array");
  const state: StateEntry[] = [];
  const initState: Record<string, Float32Array> = {};
  for (const [i, raw] of manifest.state.entries()) {
    const where = `state[${i}]`;
    if (!isRecord(raw)) fail(MJ, `'${where}' must be an object`);
    const stateName = str(raw, 'name', MJ, `${where}.name`);
    if (state.some((e) => e.name === stateName)) fail(MJ, `'${where}.name' ${JSON.stringify(stateName)} is declared twice`);
    if (raw.dtype !== 'float32') fail(MJ, `'${where}.dtype' expected "float32", found ${JSON.stringify(raw.dtype)}`);
    // Rank 1..8: a snapshot header carries at most 8 dims.
    if (!Array.isArray(raw.shape) || raw.shape.length === 0 || raw.shape.length > 8) fail(MJ, `'${where}.shape' must be a list of 1 to 8 dims`);
    const shape = raw.shape.map((v: unknown, k) => intAtLeast(v, 1, MJ, `${where}.shape[${k}]`));
    const init = str(raw, 'init', MJ, `${where}.init`);
    const initPath = requireFile(dir, init, `${where} init`);
    const expectedBytes = shape.reduce((a, b) => a * b, 4);
    const size = (await stat(initPath)).size;
    if (size !== expectedBytes) {
      fail(init, `state init size expected ${expectedBytes} bytes (float32 [${shape.join(', ')}]), found ${size}`);
    }
    const bytes = await readFile(initPath);
    // Copy into an aligned buffer and decode explicitly as little-endian.
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const values = new Float32Array(expectedBytes / 4);
    for (let k = 0; k < values.length; k++) values[k] = view.getFloat32(k * 4, true);
    state.push({ name: stateName, shape, dtype: 'float32', init });
    initState[stateName] = values;
  }

  const kvRaw = decodeRaw?.past_key_values;
  if (!isRecord(kvRaw)) fail(MJ, "'decode.past_key_values' must be an object");
  const kv: KvLayout = {
    layers: positiveInt(kvRaw, 'layers', MJ, 'decode.past_key_values.layers'),
    heads: positiveInt(kvRaw, 'heads', MJ, 'decode.past_key_values.heads'),
    headDim: positiveInt(kvRaw, 'head_dim', MJ, 'decode.past_key_values.head_dim'),
  };

  let conditioning: DecodeConditioning;
  let dModel: number;
  if (conditioningRaw === undefined) {
    // The RMT's contract: one entry, `memory` [memory_tokens, d_model], prepended to the decode cache.
    const memory = state.find((s) => s.name === 'memory');
    if (!memory) fail(MJ, "'state' must contain an entry named \"memory\"");
    if (state.length !== 1) fail(MJ, `'state' of a package without 'decode.conditioning' must be the one entry "memory", found ${state.map((s) => s.name).join(', ')}`);
    if (memory.shape.length !== 2) fail(MJ, "'state[0].shape' must be [tokens, d_model]");
    if (memory.shape[0] !== memoryTokens) {
      fail(MJ, `'state.memory.shape[0]' expected memory_tokens=${memoryTokens}, found ${memory.shape[0]}`);
    }
    conditioning = { kind: 'prefix', positions: memoryTokens };
    dModel = memory.shape[1]!;
  } else {
    conditioning = { kind: 'state' };
    const d = isRecord(manifest.config) ? manifest.config.d_model : undefined;
    dModel = d === undefined ? kv.heads * kv.headDim : intAtLeast(d, 1, MJ, 'config.d_model');
  }
  const stateLayoutOf = stateLayout(state);

  const chat = await readChatTemplate(tokenizerFile);
  return {
    dir, name, description: String(manifest.description ?? ''), architecture, segmentLength, memoryTokens, dModel, vocabSize, specialTokens,
    tokenizerFile, state, stateLayout: stateLayoutOf, initState, initFlat: flattenState(stateLayoutOf, initState), conditioning, kv,
    graphs: isRecord(manifest.graphs) ? manifest.graphs : {},
    ...(manifest.task !== undefined ? { task: manifest.task } : {}), ...chat,
  };
}
