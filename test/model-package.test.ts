// Load-time validation: broken packages must fail with the offending file named.
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { loadModelPackage } from '../src/model/model-package.ts';
import { createSession, float32, int64 } from '../src/engine/onnx-runtime.ts';
import { PACKAGE_DIR } from './helpers.ts';
import { FIXTURES_DIR } from './support/state-packages.ts';

// Only what an fp32 CPU load reads.
const FILES = ['model.json', 'segment.onnx', 'segment.state.onnx', 'segment.state.x4.onnx', 'decode.onnx', 'weights.bin', 'state.memory.f32', 'tokenizer.json', 'tokenizer_config.json'];

const tempDirs: string[] = [];

async function copyPackage(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rmt-pkg-'));
  tempDirs.push(dir);
  await Promise.all(FILES.map((f) => copyFile(path.join(PACKAGE_DIR, f), path.join(dir, f))));
  return dir;
}

async function editManifest(dir: string, edit: (m: Record<string, any>) => void): Promise<void> {
  const file = path.join(dir, 'model.json');
  const manifest = JSON.parse(await readFile(file, 'utf8')) as Record<string, any>;
  edit(manifest);
  await writeFile(file, JSON.stringify(manifest));
}

after(async () => {
  await Promise.all(tempDirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('loadModelPackage', () => {
  test('loads the shipped package', async () => {
    const pkg = await loadModelPackage(PACKAGE_DIR);
    try {
      assert.equal(pkg.segmentLength, 128);
      assert.equal(pkg.memoryTokens, 16);
      assert.equal(pkg.dModel, 256);
      assert.equal(pkg.initState.memory!.length, 16 * 256);
      const { config } = JSON.parse(await readFile(path.join(PACKAGE_DIR, 'model.json'), 'utf8'));
      assert.deepEqual(pkg.kv, { layers: config.n_layers, heads: config.n_heads, headDim: config.d_model / config.n_heads });
    } finally {
      await pkg.release();
    }
  });

  test('rejects a wrong format string, naming model.json', async () => {
    const dir = await copyPackage();
    await editManifest(dir, (m) => {
      m.format = 'rmt-serve/model@0';
    });
    await assert.rejects(loadModelPackage(dir), /^Error: model\.json: 'format' expected "rmt-serve\/model@1", found "rmt-serve\/model@0"/);
  });

  test('rejects a truncated state init file, naming it and both sizes', async () => {
    const dir = await copyPackage();
    await truncate(path.join(dir, 'state.memory.f32'), 16 * 256 * 4 - 4);
    await assert.rejects(loadModelPackage(dir), /state\.memory\.f32: .*expected 16384 bytes.*found 16380/);
  });

  test('rejects a missing graph file, naming it', async () => {
    const dir = await copyPackage();
    await unlink(path.join(dir, 'decode.onnx'));
    await assert.rejects(loadModelPackage(dir), /decode\.onnx: decode graph file not found/);
  });

  test('rejects a graph that breaks the I/O contract, naming file and tensor', async () => {
    const dir = await copyPackage();
    // The decode graph offered as the segment graph lacks state.memory and has extra inputs.
    await editManifest(dir, (m) => {
      m.graphs.fp32.segment = 'decode.onnx';
    });
    await assert.rejects(loadModelPackage(dir), /decode\.onnx: inputs expected \[input_ids, attention_mask, state\.memory\].*missing state\.memory/);
  });

  test('rejects a segment_state graph with other outputs, and a missing one', async () => {
    const dir = await copyPackage();
    await editManifest(dir, (m) => {
      m.graphs.fp32.segment_state = 'segment.onnx';
    });
    await assert.rejects(loadModelPackage(dir), /segment\.onnx: outputs expected \[next_state\.memory\], found \[next_state\.memory, logits, token_logprobs\]; unexpected logits, token_logprobs/);
    await editManifest(dir, (m) => {
      m.graphs.fp32.segment_state = 'nope.onnx';
    });
    await assert.rejects(loadModelPackage(dir), /nope\.onnx: segment_state graph file not found/);
  });

  test('reads the segment_state_steps graph\'s K from its input; rejects another graph in its place, and a missing one', async () => {
    const pkg = await loadModelPackage(PACKAGE_DIR);
    try {
      assert.equal(pkg.steps, 4);
      assert.ok(pkg.sessions.segmentSteps);
    } finally {
      await pkg.release();
    }
    const dir = await copyPackage();
    await editManifest(dir, (m) => {
      m.graphs.fp32.segment_state_steps = 'segment.state.onnx';
    });
    await assert.rejects(loadModelPackage(dir), /segment\.state\.onnx: input 'input_ids' expected rank 3, found shape \[batch, tokens\]/);
    await editManifest(dir, (m) => {
      m.graphs.fp32.segment_state_steps = 'nope.onnx';
    });
    await assert.rejects(loadModelPackage(dir), /nope\.onnx: segment_state_steps graph file not found/);
    await editManifest(dir, (m) => {
      delete m.graphs.fp32.segment_state_steps;
    });
    const without = await loadModelPackage(dir);
    try {
      assert.equal(without.steps, undefined);
    } finally {
      await without.release();
    }
  });

  test('rejects non-positive integers in model.json', async () => {
    const dir = await copyPackage();
    await editManifest(dir, (m) => {
      m.segment_length = 0;
    });
    await assert.rejects(loadModelPackage(dir), /model\.json: 'segment_length' must be a positive integer, found 0/);
  });
});

describe('loadModelPackage: state-conditioned packages (test/fixtures/transformer-xl-tiny)', () => {
  const XL = path.join(FIXTURES_DIR, 'transformer-xl-tiny');
  const XL_FILES = ['model.json', 'segment.onnx', 'segment.state.onnx', 'decode.onnx', 'weights.bin', 'state.mems.f32', 'state.mem_mask.f32', 'tokenizer.json', 'tokenizer_config.json'];
  async function copyXl(): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), 'rmt-pkg-xl-'));
    tempDirs.push(dir);
    await Promise.all(XL_FILES.map((f) => copyFile(path.join(XL, f), path.join(dir, f))));
    return dir;
  }

  test('loads: the entries as one flat state, decode conditioned on the state, no steps graph', async () => {
    const pkg = await loadModelPackage(XL);
    try {
      assert.equal(pkg.architecture, 'transformer-xl');
      assert.deepEqual(pkg.conditioning, { kind: 'state' });
      assert.equal(pkg.memoryTokens, 0);
      assert.deepEqual(pkg.stateLayout, {
        slots: [{ name: 'mems', shape: [2, 32, 64], offset: 0, size: 4096 }, { name: 'mem_mask', shape: [32], offset: 4096, size: 32 }],
        size: 4128,
      });
      assert.equal(pkg.steps, undefined);
      assert.ok(pkg.sessions.segmentState);
    } finally {
      await pkg.release();
    }
  });

  test("rejects state entries that disagree with the graphs, naming the graph, the input and the axis", async () => {
    const dir = await copyXl();
    await editManifest(dir, (m) => {
      m.state[0].shape = [2, 16, 64];
    });
    await truncate(path.join(dir, 'state.mems.f32'), 2 * 16 * 64 * 4);
    await assert.rejects(loadModelPackage(dir), /segment\.onnx: input 'state\.mems' axis 2 expected 16 \(from model\.json\), found 32/);
    await editManifest(dir, (m) => {
      m.state[0].shape = [2, 32, 64];
      m.state[1].name = 'mask';
    });
    await truncate(path.join(dir, 'state.mems.f32'), 2 * 32 * 64 * 4);
    await assert.rejects(loadModelPackage(dir), /segment\.onnx: inputs expected \[input_ids, attention_mask, state\.mems, state\.mask\].*missing state\.mask; unexpected state\.mem_mask/);
  });

  test('decode conditioning: an unknown kind, a state package read as an RMT, an RMT read as state-conditioned are refused', async () => {
    const dir = await copyXl();
    await editManifest(dir, (m) => {
      m.decode.conditioning = 'prefix';
    });
    await assert.rejects(loadModelPackage(dir), /model\.json: 'decode\.conditioning' expected "state" \(or absent: the RMT's memory prefix\), found "prefix"/);
    await editManifest(dir, (m) => {
      delete m.decode.conditioning;
    });
    await assert.rejects(loadModelPackage(dir), /model\.json: 'architecture' expected "rmt" for a package without 'decode\.conditioning', found "transformer-xl"/);
    const rmt = await copyPackage();
    await editManifest(rmt, (m) => {
      m.decode.conditioning = 'state';
    });
    await assert.rejects(loadModelPackage(rmt), /decode\.onnx: inputs expected \[input_ids, attention_mask, state\.memory, past_key_values\].*missing state\.memory; unexpected memory/);
  });
});

describe('onnx-runtime feed checks', () => {
  const file = path.join(PACKAGE_DIR, 'segment.onnx');
  const ids = int64(new Array(4).fill(5), [1, 4]);
  const mask = int64(new Array(4).fill(1), [1, 4]);

  test('wrong dtype names the tensor and both dtypes', async () => {
    const session = await createSession(file, { executionProvider: 'cpu' });
    try {
      await assert.rejects(
        session.run({ input_ids: float32(new Float32Array(4), [1, 4]), attention_mask: mask, 'state.memory': float32(new Float32Array(16 * 256), [1, 16, 256]) }),
        /segment\.onnx: input 'input_ids' expects dtype int64, found float32/,
      );
    } finally {
      await session.release();
    }
  });

  test('wrong fixed dim names the tensor and both shapes', async () => {
    const session = await createSession(file, { executionProvider: 'cpu' });
    try {
      await assert.rejects(
        session.run({ input_ids: ids, attention_mask: mask, 'state.memory': float32(new Float32Array(8 * 256), [1, 8, 256]) }),
        /segment\.onnx: input 'state\.memory' expects shape \[batch, 16, 256\], found \[1, 8, 256\]/,
      );
    } finally {
      await session.release();
    }
  });

  test('missing feed is reported by name', async () => {
    const session = await createSession(file, { executionProvider: 'cpu' });
    try {
      await assert.rejects(session.run({ input_ids: ids, attention_mask: mask }), /segment\.onnx: .*missing: state\.memory/);
    } finally {
      await session.release();
    }
  });
});
