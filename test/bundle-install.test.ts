// The GPU bundle's installer (scripts/bundle-install.sh, shipped as rmt-serve-gpu-install.sh) on tiny
// fabricated parts: it assembles them, and refuses a missing, corrupt or stray part by name before
// writing anything.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

const INSTALLER = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../scripts/bundle-install.sh');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'rmt-bundle-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function sh(cmd: string, args: string[], cwd: string) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  if (r.error) throw r.error;
  return r;
}

/** A bundle the way bundle-gpu.sh makes one, only small: rmt-serve-gpu/ tarred, xz'd, split, summed. */
function fabricate(name: string): string {
  const dir = path.join(tmp, name);
  const stage = path.join(dir, 'stage', 'rmt-serve-gpu');
  mkdirSync(path.join(stage, 'models'), { recursive: true });
  writeFileSync(path.join(stage, 'rmt-serve-gpu'), '#!/bin/sh\necho hello\n', { mode: 0o755 });
  // Incompressible, so the archive really spans several parts.
  writeFileSync(path.join(stage, 'models', 'weights.bin'), randomBytes(6000));
  const out = path.join(dir, 'out');
  mkdirSync(out);
  const r = sh('bash', ['-c', 'set -euo pipefail; tar -C ../stage -cf - rmt-serve-gpu | xz -0 > rmt-serve-gpu.tar.xz && split -b 1000 -d rmt-serve-gpu.tar.xz rmt-serve-gpu.tar.xz.part && rm rmt-serve-gpu.tar.xz && sha256sum rmt-serve-gpu.tar.xz.part* > SHA256SUMS'], out);
  assert.equal(r.status, 0, r.stderr);
  copyFileSync(INSTALLER, path.join(out, 'rmt-serve-gpu-install.sh'));
  return out;
}

function install(out: string, target: string) {
  return sh('bash', [path.join(out, 'rmt-serve-gpu-install.sh'), target], tmp);
}

test('assembles the parts into the target directory', () => {
  const out = fabricate('ok');
  const parts = readdirSync(out).filter((f) => f.includes('.part'));
  assert.ok(parts.length >= 3, `expected several parts, got ${parts.length}`);
  const target = path.join(tmp, 'installed');
  const r = install(out, target);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`verified ${parts.length} parts`));
  assert.match(r.stdout, /rmt-serve-gpu serve/);
  assert.deepEqual(readFileSync(path.join(target, 'models', 'weights.bin')), readFileSync(path.join(out, '..', 'stage', 'rmt-serve-gpu', 'models', 'weights.bin')));
  assert.equal(sh(path.join(target, 'rmt-serve-gpu'), [], tmp).stdout, 'hello\n');
});

test('refuses a missing part, naming it, and writes nothing', () => {
  const out = fabricate('missing');
  rmSync(path.join(out, 'rmt-serve-gpu.tar.xz.part01'));
  const target = path.join(tmp, 'not-installed-1');
  const r = install(out, target);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /missing part: rmt-serve-gpu\.tar\.xz\.part01/);
  assert.ok(!existsSync(target));
});

test('refuses a corrupt part, naming it', () => {
  const out = fabricate('corrupt');
  const part = path.join(out, 'rmt-serve-gpu.tar.xz.part02');
  const bytes = readFileSync(part);
  bytes[10] = bytes[10]! ^ 0xff;
  writeFileSync(part, bytes);
  const target = path.join(tmp, 'not-installed-2');
  const r = install(out, target);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /corrupt part: rmt-serve-gpu\.tar\.xz\.part02 \(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\)/);
  assert.ok(!existsSync(target));
});

test('refuses a part that SHA256SUMS does not list, and a missing SHA256SUMS', () => {
  const out = fabricate('stray');
  writeFileSync(path.join(out, 'rmt-serve-gpu.tar.xz.part99'), 'from another build');
  const r = install(out, path.join(tmp, 'not-installed-3'));
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /part not listed in SHA256SUMS: rmt-serve-gpu\.tar\.xz\.part99/);
  rmSync(path.join(out, 'SHA256SUMS'));
  assert.match(install(out, path.join(tmp, 'not-installed-4')).stderr, /SHA256SUMS is missing/);
});
