// The CUDA provider's version detection and install check, on small fabricated files (no download):
// a provider of another onnxruntime, a tampered library or a stale marker must each be refused.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  MARKER_FILE,
  PROVIDER_FILES,
  checkInstall,
  cudaMajorOf,
  embedsVersion,
  installedOnnxruntimeVersion,
  makeMarker,
  parseVersion,
  platformRefusal,
  providerBuild,
  sha256File,
  statedOnnxruntimeVersion,
  versionMismatch,
} from '../scripts/cuda-provider.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'rmt-cuda-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

// The shape of the real package's README line and of the strings the real library holds.
const README = '## Tested environment\n\n- Unity: 6000.6.0f1\n- ONNX Runtime: [1.29.0](https://github.com/microsoft/onnxruntime/releases/tag/v1.29.0)\n- ONNX Runtime GenAI: [0.15.2](x)\n';
const fakeLib = (...strings: string[]) => Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), ...strings.map((s) => Buffer.from(`\0${s}\0`, 'latin1'))]);

test('versions: strict x.y.z parse and a one-line refusal naming both', () => {
  assert.deepEqual(parseVersion('1.29.0'), [1, 29, 0]);
  assert.equal(parseVersion('1.29'), undefined);
  assert.equal(parseVersion('1.29.0-rc1'), undefined);
  assert.equal(versionMismatch('1.29.0', '1.29.0'), undefined);
  const msg = versionMismatch('1.29.0', '1.28.1');
  assert.ok(msg && /onnxruntime 1\.29\.0/.test(msg) && /onnxruntime-node is 1\.28\.1/.test(msg), msg);
  assert.ok(!msg.includes('\n'));
  assert.match(versionMismatch('1.29.0', '1.29.0-dev') ?? '', /cannot parse the installed onnxruntime-node version/);
});

test('the provider build is read from the README and confirmed in the library', () => {
  assert.equal(statedOnnxruntimeVersion(README), '1.29.0');
  assert.equal(statedOnnxruntimeVersion('# nothing here'), undefined);
  const lib = fakeLib('libcublas.so.13', 'libcudart.so.13', 'cudaSetDevice', '1.29.0');
  assert.ok(embedsVersion(lib, '1.29.0'));
  assert.ok(!embedsVersion(fakeLib('11.29.01'), '1.29.0'), 'a version inside a longer string is not the version');
  assert.equal(cudaMajorOf(lib), '13');
  assert.equal(cudaMajorOf(fakeLib('libcudart.so.12')), '12');
  assert.deepEqual(providerBuild(README, lib), { onnxruntime: '1.29.0', cuda: '13' });
  assert.throws(() => providerBuild(README, fakeLib('libcudart.so.13', '1.28.0')), /states onnxruntime 1\.29\.0 but libonnxruntime_providers_cuda\.so does not embed/);
  assert.throws(() => providerBuild('no version', lib), /does not state its onnxruntime version/);
  assert.throws(() => providerBuild(README, fakeLib('1.29.0')), /libcudart/);
});

test('linux x64 only', () => {
  assert.equal(platformRefusal('linux', 'x64'), undefined);
  assert.match(platformRefusal('darwin', 'arm64') ?? '', /linux x64 only; this host is darwin arm64/);
  assert.match(platformRefusal('linux', 'arm64') ?? '', /linux arm64/);
});

test('installed onnxruntime-node version comes from its package.json', () => {
  const dir = path.join(tmp, 'ort');
  assert.throws(() => installedOnnxruntimeVersion(dir), /onnxruntime-node is not installed/);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'something-else', version: '1.0.0' }));
  assert.throws(() => installedOnnxruntimeVersion(dir), /not onnxruntime-node's package\.json/);
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'onnxruntime-node', version: '1.29.0' }));
  assert.equal(installedOnnxruntimeVersion(dir), '1.29.0');
});

async function fabricatedInstall(name: string): Promise<string> {
  const dir = path.join(tmp, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, PROVIDER_FILES[0]), fakeLib('libcudart.so.13', '1.29.0'));
  writeFileSync(path.join(dir, PROVIDER_FILES[1]), fakeLib('libonnxruntime_providers_shared.so'));
  const files: Record<string, string> = {};
  for (const f of PROVIDER_FILES) files[f] = await sha256File(path.join(dir, f));
  writeFileSync(path.join(dir, MARKER_FILE), JSON.stringify(makeMarker({ onnxruntime: '1.29.0', cuda: '13' }, files)));
  return dir;
}

test('check: an intact install passes, with exactly the marker keys the engine reads', async () => {
  const dir = await fabricatedInstall('ok');
  const r = await checkInstall(dir, '1.29.0');
  assert.ok(r.ok, r.ok ? '' : r.reason);
  assert.deepEqual(Object.keys(r.marker), ['package', 'version', 'onnxruntime', 'cuda', 'files']);
  assert.deepEqual(r.marker, {
    package: 'com.github.asus4.onnxruntime.linux-x64-gpu',
    version: '0.4.9',
    onnxruntime: '1.29.0',
    cuda: '13',
    files: r.marker.files,
  });
  assert.deepEqual(Object.keys(r.marker.files).sort(), [...PROVIDER_FILES].sort());
  for (const h of Object.values(r.marker.files)) assert.match(h, /^[0-9a-f]{64}$/);
});

test('check: refuses a missing marker, a missing or altered library, and another onnxruntime', async () => {
  const reason = async (dir: string, ort = '1.29.0') => {
    const r = await checkInstall(dir, ort);
    assert.ok(!r.ok, 'expected a refusal');
    return r.reason;
  };
  assert.match(await reason(path.join(tmp, 'empty')), /no CUDA provider installed .*run npm run cuda:install/);

  const missing = await fabricatedInstall('missing');
  rmSync(path.join(missing, PROVIDER_FILES[1]));
  assert.match(await reason(missing), /libonnxruntime_providers_shared\.so is missing/);

  const altered = await fabricatedInstall('altered');
  writeFileSync(path.join(altered, PROVIDER_FILES[0]), fakeLib('libcudart.so.13', '1.29.0', 'patched'));
  assert.match(await reason(altered), /libonnxruntime_providers_cuda\.so .* does not match the marker/);

  assert.match(await reason(await fabricatedInstall('upgraded'), '1.30.0'), /built for onnxruntime 1\.29\.0, installed onnxruntime-node is 1\.30\.0/);

  const broken = await fabricatedInstall('broken');
  writeFileSync(path.join(broken, MARKER_FILE), '{"package":');
  assert.match(await reason(broken), /is not valid JSON/);
});
