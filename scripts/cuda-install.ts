// npm run cuda:install: puts the CUDA 13 build of onnxruntime's CUDA provider next to onnxruntime-node's
// libonnxruntime.so.1, because onnxruntime-node's own install step fetches a CUDA 12 build from NuGet,
// which many hosts cannot reach. The libraries come from an npm package (reachable wherever npm is).
//
//   node --import tsx scripts/cuda-install.ts [--from pkg.tgz] [--target dir] [--ort dir] [--check]
//
// --from      use a tarball already on disk (offline hosts) instead of npm pack
// --target    install into this folder (default: onnxruntime-node's bin/napi-v6/linux/x64)
// --ort       onnxruntime-node package folder whose version must match (default: found above --target)
// --check     verify an existing install against its marker; install nothing
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  MARKER_FILE,
  PACKAGE_PLUGIN_DIR,
  PROVIDER_FILES,
  PROVIDER_PACKAGE,
  PROVIDER_PACKAGE_VERSION,
  ProviderError,
  checkInstall,
  installedOnnxruntimeVersion,
  makeMarker,
  platformRefusal,
  providerBuild,
  sha256File,
  versionMismatch,
} from './cuda-provider.ts';

// Works from scripts/ (tsx) and from dist/scripts/ (built), so walk up to the first package.json.
function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}

/** The onnxruntime-node package that owns `target` (target = <pkg>/bin/napi-v6/linux/x64), else the repo's. */
function ortPackageFor(target: string, root: string): string {
  let dir = path.resolve(target);
  while (path.dirname(dir) !== dir) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'onnxruntime-node') return dir;
    dir = path.dirname(dir);
  }
  return path.join(root, 'node_modules', 'onnxruntime-node');
}

function run(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
  if (r.error) throw new ProviderError(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new ProviderError(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  return r.stdout;
}

function fetchTarball(cacheDir: string): string {
  const file = path.join(cacheDir, `${PROVIDER_PACKAGE}-${PROVIDER_PACKAGE_VERSION}.tgz`);
  if (existsSync(file)) return file; // 179 MB: fetch once per checkout
  mkdirSync(cacheDir, { recursive: true });
  process.stderr.write(`fetching ${PROVIDER_PACKAGE}@${PROVIDER_PACKAGE_VERSION} (about 180 MB) with npm pack\n`);
  run('npm', ['pack', `${PROVIDER_PACKAGE}@${PROVIDER_PACKAGE_VERSION}`, '--pack-destination', cacheDir, '--silent'], cacheDir);
  if (!existsSync(file)) throw new ProviderError(`npm pack did not write ${file}`);
  return file;
}

const size = (bytes: number) => (bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`);

async function install(tgz: string, target: string, installedOrt: string): Promise<void> {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'rmt-cuda-'));
  try {
    const wanted = ['package/package.json', 'package/README.md', ...PROVIDER_FILES.map((f) => `${PACKAGE_PLUGIN_DIR}/${f}`)];
    run('tar', ['-xzf', path.resolve(tgz), '-C', tmp, ...wanted]);
    const pkg = JSON.parse(readFileSync(path.join(tmp, 'package/package.json'), 'utf8')) as { name?: string; version?: string };
    if (pkg.name !== PROVIDER_PACKAGE || pkg.version !== PROVIDER_PACKAGE_VERSION) {
      throw new ProviderError(`${tgz} is ${pkg.name}@${pkg.version}, expected ${PROVIDER_PACKAGE}@${PROVIDER_PACKAGE_VERSION}`);
    }
    const src = (f: string) => path.join(tmp, PACKAGE_PLUGIN_DIR, f);
    const build = providerBuild(readFileSync(path.join(tmp, 'package/README.md'), 'utf8'), readFileSync(src(PROVIDER_FILES[0])));
    const mismatch = versionMismatch(build.onnxruntime, installedOrt);
    if (mismatch) throw new ProviderError(mismatch);

    mkdirSync(target, { recursive: true });
    const files: Record<string, string> = {};
    for (const f of PROVIDER_FILES) {
      // Copy then rename, so a running engine never maps a half-written library.
      copyFileSync(src(f), path.join(target, `${f}.tmp`));
      renameSync(path.join(target, `${f}.tmp`), path.join(target, f));
      files[f] = await sha256File(path.join(target, f));
    }
    writeFileSync(path.join(target, MARKER_FILE), JSON.stringify(makeMarker(build, files), null, 2) + '\n');
    for (const f of PROVIDER_FILES) process.stdout.write(`${f}  ${size(statSync(path.join(target, f)).size)}  sha256 ${files[f]}\n`);
    process.stdout.write(`installed ${PROVIDER_PACKAGE}@${PROVIDER_PACKAGE_VERSION} (onnxruntime ${build.onnxruntime}, CUDA ${build.cuda}) into ${target}\n`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { from: { type: 'string' }, target: { type: 'string' }, ort: { type: 'string' }, check: { type: 'boolean', default: false } },
  });
  const root = repoRoot();
  const target = path.resolve(values.target ?? path.join(root, 'node_modules/onnxruntime-node/bin/napi-v6/linux/x64'));
  const ortDir = path.resolve(values.ort ?? ortPackageFor(target, root));
  const installedOrt = installedOnnxruntimeVersion(ortDir);

  if (values.check) {
    const r = await checkInstall(target, installedOrt);
    if (!r.ok) throw new ProviderError(r.reason);
    process.stdout.write(`ok: ${r.marker.package}@${r.marker.version} (onnxruntime ${r.marker.onnxruntime}, CUDA ${r.marker.cuda}) in ${target}, onnxruntime-node ${installedOrt}\n`);
    return;
  }
  const refusal = platformRefusal(process.platform, process.arch);
  if (refusal) throw new ProviderError(refusal);
  const tgz = values.from ?? fetchTarball(path.join(root, 'node_modules/.cache/rmt-cuda-provider'));
  if (!existsSync(tgz)) throw new ProviderError(`--from ${tgz}: no such file`);
  await install(tgz, target, installedOrt);
}

main().catch((e: unknown) => {
  // Expected refusals are one line; anything else keeps its stack for a bug report.
  process.stderr.write(`cuda-install: ${e instanceof ProviderError ? e.message : (e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
