// podman for the deploy tests: the image under test (built on first use by docker/build.sh), and
// containers started by a test and removed by it (by name; never anyone else's).
import { execFile, spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const run = promisify(execFile);

/** CI's hosts need runc and explicit ulimits (docker/ci/containers.conf); an operator's own setting wins. */
export const podmanEnv: NodeJS.ProcessEnv = { ...process.env, CONTAINERS_CONF: process.env.CONTAINERS_CONF ?? path.join(ROOT, 'docker/ci/containers.conf') };

/** Why podman cannot run containers here, or undefined when it can. */
export function podmanMissing(): string | undefined {
  const r = spawnSync('podman', ['info', '--format', '{{.Host.OCIRuntime.Name}}'], { env: podmanEnv, encoding: 'utf8' });
  if (r.error) return `podman is not installed (apt-get install podman buildah runc mmdebstrap): ${r.error.message}`;
  if (r.status !== 0) return `podman info failed: ${r.stderr.trim().split('\n').slice(-2).join(' ')}`;
  return undefined;
}

export async function podman(args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await run('podman', args, { env: podmanEnv, maxBuffer: 64 << 20, timeout: opts.timeoutMs ?? 300_000 });
    return stdout.trim();
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`podman ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

/** RMT_TEST_IMAGE when set (CI builds it first), else localhost/rmt-serve:test, built once if absent. */
export async function testImage(): Promise<string> {
  const image = process.env.RMT_TEST_IMAGE ?? 'localhost/rmt-serve:test';
  const exists = spawnSync('podman', ['image', 'exists', image], { env: podmanEnv }).status === 0;
  if (!exists) {
    if (process.env.RMT_TEST_IMAGE) throw new Error(`RMT_TEST_IMAGE ${image} does not exist: build it with bash docker/build.sh cpu ${image}`);
    await run('bash', [path.join(ROOT, 'docker/build.sh'), 'cpu', image], { env: podmanEnv, cwd: ROOT, maxBuffer: 64 << 20, timeout: 900_000 });
  }
  return image;
}

/** A container started by a test: its logs and exit code, and removal. */
export class Container {
  constructor(readonly name: string) {}

  static async run(name: string, image: string, args: string[], opts: { env?: Record<string, string>; podmanArgs?: string[] } = {}): Promise<Container> {
    const env = Object.entries(opts.env ?? {}).flatMap(([k, v]) => ['--env', `${k}=${v}`]);
    await podman(['run', '--detach', '--name', name, ...(opts.podmanArgs ?? []), ...env, image, ...args]);
    return new Container(name);
  }

  /** stdout and stderr (the service logs JSON lines to both). */
  async logs(): Promise<string> {
    try {
      const { stdout, stderr } = await run('podman', ['logs', this.name], { env: podmanEnv, maxBuffer: 64 << 20 });
      return stdout + stderr;
    } catch (err) {
      return `(no logs: ${(err as Error).message})`;
    }
  }

  /** Sends `signal` and waits for the exit; resolves with the exit code. */
  async stop(signal = 'TERM', timeoutMs = 120_000): Promise<number> {
    await podman(['kill', '--signal', signal, this.name]);
    return Number(await podman(['wait', this.name], { timeoutMs }));
  }

  async remove(): Promise<void> {
    await podman(['rm', '--force', '--time', '0', this.name]).catch(() => undefined);
  }
}
