// A throwaway redis-server per test file: hermetic (own port, no persistence) and killable, so
// fault tests can take Redis away under a running service.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { tmpdir } from 'node:os';

export interface RedisServerHandle {
  url: string;
  port: number;
  /** SHUTDOWN NOSAVE, falling back to SIGKILL; resolves once the process has exited. */
  stop(): Promise<void>;
  /** SIGKILL right now (a crash, for fault tests); does not wait. */
  kill(): void;
}

const START_DEADLINE_MS = 10_000;
const STOP_DEADLINE_MS = 5_000;
const POLL_MS = 20;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

/** Sends one inline command; resolves with the first reply line (without CRLF). */
export function sendInline(port: number, command: string, timeoutMs = 1000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    let buf = '';
    const done = (err: Error | null, line?: string) => {
      sock.destroy();
      if (err) reject(err);
      else resolve(line ?? '');
    };
    sock.setTimeout(timeoutMs, () => done(new Error(`redis on ${port}: no reply to ${command} in ${timeoutMs} ms`)));
    sock.once('error', (err) => done(err));
    sock.once('connect', () => sock.write(`${command}\r\n`));
    sock.on('data', (chunk) => {
      buf += chunk.toString('utf8');
      const nl = buf.indexOf('\r\n');
      if (nl >= 0) done(null, buf.slice(0, nl));
    });
    // SHUTDOWN closes the connection without a reply.
    sock.once('end', () => done(null, buf));
  });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess): Promise<void> {
  if (exited(child)) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function startOnce(): Promise<RedisServerHandle> {
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1', '--dir', tmpdir()],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // Keep the log tail for error messages, and drain the pipes so redis never blocks on them.
  let log = '';
  const keep = (chunk: Buffer) => {
    log = (log + chunk.toString('utf8')).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const failed: { err: Error | null } = { err: null };
  child.once('error', (err) => {
    failed.err = err;
  });
  // Never leave a redis-server behind if a test file forgets stop().
  const onExit = () => {
    if (!exited(child)) child.kill('SIGKILL');
  };
  process.once('exit', onExit);
  child.once('exit', () => process.removeListener('exit', onExit));

  const deadline = Date.now() + START_DEADLINE_MS;
  for (;;) {
    if (failed.err) throw new Error(`could not start redis-server: ${failed.err.message}`);
    if (exited(child)) throw new Error(`redis-server on port ${port} exited (${child.exitCode ?? child.signalCode}) during start:\n${log}`);
    try {
      if ((await sendInline(port, 'PING', 500)) === '+PONG') break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server on port ${port} did not answer PING within ${START_DEADLINE_MS} ms:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }

  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill() {
      if (!exited(child)) child.kill('SIGKILL');
    },
    async stop() {
      if (exited(child)) return;
      const gone = waitExit(child);
      try {
        await sendInline(port, 'SHUTDOWN NOSAVE', 1000);
      } catch {
        // already dying, or unreachable: the timer below kills it
      }
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_DEADLINE_MS);
      await gone;
      clearTimeout(timer);
    },
  };
}

export async function startRedis(): Promise<RedisServerHandle> {
  // The free port can be taken between our probe and redis binding it: retry a few times.
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce();
    } catch (err) {
      lastErr = err;
      if (err instanceof Error && /could not start redis-server/.test(err.message)) break;
    }
  }
  throw lastErr;
}
