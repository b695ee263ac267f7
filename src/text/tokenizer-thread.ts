// One thread of the tokenizer pool (tokenizer-pool.ts): loads the tokenizers it is given and
// answers encode requests, one at a time, with the ids in a transferred Uint32Array.
import { readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { encodeInPieces } from './text-stream.ts';
import { loadTokenizer, type TextTokenizer } from './tokenizer.ts';
import type { FromTokenizerThread, ToTokenizerThread, TokenizerThreadConfig } from './tokenizer-pool.ts';

if (!parentPort) throw new Error('tokenizer-thread.ts must run as a worker thread (see TokenizerPool)');
const port = parentPort;
const config = workerData as TokenizerThreadConfig;

const post = (msg: FromTokenizerThread, transfer: ArrayBuffer[] = []): void => port.postMessage(msg, transfer);
const errorMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));

// On a host shared with engine threads, tokenizing must not take the CPU from their kernel launches.
// Linux keeps a nice value per thread: /proc/thread-self names this thread's id.
if (config.nice) {
  try {
    const tid = Number(path.basename(readlinkSync('/proc/thread-self')));
    os.setPriority(tid, Math.min(19, os.getPriority(tid) + config.nice));
  } catch {
    // not Linux, or not permitted: the thread keeps its priority
  }
}

const tokenizers = new Map<string, TextTokenizer>();
try {
  for (const [model, file] of Object.entries(config.tokenizers)) tokenizers.set(model, await loadTokenizer(file));
  post({ type: 'ready' });
} catch (err) {
  post({ type: 'loadError', message: errorMessage(err) });
}

port.on('message', (msg: ToTokenizerThread) => {
  const tok = tokenizers.get(msg.model);
  if (!tok) {
    post({ type: 'result', id: msg.id, error: `no tokenizer for model '${msg.model}' (loaded: ${[...tokenizers.keys()].join(', ')})` });
    return;
  }
  let ids: Uint32Array<ArrayBuffer>;
  try {
    ids = Uint32Array.from(encodeInPieces((t) => tok.encode(t), msg.text));
  } catch (err) {
    post({ type: 'result', id: msg.id, error: errorMessage(err) });
    return;
  }
  post({ type: 'result', id: msg.id, ids }, [ids.buffer]);
});
