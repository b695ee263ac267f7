// The one reader of a model package's model.json (format rmt-serve/model@1), with the state init files
// and the chat template it points at. No onnxruntime here: the API's catalog reads packages with it and
// never runs a graph; the engine's loader (model-package.ts) reads them with it, then opens the graphs.
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { readChatTemplate } from '../text/chat-template.ts';

export const MODEL_FORMAT = 'rmt-serve/model@1';

/** One entry of model.json `state`: a named state tensor and the file of its initial value. */
export interface StateEntry {
  name: string;
  shape: [number, number];
  dtype: 'float32';
  init: string;
}

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
  segmentLength: number;
  memoryTokens: number;
  dModel: number;
  vocabSize: number;
  specialTokens: { eos: number; pad: number };
  /** The tokenizer.json path. */
  tokenizerFile: string;
  state: StateEntry[];
  /** Initial value of each state entry, keyed by state name. */
  initState: Record<string, Float32Array>;
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
 * What the API and the workers know of a served model: the package's facts, with its memory state
 * flattened into one float32 tensor. `name` is the configured name (the package's folder).
 */
export interface ModelInfo extends Pick<ModelSpec,
  'dir' | 'description' | 'segmentLength' | 'memoryTokens' | 'dModel' | 'vocabSize' | 'specialTokens' | 'tokenizerFile' | 'task' | 'chatTemplate' | 'bosToken' | 'eosToken'> {
  name: string;
  stateShape: number[];
  stateDtype: 'float32';
  stateBytes: number;
  initState: Float32Array;
}

export function modelInfo(name: string, spec: ModelSpec): ModelInfo {
  const memory = spec.state.find((s) => s.name === 'memory')!;
  const stateShape = [...memory.shape];
  return {
    name, dir: spec.dir, description: spec.description, segmentLength: spec.segmentLength, memoryTokens: spec.memoryTokens,
    dModel: spec.dModel, vocabSize: spec.vocabSize, specialTokens: { ...spec.specialTokens }, stateShape, stateDtype: 'float32',
    stateBytes: stateShape.reduce((a, b) => a * b, 1) * 4,
    // A copy: the info is posted between threads and handed to callers; the package keeps its own.
    initState: spec.initState.memory!.slice(),
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
  if (manifest.architecture !== 'rmt') {
    fail(MJ, `'architecture' expected "rmt", found ${JSON.stringify(manifest.architecture)}`);
  }
  const name = str(manifest, 'name', MJ);
  const segmentLength = positiveInt(manifest, 'segment_length', MJ);
  const memoryTokens = positiveInt(manifest, 'memory_tokens', MJ);
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
    if (raw.dtype !== 'float32') fail(MJ, `'${where}.dtype' expected "float32", found ${JSON.stringify(raw.dtype)}`);
    if (!Array.isArray(raw.shape) || raw.shape.length !== 2) fail(MJ, `'${where}.shape' must be [tokens, d_model]`);
    const shape = raw.shape.map((v: unknown, k) => intAtLeast(v, 1, MJ, `${where}.shape[${k}]`));
    const init = str(raw, 'init', MJ, `${where}.init`);
    const initPath = requireFile(dir, init, `${where} init`);
    const expectedBytes = shape[0]! * shape[1]! * 4;
    const size = (await stat(initPath)).size;
    if (size !== expectedBytes) {
      fail(init, `state init size expected ${expectedBytes} bytes (float32 [${shape.join(', ')}]), found ${size}`);
    }
    const bytes = await readFile(initPath);
    // Copy into an aligned buffer and decode explicitly as little-endian.
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const values = new Float32Array(expectedBytes / 4);
    for (let k = 0; k < values.length; k++) values[k] = view.getFloat32(k * 4, true);
    state.push({ name: stateName, shape: [shape[0]!, shape[1]!], dtype: 'float32', init });
    initState[stateName] = values;
  }
  const memory = state.find((s) => s.name === 'memory');
  if (!memory) fail(MJ, "'state' must contain an entry named \"memory\"");
  if (memory.shape[0] !== memoryTokens) {
    fail(MJ, `'state.memory.shape[0]' expected memory_tokens=${memoryTokens}, found ${memory.shape[0]}`);
  }
  const dModel = memory.shape[1];

  const kvRaw = isRecord(manifest.decode) ? manifest.decode.past_key_values : undefined;
  if (!isRecord(kvRaw)) fail(MJ, "'decode.past_key_values' must be an object");
  const kv: KvLayout = {
    layers: positiveInt(kvRaw, 'layers', MJ, 'decode.past_key_values.layers'),
    heads: positiveInt(kvRaw, 'heads', MJ, 'decode.past_key_values.heads'),
    headDim: positiveInt(kvRaw, 'head_dim', MJ, 'decode.past_key_values.head_dim'),
  };

  const chat = await readChatTemplate(tokenizerFile);
  return {
    dir, name, description: String(manifest.description ?? ''), segmentLength, memoryTokens, dModel, vocabSize, specialTokens,
    tokenizerFile, state, initState, kv, graphs: isRecord(manifest.graphs) ? manifest.graphs : {},
    ...(manifest.task !== undefined ? { task: manifest.task } : {}), ...chat,
  };
}
