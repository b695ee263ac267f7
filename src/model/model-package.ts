// Loads a model package (format rmt-serve/model@1) for the engine: model.json through readModelSpec,
// then the graphs of one precision, checked against the contract the runner relies on, so that
// contract problems surface at load time with the offending file named. The contract follows from
// the manifest's state entries and decode conditioning, never from the architecture's name.
import path from 'node:path';
import { createSession, type RunGate, type Session, type SessionOptions } from '../engine/onnx-runtime.ts';
import { createBoundSession } from '../engine/ort-native.ts';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.ts';
import { fail, isRecord, readModelSpec, requireFile, str, type ModelSpec, type StateEntry } from './model-spec.ts';

/** model.json as read by readModelSpec, with the graphs of one precision open. */
export interface ModelPackage extends ModelSpec {
  precision: Precision;
  /** dtype of the decode graph's past/present key values (the fp16 graphs keep them in fp16). */
  kvDtype: 'float32' | 'float16';
  /**
   * segmentState: optional graph (graphs.<precision>.segment_state) with the next state (every
   * next_state.<name>) as its only outputs. onnxruntime runs every node of a graph whatever outputs are fetched, and the full
   * segment graph projects every position onto the vocabulary for token_logprobs; a run that needs
   * only the next memory uses this one when the package has it.
   */
  sessions: { segment: Session; decode: Session; segmentState?: Session; segmentSteps?: Session };
  /**
   * Segments per run of sessions.segmentSteps (graphs.<precision>.segment_state_steps, axis 1 of its
   * input_ids): the segment_state graph unrolled, each step's memory feeding the next inside the run, so
   * the engine thread's turnaround between a session's dependent runs is paid once per that many
   * segments. Absent without that graph (the toolkit makes it for RMT packages only).
   */
  steps?: number;
  tokenizer: TextTokenizer;
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
  /** What runs the segment_state graphs (default onnxruntime-node; bound: the IO-binding addon, ort-native.ts). */
  runner?: 'onnxruntime-node' | 'bound';
}

interface IoSpec {
  name: string;
  dtype: string;
  rank: number;
}

// The graph contract the runner relies on (names, dtypes, ranks), from the package's state entries:
// `state.<name>` in and `next_state.<name>` out for every entry, [batch, ...shape]. Segment graphs take
// ids and mask of rank 2 ([batch, tokens]); the segment_state graph unrolled over K segments
// (rmt_toolkit steps-graph) takes them as [batch, K, tokens] and adds `step_states.<name>` [batch, K, ...shape].
type Io = { inputs: IoSpec[]; outputs: IoSpec[] };

const segmentInputs = (entries: readonly StateEntry[], idsRank: number): IoSpec[] => [
  { name: 'input_ids', dtype: 'int64', rank: idsRank },
  { name: 'attention_mask', dtype: 'int64', rank: idsRank },
  ...entries.map((e) => ({ name: `state.${e.name}`, dtype: 'float32', rank: e.shape.length + 1 })),
];
const nextState = (entries: readonly StateEntry[]): IoSpec[] =>
  entries.map((e) => ({ name: `next_state.${e.name}`, dtype: 'float32', rank: e.shape.length + 1 }));

function segmentIo(entries: readonly StateEntry[]): Io {
  return {
    inputs: segmentInputs(entries, 2),
    outputs: [...nextState(entries), { name: 'logits', dtype: 'float32', rank: 2 }, { name: 'token_logprobs', dtype: 'float32', rank: 2 }],
  };
}

const segmentStateIo = (entries: readonly StateEntry[]): Io => ({ inputs: segmentInputs(entries, 2), outputs: nextState(entries) });

function segmentStepsIo(entries: readonly StateEntry[]): Io {
  return {
    inputs: segmentInputs(entries, 3),
    outputs: [...nextState(entries), ...entries.map((e) => ({ name: `step_states.${e.name}`, dtype: 'float32', rank: e.shape.length + 2 }))],
  };
}

/**
 * State and logits are float32 in every precision; the KV cache has the graph's own dtype. The state
 * goes in as the RMT's `memory` prefix, or as `state.<name>` of every entry (DecodeConditioning).
 */
