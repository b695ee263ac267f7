// What the API needs to know about model packages, read from model.json and the state init file
// without loading onnxruntime (API processes never run a graph; workers validate the graphs).
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { readChatTemplate } from '../text/chat-template.ts';

export interface CatalogModel {
  name: string;
  description: string;
  segmentLength: number;
  memoryTokens: number;
  vocabSize: number;
  stateShape: number[];
  stateDtype: 'float32';
  stateBytes: number;
  initState: Float32Array;
  specialTokens: { eos: number; pad: number };
  tokenizerFile: string;
  task?: unknown;
  /** The package's chat template (tokenizer_config.json `chat_template`); absent: chat is refused. */
  chatTemplate?: string;
  /** Special tokens the chat template may use (tokenizer_config.json bos_token, eos_token). */
  bosToken?: string;
  eosToken?: string;
}

export interface ModelCatalog {
  defaultModel: string;
  list(): CatalogModel[];
  /** undefined when unknown. */
  get(name: string): CatalogModel | undefined;
}

export async function loadCatalog(modelsDir: string, names: readonly string[]): Promise<ModelCatalog> {
  if (names.length === 0) throw new Error('no models configured (RMT_MODELS)');
  const models = new Map<string, CatalogModel>();
  for (const name of names) {
    const dir = path.join(modelsDir, name);
    const file = path.join(dir, 'model.json');
    let m: Record<string, any>;
    try {
      m = JSON.parse(await readFile(file, 'utf8'));
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}`);
    }
    const st = m.state?.[0];
    if (m.format !== 'rmt-serve/model@1' || !st || st.dtype !== 'float32' || !Array.isArray(st.shape)) {
      throw new Error(`${file}: not an rmt-serve/model@1 package with one float32 state entry`);
    }
    const bytes = await readFile(path.join(dir, st.init));
    const count = st.shape.reduce((a: number, b: number) => a * b, 1);
    if (bytes.byteLength !== count * 4) throw new Error(`${st.init}: expected ${count * 4} bytes, found ${bytes.byteLength}`);
    const initState = new Float32Array(count);
    for (let i = 0; i < count; i++) initState[i] = bytes.readFloatLE(i * 4);
    const tokenizerFile = path.join(dir, m.tokenizer);
    const chat = await readChatTemplate(tokenizerFile);
    models.set(name, {
      name, description: String(m.description ?? ''), segmentLength: m.segment_length, memoryTokens: m.memory_tokens,
      vocabSize: m.vocab_size, stateShape: st.shape, stateDtype: 'float32', stateBytes: count * 4, initState,
      specialTokens: m.special_tokens, tokenizerFile, ...(m.task ? { task: m.task } : {}), ...chat,
    });
  }
  return { defaultModel: names[0]!, list: () => [...models.values()], get: (n) => models.get(n) };
}
