// A throwaway Redis Cluster per test file: 6 redis-server processes on free ports (3 masters, 3
// replicas, append-only), joined by `redis-cli --cluster create`, killable node by node for
// failover tests. Waits on the cluster's own state (CLUSTER INFO on every node), never on a timer.
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './redis-server.ts';

const run = promisify(execFile);
const NODES = 6;
const POLL_MS = 50;

export interface ClusterNodeInfo {
  port: number;
  role: 'master' | 'slave';
  /** Masters: their slot ranges as CLUSTER NODES lists them. */
  slots: string[];
  failed: boolean;
}

export interface RedisClusterHandle {
  /** host:port of every node, for REDIS_CLUSTER_NODES. */
  nodes: string[];
  ports: number[];
  /** The nodes as a live node sees them now. */
  topology(): Promise<ClusterNodeInfo[]>;
  /** SIGKILL one node (a crashed master, for failover tests). */
  kill(port: number): void;
  /** Starts a killed node again on its own files: it rejoins the cluster (as a replica once it was replaced). */
  restart(port: number): void;
  /** Resolves once every live replica is attached and synced (WAIT counts only those), at least `n` of them. */
  waitReplicas(n: number, deadlineMs?: number): Promise<void>;
  /** Resolves once every live node reports cluster_state:ok and `port`'s slots have a live master. */
  waitHealthy(deadlineMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Why the cluster tests cannot run here, or undefined when they can. */
export function clusterUnavailable(): string | undefined {
  for (const bin of ['redis-server', 'redis-cli']) {
    if (spawnSync(bin, ['--version']).error) return `${bin} is not on PATH (apt-get install redis-server)`;
  }
  return undefined;
}

async function cli(port: number, ...args: string[]): Promise<string> {
  return (await run('redis-cli', ['-p', String(port), ...args], { timeout: 5000 })).stdout;
}

export async function startRedisCluster(): Promise<RedisClusterHandle> {
  const dir = mkdtempSync(path.join(tmpdir(), 'rmt-cluster-'));
  const ports: number[] = [];
  const children = new Map<number, ChildProcess>();
  const alive = (p: number) => {
    const c = children.get(p);
    return !!c && c.exitCode === null && c.signalCode === null;
  };
  const killAll = () => {
    for (const c of children.values()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.once('exit', killAll);
  const startNode = (port: number) => {
    const nodeDir = path.join(dir, String(port));
    mkdirSync(nodeDir, { recursive: true }); // distinct dirs: each node writes its own nodes.conf and append-only file
    children.set(port, spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', nodeDir, '--save', '',
      '--cluster-enabled', 'yes', '--cluster-node-timeout', '1000', '--appendonly', 'yes',
      '--cluster-config-file', `nodes-${port}.conf`,
    ], { stdio: 'ignore' }));
  };
  for (let i = 0; i < NODES; i++) {
    const port = await freePort();
    startNode(port);
    ports.push(port);
  }
  const answering = async (p: number) => (await cli(p, 'PING').catch(() => '')).trim() === 'PONG';
  await until('every node to answer PING', async () => (await Promise.all(ports.map(answering))).every(Boolean), 10_000);
  await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'], { timeout: 60_000 });

  const topology = async (): Promise<ClusterNodeInfo[]> => {
    const from = ports.find(alive);
    if (from === undefined) throw new Error('no live cluster node');
    return (await cli(from, 'CLUSTER', 'NODES')).trim().split('\n').map((line) => {
      const f = line.split(' ');
      return {
        port: Number(/:(\d+)@/.exec(f[1]!)?.[1]),
        role: f[2]!.includes('master') ? 'master' : 'slave',
        slots: f.slice(8),
        failed: /fail/.test(f[2]!),
      };
    });
  };
  const waitHealthy = async (deadlineMs = 60_000) => {
    await until('cluster_state:ok on every live node, all slots served by live masters', async () => {
      for (const p of ports.filter(alive)) {
        const info = await cli(p, 'CLUSTER', 'INFO').catch(() => '');
        if (!/cluster_state:ok/.test(info) || !/cluster_slots_ok:16384/.test(info)) return false;
      }
      const t = await topology();
      return t.filter((n) => n.role === 'master' && n.slots.length > 0).every((n) => alive(n.port) && !n.failed);
    }, deadlineMs);
  };
  const waitReplicas = async (n: number, deadlineMs = 30_000) => {
    await until(`${n} replicas synced with their masters`, async () => {
      const replicas = (await topology()).filter((r) => r.role === 'slave' && !r.failed && alive(r.port));
      if (replicas.length < n) return false;
      const infos = await Promise.all(replicas.map((r) => cli(r.port, 'INFO', 'replication')));
      return infos.every((i) => /master_link_status:up/.test(i) && !/master_sync_in_progress:1/.test(i));
    }, deadlineMs);
  };
  await waitHealthy();
  // Every replica attached and synced, or a failover has no candidate and WAIT confirms nothing.
  await waitReplicas(3);
  return {
    nodes: ports.map((p) => `127.0.0.1:${p}`),
    ports,
    topology,
    waitHealthy,
    waitReplicas,
    kill(port) {
      children.get(port)?.kill('SIGKILL');
    },
    restart(port) {
      if (!alive(port)) startNode(port);
    },
    async stop() {
      await Promise.all([...children.values()].map((c) => {
        if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
        const gone = new Promise<void>((r) => c.once('exit', () => r()));
        c.kill('SIGKILL');
        return gone;
      }));
      process.removeListener('exit', killAll);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function until(what: string, check: () => Promise<boolean>, deadlineMs: number): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`redis cluster: timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
