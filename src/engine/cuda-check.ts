// Why a CUDA worker cannot start, in words an operator can act on. onnxruntime's own error for a
// provider that fails to load is a dlopen message about libonnxruntime_providers_cuda.so; the
// actual cause is usually one of its dependencies (libcudart, libcublas, libcudnn) or a provider
// built for another onnxruntime version. No onnxruntime import here: this reads files and runs ldd.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

export const CUDA_PROVIDER_FILES = ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so'] as const;
/** Written by `npm run cuda:install` next to the providers (scripts/cuda-install.ts). */
export const PROVIDER_MARKER = 'rmt-cuda-provider.json';

const INSTALL_HINT = 'run `npm run cuda:install` (scripts/cuda-install.ts)';
const LIB_HINT =
  'put the CUDA 13 and cuDNN 9 libraries on LD_LIBRARY_PATH (e.g. /usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu)';

/** Folder holding onnxruntime-node's native library for this platform; the providers must sit beside it. */
export function ortNativeDir(): string {
  const require = createRequire(import.meta.url);
  const pkg = path.dirname(require.resolve('onnxruntime-node/package.json'));
  return path.join(pkg, 'bin', 'napi-v6', process.platform, process.arch);
}

interface Marker {
  onnxruntime?: unknown;
  version?: unknown;
  package?: unknown;
}

function readMarker(dir: string): Marker | undefined {
  try {
    return JSON.parse(readFileSync(path.join(dir, PROVIDER_MARKER), 'utf8')) as Marker;
  } catch {
    return undefined;
  }
}

/**
 * Problems that make a CUDA start pointless, found before onnxruntime is asked: wrong platform,
 * provider files missing, or a provider installed for another onnxruntime version.
 */
export function cudaPreflight(ortVersion: string, dir = ortNativeDir()): string[] {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return [`the CUDA execution provider is installed for linux x64 only; this is ${process.platform} ${process.arch}`];
  }
  const missing = CUDA_PROVIDER_FILES.filter((f) => !existsSync(path.join(dir, f)));
  if (missing.length) return [`CUDA provider not installed: ${missing.join(', ')} missing from ${dir}; ${INSTALL_HINT}`];
  const marker = readMarker(dir);
  if (marker && typeof marker.onnxruntime === 'string' && marker.onnxruntime !== ortVersion) {
    return [
      `wrong CUDA provider build: ${PROVIDER_MARKER} says it is for onnxruntime ${marker.onnxruntime}, ` +
        `but onnxruntime-node is ${ortVersion}; ${INSTALL_HINT}`,
    ];
  }
  return [];
}

/** Shared libraries the CUDA provider needs that the dynamic loader cannot find (via ldd). */
export function missingProviderLibraries(dir = ortNativeDir()): string[] | undefined {
  const lib = path.join(dir, CUDA_PROVIDER_FILES[0]);
  const r = spawnSync('ldd', [lib], { encoding: 'utf8', env: process.env });
  if (r.error || r.status !== 0) return undefined;
  return r.stdout
    .split('\n')
    .filter((l) => l.includes('not found'))
    .map((l) => l.trim().split(/\s+/)[0]!)
    .filter(Boolean);
}

/** One message: onnxruntime's error plus what we could find out about its cause. */
export function explainCudaFailure(ortError: string, ortVersion: string, dir = ortNativeDir()): string {
  const parts = [`CUDA execution provider failed to start: ${ortError}`];
  const pre = cudaPreflight(ortVersion, dir);
  if (pre.length) {
    parts.push(...pre);
  } else {
    const missing = missingProviderLibraries(dir);
    if (missing?.length) parts.push(`libraries not found by the loader: ${missing.join(', ')}; ${LIB_HINT}`);
    if (!readMarker(dir)) parts.push(`no ${PROVIDER_MARKER} beside the providers: they were not installed by cuda:install and may be another build`);
  }
  parts.push('set RMT_CPU_FALLBACK=1 to run on the CPU instead');
  return parts.join('; ');
}
