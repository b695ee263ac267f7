// Pure logic of the CUDA provider install (scripts/cuda-install.ts): which onnxruntime and CUDA the
// provider package was built for, and whether an installed provider is intact and matches the
// installed onnxruntime-node. Kept free of downloads so test/cuda-install.test.ts can run it offline.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const PROVIDER_PACKAGE = 'com.github.asus4.onnxruntime.linux-x64-gpu';
export const PROVIDER_PACKAGE_VERSION = '0.4.9';
/** CUDA major the host is expected to provide (/usr/local/cuda-13.0). */
export const EXPECTED_CUDA_MAJOR = '13';
/** Where the provider libraries sit inside the package tarball. */
export const PACKAGE_PLUGIN_DIR = 'package/Plugins/Linux/x64';
// File names shared with the engine, which reads the marker at start to tell a wrong provider build
// from a missing CUDA library (src/engine/cuda-check.ts).
import { CUDA_PROVIDER_FILES as PROVIDER_FILES, PROVIDER_MARKER as MARKER_FILE } from '../src/engine/cuda-check.ts';

export { MARKER_FILE, PROVIDER_FILES };

export interface Marker {
  package: string;
  version: string;
  onnxruntime: string;
  cuda: string;
  files: Record<string, string>;
}

export class ProviderError extends Error {}

/** Strict x.y.z: a prerelease or build suffix is not the same onnxruntime. */
export function parseVersion(v: string): [number, number, number] | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)$/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/**
 * The package's own statement of its onnxruntime version. package.json has no such field (its
 * version is the Unity plugin's, 0.4.9); the README's "Tested environment" list names it:
 * `- ONNX Runtime: [1.29.0](https://github.com/microsoft/onnxruntime/releases/tag/v1.29.0)`.
 */
export function statedOnnxruntimeVersion(readme: string): string | undefined {
  const m = /^\s*[-*]\s*ONNX Runtime:\s*\[?v?(\d+\.\d+\.\d+)\]?/m.exec(readme);
  return m?.[1];
}

/**
 * The provider library embeds ORT_VERSION as a NUL-terminated string (it is checked against the
 * core library's version when the provider is loaded), so "\0X.Y.Z\0" must occur in it.
 */
export function embedsVersion(lib: Buffer, version: string): boolean {
  return lib.indexOf(Buffer.from(`\0${version}\0`, 'latin1')) >= 0;
}

/** CUDA major from the provider's DT_NEEDED libcudart.so.N (the dynamic string table holds it). */
export function cudaMajorOf(lib: Buffer): string | undefined {
  const needle = Buffer.from('\0libcudart.so.', 'latin1');
  const at = lib.indexOf(needle);
  if (at < 0) return undefined;
  let end = at + needle.length;
  while (end < lib.length && lib[end]! >= 0x30 && lib[end]! <= 0x39) end++;
  const major = lib.subarray(at + needle.length, end).toString('latin1');
  return major || undefined;
}

export interface ProviderBuild {
  onnxruntime: string;
  cuda: string;
}

/** The README states the version and the library must agree, else the package is not what it says. */
export function providerBuild(readme: string, cudaLib: Buffer): ProviderBuild {
  const stated = statedOnnxruntimeVersion(readme);
  if (!stated) throw new ProviderError('the provider package does not state its onnxruntime version (no "ONNX Runtime: [x.y.z]" in its README)');
  if (!embedsVersion(cudaLib, stated)) {
    throw new ProviderError(`the provider package states onnxruntime ${stated} but libonnxruntime_providers_cuda.so does not embed that version`);
  }
  const cuda = cudaMajorOf(cudaLib);
  if (!cuda) throw new ProviderError('libonnxruntime_providers_cuda.so does not link a libcudart.so.N: cannot tell its CUDA version');
  return { onnxruntime: stated, cuda };
}

/** One-line refusal naming both versions, or undefined when they match. */
export function versionMismatch(providerOrt: string, installedOrt: string): string | undefined {
  const p = parseVersion(providerOrt);
  const i = parseVersion(installedOrt);
  if (!p) return `cannot parse the CUDA provider's onnxruntime version ${JSON.stringify(providerOrt)}`;
  if (!i) return `cannot parse the installed onnxruntime-node version ${JSON.stringify(installedOrt)}`;
  // The core library refuses a provider of another version at load time; say so before copying.
  if (p.join('.') !== i.join('.')) {
    return `version mismatch: CUDA provider ${PROVIDER_PACKAGE}@${PROVIDER_PACKAGE_VERSION} is built for onnxruntime ${providerOrt}, installed onnxruntime-node is ${installedOrt}`;
  }
  return undefined;
}

export function platformRefusal(platform: string, arch: string): string | undefined {
  return platform === 'linux' && arch === 'x64' ? undefined : `the CUDA provider is built for linux x64 only; this host is ${platform} ${arch}`;
}

export function installedOnnxruntimeVersion(ortPackageDir: string): string {
  const file = path.join(ortPackageDir, 'package.json');
  if (!existsSync(file)) throw new ProviderError(`onnxruntime-node is not installed (no ${file}): run npm ci first`);
  const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
  if (pkg.name !== 'onnxruntime-node' || !pkg.version) throw new ProviderError(`${file} is not onnxruntime-node's package.json`);
  return pkg.version;
}

export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

export function makeMarker(build: ProviderBuild, files: Record<string, string>): Marker {
  // Key order is part of the format the engine reads; keep exactly these keys.
  return { package: PROVIDER_PACKAGE, version: PROVIDER_PACKAGE_VERSION, onnxruntime: build.onnxruntime, cuda: build.cuda, files };
}

export type CheckResult = { ok: true; marker: Marker } | { ok: false; reason: string };

/** Verifies an installed provider: marker present and well formed, files present, hashes and version match. */
export async function checkInstall(dir: string, installedOrt: string): Promise<CheckResult> {
  const markerPath = path.join(dir, MARKER_FILE);
  if (!existsSync(markerPath)) return { ok: false, reason: `no CUDA provider installed in ${dir} (no ${MARKER_FILE}): run npm run cuda:install` };
  let marker: Marker;
  try {
    marker = JSON.parse(readFileSync(markerPath, 'utf8')) as Marker;
  } catch (e) {
    return { ok: false, reason: `${markerPath} is not valid JSON: ${(e as Error).message}` };
  }
  for (const key of ['package', 'version', 'onnxruntime', 'cuda'] as const) {
    if (typeof marker[key] !== 'string') return { ok: false, reason: `${markerPath}: "${key}" missing` };
  }
  if (!marker.files || typeof marker.files !== 'object') return { ok: false, reason: `${markerPath}: "files" missing` };
  const mismatch = versionMismatch(marker.onnxruntime, installedOrt);
  if (mismatch) return { ok: false, reason: mismatch };
  for (const name of PROVIDER_FILES) {
    const want = marker.files[name];
    if (typeof want !== 'string') return { ok: false, reason: `${markerPath} has no sha256 for ${name}` };
    const file = path.join(dir, name);
    if (!existsSync(file)) return { ok: false, reason: `${name} is missing from ${dir}` };
    const got = await sha256File(file);
    if (got !== want) return { ok: false, reason: `${name} in ${dir} does not match the marker (sha256 ${got.slice(0, 12)}…, expected ${want.slice(0, 12)}…): reinstall with npm run cuda:install` };
  }
  return { ok: true, marker };
}