function decodeIo(spec: ModelSpec, kvDtype: string): Io {
  const state: IoSpec[] = spec.conditioning.kind === 'prefix'
    ? [{ name: 'memory', dtype: 'float32', rank: 3 }]
    : spec.state.map((e) => ({ name: `state.${e.name}`, dtype: 'float32', rank: e.shape.length + 1 }));
  return {
    inputs: [
      { name: 'input_ids', dtype: 'int64', rank: 2 },
      { name: 'attention_mask', dtype: 'int64', rank: 2 },
      ...state,
      { name: 'past_key_values', dtype: kvDtype, rank: 6 },
    ],
    outputs: [
      { name: 'logits', dtype: 'float32', rank: 2 },
      { name: 'present_key_values', dtype: kvDtype, rank: 6 },
    ],
  };
}

function checkIo(file: string, session: Session, spec: Io): void {
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

/** Every `state.<name>` input's fixed dims after `from` (the batch axis, and K for the steps graph) against the entry's shape. */
function checkStateDims(file: string, session: Session, entries: readonly StateEntry[], from: number): void {
  for (const e of entries) e.shape.forEach((n, k) => checkDim(file, session, `state.${e.name}`, from + k, n));
}

export async function loadModelPackage(dir: string, options: LoadOptions = {}): Promise<ModelPackage> {
  const MJ = 'model.json';
  const spec = await readModelSpec(dir);
  const { name, dModel, kv } = spec;

  const precision = options.precision ?? 'fp32';
  const G = `graphs.${precision}`;
  const graphs = spec.graphs[precision];
  if (!isRecord(graphs)) {
    const have = Object.keys(spec.graphs).join(', ') || 'none';
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

  const tokenizer = await loadTokenizer(spec.tokenizerFile);

  const base: SessionOptions = { executionProvider: options.executionProvider ?? 'cpu' };
  if (options.deviceId !== undefined) base.deviceId = options.deviceId;
  if (options.intraOpThreads !== undefined) base.intraOpThreads = options.intraOpThreads;
  if (options.exclusive !== undefined) base.exclusive = options.exclusive;
  const sessionOptions = (graph: string): SessionOptions =>
    options.profileDir === undefined ? base : { ...base, profilePrefix: path.join(options.profileDir, `${name}-${graph}`) };
  const opened: Session[] = [];
  const open = async (file: string, graph: string) => {
    const bound = options.runner === 'bound' && (graph === 'segment_state' || graph === 'segment_state_steps');
    const s = bound ? createBoundSession(file, sessionOptions(graph)) : await createSession(file, sessionOptions(graph));
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
    const entries = spec.state;
    checkIo(segmentName, segment, segmentIo(entries));
    checkStateDims(segmentName, segment, entries, 1);
    if (segmentState) {
      checkIo(stateName!, segmentState, segmentStateIo(entries));
      checkStateDims(stateName!, segmentState, entries, 1);
    }
    if (segmentSteps) {
      checkIo(stepsName!, segmentSteps, segmentStepsIo(entries));
      const k = segmentSteps.inputs.find((i) => i.name === 'input_ids')!.shape[1];
      if (typeof k !== 'number' || k < 2) fail(stepsName!, `input 'input_ids' axis 1 (segments per run) must be a fixed number >= 2, found ${JSON.stringify(k)}`);
      checkDim(stepsName!, segmentSteps, 'attention_mask', 1, k);
      checkStateDims(stepsName!, segmentSteps, entries, 1);
      steps = k;
    }
    checkIo(decodeName, decode, decodeIo(spec, kvDtype));
    if (spec.conditioning.kind === 'prefix') checkDim(decodeName, decode, 'memory', 2, dModel);
    else checkStateDims(decodeName, decode, entries, 1);
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
    ...spec,
    precision,
    kvDtype,
    sessions,
    ...(steps !== undefined ? { steps } : {}),
    tokenizer,
    release: async () => {
      await Promise.all(opened.map((s) => s.release()));
    },
  };
}
