// The chart's api and worker Deployments, rendered by helm and run as pods by `podman kube play`
// (no Kubernetes API server can run here), on a private redis-server: both become ready through the
// probes the chart declares, serve a completion with an API key from the chart's Secret, and stop
// with exit 0 when their pods are stopped (SIGTERM, then the pod's grace).
//
// What podman needs changed, and nothing else: host networking (so the pods reach the test's Redis on
// 127.0.0.1 and we reach them), hence no port list (podman refuses port mappings there; probes get the
// numbers); Secrets become podman secrets (kube play reads secretKeyRef from there, as JSON).
//
//   npm run test:kube-play       (RMT_TEST_IMAGE=<tag> to use an image built already)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { Container, podman, podmanMissing, testImage } from '../support/podman.ts';
import { freePort, startRedis, type RedisServerHandle } from '../support/redis-server.ts';
import { pollUntil } from '../support/poll.ts';
import { render, type K8sObject } from './chart-render.ts';

const missing = podmanMissing();
const KEY = 'kube-play-key';

/** The rendered objects podman kube play runs: Deployments (host network) and ConfigMaps. */
function forPodman(objects: K8sObject[]): K8sObject[] {
  return objects.filter((o) => o.kind === 'Deployment' || o.kind === 'ConfigMap').map((o) => {
    if (o.kind !== 'Deployment') return o;
    const spec = structuredClone(o.spec);
    spec.template.spec.hostNetwork = true;
    for (const c of spec.template.spec.containers) {
      const ports = new Map<string, number>((c.ports ?? []).map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]));
      delete c.ports;
      for (const probe of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
        const get = c[probe]?.httpGet;
        if (get && typeof get.port === 'string') get.port = ports.get(get.port);
      }
    }
    return { ...o, spec };
  });
}

describe('chart pods under podman kube play', { skip: missing ? `skipped: ${missing}` : false }, () => {
  let redis: RedisServerHandle;
  let dir: string;
  let playFile: string;
  const release = `kp${process.pid}`;
  const secrets: string[] = [];
  let apiPort: number;
  let metricsPort: number;

  before(async () => {
    const image = await testImage();
    redis = await startRedis();
    [apiPort, metricsPort] = [await freePort(), await freePort()];
    const colon = image.lastIndexOf(':');
    const objects = render({
      release,
      set: [
        `image.repository=${image.slice(0, colon)}`, `image.tag=${image.slice(colon + 1)}`,
        'redis.enabled=false', `redis.external.url=${redis.url}`, `auth.apiKeys[0]=${KEY}`,
        'api.replicaCount=1', `api.port=${apiPort}`, `worker.metricsPort=${metricsPort}`,
        `config.RMT_PREFIX=${release}`, 'config.RMT_INTRA_OP_THREADS=1', 'config.RMT_SHUTDOWN_GRACE_MS=5000',
      ],
    });
    for (const s of objects.filter((o) => o.kind === 'Secret')) {
      const data: Record<string, string> = { ...s.data };
      for (const [k, v] of Object.entries(s.stringData ?? {})) data[k] = Buffer.from(String(v)).toString('base64');
      dir ??= mkdtempSync(path.join(tmpdir(), 'rmt-kube-play-'));
      const file = path.join(dir, `${s.metadata.name}.json`);
      writeFileSync(file, JSON.stringify(data));
      await podman(['secret', 'create', s.metadata.name, file]);
      secrets.push(s.metadata.name);
    }
    dir ??= mkdtempSync(path.join(tmpdir(), 'rmt-kube-play-'));
    playFile = path.join(dir, 'play.yaml');
    writeFileSync(playFile, forPodman(objects).map((o) => stringify(o)).join('---\n'));
  });

  after(async () => {
    if (playFile) await podman(['kube', 'down', playFile]).catch(() => undefined);
    for (const s of secrets) await podman(['secret', 'rm', s]).catch(() => undefined);
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('api and worker pods: ready by their probes, a completion with the chart\'s API key, exit 0 on stop', async () => {
    await podman(['kube', 'play', playFile]);
    const api = new Container(`${release}-rmt-serve-api-pod-0-api`);
    const worker = new Container(`${release}-rmt-serve-worker-pod-0-worker`);
    // The pods run as the chart says: the image's user, read-only root filesystem.
    const inspect = await podman(['inspect', api.name, '--format', '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}']);
    assert.equal(inspect, '10001:10001 true');

    const ok = async (url: string) => (await fetch(url).catch(() => undefined))?.status === 200;
    await pollUntil('worker /readyz', () => ok(`http://127.0.0.1:${metricsPort}/readyz`), 120_000).catch(async (e) => {
      throw new Error(`${(e as Error).message}\n${await worker.logs()}`);
    });
    await pollUntil('api /readyz', () => ok(`http://127.0.0.1:${apiPort}/readyz`), 120_000).catch(async (e) => {
      throw new Error(`${(e as Error).message}\n${await api.logs()}`);
    });
    const base = `http://127.0.0.1:${apiPort}`;
    assert.equal((await fetch(`${base}/v1/models`)).status, 401, 'the chart\'s API key Secret is in force');
    const r = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'rmt-brown-lm', prompt: 'It was a dark and stormy night', max_tokens: 6, temperature: 0 }),
    });
    const body = (await r.json()) as { usage: { completion_tokens: number } };
    assert.equal(r.status, 200, JSON.stringify(body));
    assert.equal(body.usage.completion_tokens, 6);

    for (const [pod, c] of [[`${release}-rmt-serve-api-pod-0`, api], [`${release}-rmt-serve-worker-pod-0`, worker]] as const) {
      await podman(['pod', 'stop', '--time', '60', pod]);
      const code = await podman(['inspect', c.name, '--format', '{{.State.ExitCode}}']);
      assert.equal(code, '0', await c.logs());
    }
  });
});
