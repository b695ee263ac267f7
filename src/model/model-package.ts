// Loads and validates a model package (format rmt-serve/model@1) so that
// contract problems surface at load time with the offending file named.
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { createSession, type RunGate, type Session, type SessionOptions } from '../engine/onnx-runtime.ts';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.ts';
import { readChatTemplate } from '../text/chat-template.ts';

export const MODEL_FORMAT = 'rmt-serve/model@1';

export interface StateSpec {
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

export interface ModelPackage {
  dir: string;
  name: string;
  segmentLength: number;
  memoryTokens: number;
  dModel: number;
  vocabSize: number;
  specialTokens: { eos: number; pad: number };
  state: StateSpec[];
  /** Initial value of each state entry, keyed by state name. */
  initState: Record<string, Float32Array>;
  kv: KvLayout;
  precision: Precision;
  /** dtype of the decode graph's past/present key values (the fp16 graphs keep them in fp16). */
  kvDtype: 'float32' | 'float16';
  /**
   * segmentState: optional graph (graphs.<precision>.segment_state) with next_state.memory as its
   * only output. onnxruntime runs every node of a graph whatever outputs are fetched, and the full
   * segment graph projects every position onto the vocabulary for token_logprobs; a run that needs
   * only the next memory uses this one when the package has it.
   */
  sessions: { segment: Session; decode: Session; segmentState?: Session; segmentSteps?: Session };
  /**
   * Segments per run of sessions.segmentSteps (graphs.<precision>.segment_state_steps, axis 1 of its
   * input_ids): the segment_state graph unrolled, each step's memory feeding the next inside the run, so
   * the engine thread's turnaround between a session's dependent runs is paid once per that many
   * segments. Absent without that graph.
   */
  steps?: number;
  tokenizer: TextTokenizer;
  /** The chat template of tokenizer_config.json (`chat_template`), if the package has one. */
  chatTemplate?: string;
  release(): Promise<void>;
}

export type Precision = 'fp32' | 'fp16';

export interface LoadOptions {
  executionProvider?: SessionOptions['executionProvider'];
  deviceId?: number;
  intraOpThreads?: number;
  precision?: Precision;
  /** Folder for onnxruntime profiles (one file per graph). */
  profileDir?: string;
  /** Wraps every run of the package's sessions (see SessionOptions.exclusive). */
  exclusive?: RunGate;
}

interface IoSpec {
  name: string;
  dtype: string;
  rank: number;
}

// The graph contract the runner relies on (names, dtypes, ranks). Segment graphs take ids and mask of
// rank 2 ([batch, tokens]); the segment_state graph unrolled over K segments (rmt_toolkit steps-graph)
// takes them as [batch, K, tokens].
const segmentInputs = (idsRank: number): IoSpec[] => [
  { name: 'input_ids', dtype: 'int64', rank: idsRank },
  { name: 'attention_mask', dtype: 'int64', rank: idsRank },
  { name: 'state.memory', dtype: 'float32', rank: 3 },
];
const NEXT_STATE: IoSpec = { name: 'next_state.memory', dtype: 'float32', rank: 3 };

const SEGMENT_IO = {
  inputs: segmentInputs(2),
  outputs: [NEXT_STATE, { name: 'logits', dtype: 'float32', rank: 2 }, { name: 'token_logprobs', dtype: 'float32', rank: 2 }],
} satisfies Record<string, IoSpec[]>;

const SEGMENT_STATE_IO = { inputs: segmentInputs(2), outputs: [NEXT_STATE] } satisfies Record<string, IoSpec[]>;

const SEGMENT_STEPS_IO = {
  inputs: segmentInputs(3),
  outputs: [NEXT_STATE, { name: 'step_states.memory', dtype: 'float32', rank: 4 }],
} satisfies Record<string, IoSpec[]>;

/** State and logits are float32 in every precision; the KV cache has the graph's own dtype. */
function decodeIo(kvDtype: string): { inputs: IoSpec[]; outputs: IoSpec[] } {
  return {
    inputs: [
      { name: 'input_ids', dtype: 'int64', rank: 2 },
      { name: 'attention_mask', dtype: 'int64', rank: 2 },
      { name: 'memory', dtype: 'float32', rank: 3 },
      { name: 'past_key_values', dtype: kvDtype, rank: 6 },
    ],
    outputs: [
      { name: 'logits', dtype: 'float32', rank: 2 },
      { name: 'present_key_values', dtype: kvDtype, rank: 6 },
    ],
  };
}

class PackageError extends Error {}

function fail(file: string, message: string): never {
  throw new PackageError(`${file}: ${message}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
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

function str(obj: Record<string, unknown>, key: string, file: string, where = key): string {
  const v = obj[key];
  if (typeof v !== 'string' || v === '') fail(file, `'${where}' must be a non-empty string`);
  return v;
}

function requireFile(dir: string, name: string, what: string): string {
  const full = path.join(dir, name);
  if (!existsSync(full)) fail(name, `${what} file not found at ${full}`);
  return full;
}

function checkIo(file: string, session: Session, spec: { inputs: IoSpec[]; outputs: IoSpec[] }): void {
  for (const [kind, declared, expected] of [
    ['input', session.inputs, spec.inputs],
    ['output', session.outputs, spec.outputs],
  ] as const) {
    const names = declared.map((d) => d.name);
    const wanted = expected.map((e) => e.name);
    const missing = wanted.filter((n) => !names.includes(n));
    const extra = names.filter((n) => !wanted.includes(n));
    if (missing.length || extra.length) {
      fail(
        file,
        `${kind}s expected [${wanted.join(', ')}], found [${names.join(', ')}]` +
          (missing.length ? `; missing ${missing.join(', ')}` : '') +
          (extra.length ? `; unexpected ${extra.join(', ')}` : ''),
      );
    }
    for (const e of expected) {
      const d = declared.find((x) => x.name === e.name)!;
      if (d.type !== e.dtype) fail(file, `${kind} '${e.name}' expected dtype ${e.dtype}, found ${d.type}`);
      if (d.shape.length !== e.rank) {
        fail(file, `${kind} '${e.name}' expected rank ${e.rank}, found shape [${d.shape.join(', ')}]`);
      }
    }
  }
}

/** A fixed graph dim must agree with model.json; symbolic dims are free. */
function checkDim(file: string, session: Session, input: string, axis: number, expected: number): void {
  const d = session.inputs.find((i) => i.name === input)?.shape[axis];
  if (typeof d === 'number' && d !== expected) {
    fail(file, `input '${input}' axis ${axis} expected ${expected} (from model.json), found ${d}`);
  }
}

export async function loadModelPackage(dir: string, options: LoadOptions = {}): Promise<ModelPackage> {
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
  const tokenizerPath = requireFile(dir, tokenizerName, 'tokenizer');

  // State entries: each init file holds raw little-endian float32 of product(shape) elements.
  if (!Array.isArray(manifest.state) || manifest.state.length === 0) fail(MJ, "'state' must be a non-empty array");
  const state: StateSpec[] = [];
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

  const precision = options.precision ?? 'fp32';
  const G = `graphs.${precision}`;
  const graphs = isRecord(manifest.graphs) ? manifest.graphs[precision] : undefined;
  if (!isRecord(graphs)) {
    const have = isRecord(manifest.graphs) ? Object.keys(manifest.graphs).join(', ') : 'none';
    fail(MJ, `'${G}' must be an object (this package ships precisions: ${have})`);
  }
  const segmentName = str(graphs, 'segment', MJ, `${G}.segment`);
  const decodeName = str(graphs, 'decode', MJ, `${G}.decode`);
  const stateName = graphs.segment_state === undefined ? undefined : str(graphs, 'segment_state', MJ, `${G}.segment_state`);
  const segmentPath = requireFile(dir, segmentName, 'segment graph');
  const decodePath = requireFile(dir, decodeName, 'decode graph');
  const statePath = stateName === undefined ? undefined : requireFile(dir, stateName, 'segment_state graph');
  const stepsName = graphs.segment_state_steps === undefined ? undefined : str(graphs, 'segment_state_steps', MJ, `${G}.segment_state_steps`);
  const stepsPath = stepsName === undefined ? undefined : requireFile(dir, stepsName, 'segment_state_steps graph');
  if (typeof graphs.weights === 'string') requireFile(dir, graphs.weights, 'external weights');
  const kvDtype = precision === 'fp16' ? 'float16' : 'float32';

  const tokenizer = await loadTokenizer(tokenizerPath);
  const { chatTemplate } = await readChatTemplate(tokenizerPath);

  const base: SessionOptions = { executionProvider: options.executionProvider ?? 'cpu' };
  if (options.deviceId !== undefined) base.deviceId = options.deviceId;
  if (options.intraOpThreads !== undefined) base.intraOpThreads = options.intraOpThreads;
  if (options.exclusive !== undefined) base.exclusive = options.exclusive;
  const sessionOptions = (graph: string): SessionOptions =>
    options.profileDir === undefined ? base : { ...base, profilePrefix: path.join(options.profileDir, `${name}-${graph}`) };
  const opened: Session[] = [];
  const open = async (file: string, graph: string) => {
    const s = await createSession(file, sessionOptions(graph));
    opened.push(s);
    return s;
  };
  let segment: Session, decode: Session, segmentState: Session | undefined, segmentSteps: Session | undefined;
  let steps: number | undefined;
  try {
    segment = await open(segmentPath, 'segment');
    decode = await open(decodePath, 'decode');
    if (statePath !== undefined) segmentState = await open(statePath, 'segment_state');
    if (stepsPath !== undefined) segmentSteps = await open(stepsPath, 'segment_state_steps');
    checkIo(segmentName, segment, SEGMENT_IO);
    checkDim(segmentName, segment, 'state.memory', 1, memoryTokens);
    checkDim(segmentName, segment, 'state.memory', 2, dModel);
    if (segmentState) {
      checkIo(stateName!, segmentState, SEGMENT_STATE_IO);
      checkDim(stateName!, segmentState, 'state.memory', 1, memoryTokens);
      checkDim(stateName!, segmentState, 'state.memory', 2, dModel);
    }
    if (segmentSteps) {
      checkIo(stepsName!, segmentSteps, SEGMENT_STEPS_IO);
      const k = segmentSteps.inputs.find((i) => i.name === 'input_ids')!.shape[1];
      if (typeof k !== 'number' || k < 2) fail(stepsName!, `input 'input_ids' axis 1 (segments per run) must be a fixed number >= 2, found ${JSON.stringify(k)}`);
      checkDim(stepsName!, segmentSteps, 'attention_mask', 1, k);
      checkDim(stepsName!, segmentSteps, 'state.memory', 1, memoryTokens);
      checkDim(stepsName!, segmentSteps, 'state.memory', 2, dModel);
      steps = k;
    }
    checkIo(decodeName, decode, decodeIo(kvDtype));
    checkDim(decodeName, decode, 'memory', 2, dModel);
    checkDim(decodeName, decode, 'past_key_values', 0, kv.layers);
    checkDim(decodeName, decode, 'past_key_values', 1, 2);
    checkDim(decodeName, decode, 'past_key_values', 3, kv.heads);
    checkDim(decodeName, decode, 'past_key_values', 5, kv.headDim);
  } catch (err) {
    await Promise.all(opened.map((s) => s.release()));
    throw err;
  }
  const sessions: ModelPackage['sessions'] = { segment, decode, ...(segmentState ? { segmentState } : {}), ...(segmentSteps ? { segmentSteps } : {}) };

  return {
    dir,
    name,
    segmentLength,
    memoryTokens,
    dModel,
    vocabSize,
    specialTokens,
    state,
    initState,
    kv,
    precision,
    kvDtype,
    sessions,
    ...(steps !== undefined ? { steps } : {}),
    tokenizer,
    ...(chatTemplate !== undefined ? { chatTemplate } : {}),
    release: async () => {
      await Promise.all(opened.map((s) => s.release()));
    },
  };
}
