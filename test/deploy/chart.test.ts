// The Helm chart (helm/rmt-serve), checked offline with real helm: lint, render, every object
// against its Kubernetes/CRD schema, the behaviour the service needs (probes, shutdown grace, GPU,
// Redis, auth), the values schema's refusals, and the schema's `config` part in sync with SETTINGS.
//   node --import tsx --test test/deploy/chart.test.ts   (npm run test:chart)
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { SETTINGS } from '../../src/config/config.ts';
import { CHART_OWNED, SCHEMA_FILE, withConfigSchema } from '../../scripts/chart-schema.ts';
import { helm } from '../support/helm.ts';
import { CHART, CI_VALUES, type K8sObject, objectList, render, templateArgs, validateObject } from './chart-render.ts';

/** The object of `kind` named rel-rmt-serve-<component> (rel-rmt-serve for ''). */
const find = (objs: K8sObject[], kind: string, component: string): K8sObject => {
  const name = component ? `rel-rmt-serve-${component}` : 'rel-rmt-serve';
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  assert.ok(o, `${kind} ${name} not rendered; got ${objectList(objs).join(', ')}`);
  return o;
};
const container = (d: K8sObject) => d.spec.template.spec.containers[0];
type EnvVar = { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } };
const envOf = (d: K8sObject, name: string): EnvVar | undefined => (container(d).env as EnvVar[]).find((e) => e.name === name);
const graceSeconds = (d: K8sObject): number => d.spec.template.spec.terminationGracePeriodSeconds;

describe('helm chart', () => {
  const rendered = new Map(CI_VALUES.map((f) => [f, render({ files: [f] })]));
  const defaults = rendered.get('defaults-values.yaml')!;
  const all = rendered.get('gpu-keda-monitoring-values.yaml')!;
  const external = rendered.get('external-redis-values.yaml')!;

  for (const file of CI_VALUES) {
    test(`helm lint --strict is clean with ci/${file}`, () => {
      const r = helm(['lint', '--strict', CHART, '-f', path.join(CHART, 'ci', file)]);
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
      assert.doesNotMatch(r.stdout, /\[(WARNING|ERROR)\]/);
    });

    test(`every object rendered with ci/${file} satisfies its schema`, () => {
      const objects = rendered.get(file)!;
      assert.ok(objects.length > 0);
      for (const o of objects) validateObject(o);
      console.log(`${file}: ${objectList(objects).join(', ')}`);
    });
  }

  test('an object of a kind without a schema fails validation', () => {
    assert.throws(() => validateObject({ apiVersion: 'batch/v1', kind: 'Job', metadata: { name: 'x' } }), /no schema for batch\/v1\/Job/);
    assert.throws(() => validateObject({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'x' }, spec: { replicas: 'two' } }), /Deployment\/x is invalid/);
  });

  test('defaults: api and worker Deployments, Redis StatefulSet with AOF on a PVC, no API-key Secret', () => {
    const api = find(defaults, 'Deployment', 'api');
    const worker = find(defaults, 'Deployment', 'worker');
    assert.deepEqual(container(api).args, ['api']);
    assert.deepEqual(container(worker).args, ['worker']);
    assert.equal(container(api).image, 'rmt-serve:0.1.0');
    assert.equal(container(worker).image, 'rmt-serve:0.1.0');
    assert.equal(envOf(worker, 'RMT_EXECUTION_PROVIDER'), undefined);
    assert.equal(container(worker).resources.limits['nvidia.com/gpu'], undefined);
    const redis = find(defaults, 'StatefulSet', 'redis');
    const args: string[] = redis.spec.template.spec.containers[0].args;
    assert.equal(args[args.indexOf('--appendonly') + 1], 'yes');
    assert.equal(args[args.indexOf('--maxmemory-policy') + 1], 'noeviction', 'BullMQ needs noeviction');
    assert.equal(redis.spec.volumeClaimTemplates.length, 1);
    assert.equal(redis.spec.volumeClaimTemplates[0].spec.resources.requests.storage, '8Gi');
    assert.deepEqual(redis.spec.template.spec.containers[0].volumeMounts, [{ name: 'data', mountPath: '/data' }]);
    find(defaults, 'Service', 'redis');
    assert.equal(defaults.filter((o) => o.kind === 'Secret').length, 0);
    assert.equal(envOf(api, 'RMT_API_KEYS'), undefined);
    assert.equal(envOf(api, 'REDIS_URL')?.value, 'redis://rel-rmt-serve-redis:6379');
    for (const kind of ['ScaledObject', 'ServiceMonitor', 'NetworkPolicy', 'HorizontalPodAutoscaler', 'PodDisruptionBudget']) {
      assert.ok(!defaults.some((o) => o.kind === kind), `${kind} rendered by default`);
    }
    assert.equal(worker.spec.replicas, 1);
    assert.equal(api.spec.replicas, 2);
  });

  test('NOTES warn that the API is open when no keys are configured', () => {
    const open = helm(['install', 'rel', CHART, '--dry-run=client', '--namespace', 'ns']);
    assert.equal(open.status, 0, open.stderr);
    assert.match(open.stdout, /WARNING: no API keys are configured/);
    const closed = helm(['install', 'rel', CHART, '--dry-run=client', '--namespace', 'ns', '-f', path.join(CHART, 'ci/gpu-keda-monitoring-values.yaml')]);
    assert.equal(closed.status, 0, closed.stderr);
    assert.doesNotMatch(closed.stdout, /WARNING: no API keys/);
  });

  test('api probes: startup and liveness on /healthz, readiness on /readyz?scope=pod; worker probes on its metrics port', () => {
    for (const objs of [defaults, all]) {
      const api = container(find(objs, 'Deployment', 'api'));
      assert.deepEqual(api.ports, [{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);
      assert.deepEqual(api.livenessProbe.httpGet, { path: '/healthz', port: 'http' });
      assert.deepEqual(api.startupProbe.httpGet, { path: '/healthz', port: 'http' });
      assert.deepEqual(api.readinessProbe.httpGet, { path: '/readyz?scope=pod', port: 'http' });
      const worker = container(find(objs, 'Deployment', 'worker'));
      assert.deepEqual(worker.ports, [{ name: 'metrics', containerPort: 9090, protocol: 'TCP' }]);
      assert.equal(worker.env.find((e: EnvVar) => e.name === 'RMT_WORKER_METRICS_PORT').value, '9090');
      assert.deepEqual(worker.livenessProbe.httpGet, { path: '/healthz', port: 'metrics' });
      assert.deepEqual(worker.readinessProbe.httpGet, { path: '/readyz', port: 'metrics' });
      // Model load and CUDA start-up: at least 5 minutes before the startup probe gives up.
      assert.ok(worker.startupProbe.periodSeconds * worker.startupProbe.failureThreshold >= 300);
      assert.deepEqual(worker.startupProbe.httpGet, { path: '/healthz', port: 'metrics' });
      const svc = find(objs, 'Service', 'worker');
      assert.deepEqual(svc.spec.ports.map((p: { name: string; port: number }) => [p.name, p.port]), [['metrics', 9090]]);
    }
  });

  test('api and worker pods: non-root 10001, read-only root, no capabilities, RuntimeDefault seccomp, /tmp emptyDir, no token', () => {
    for (const name of ['api', 'worker']) {
      const spec = find(defaults, 'Deployment', name).spec.template.spec;
      assert.deepEqual(spec.securityContext, { runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001, seccompProfile: { type: 'RuntimeDefault' } });
      assert.deepEqual(spec.containers[0].securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
      assert.ok(spec.volumes.some((v: { name: string; emptyDir?: object }) => v.name === 'tmp' && v.emptyDir));
      assert.ok(spec.containers[0].volumeMounts.some((m: { mountPath: string }) => m.mountPath === '/tmp'));
      assert.equal(spec.automountServiceAccountToken, false);
      assert.equal(spec.serviceAccountName, 'rel-rmt-serve');
      assert.match(find(defaults, 'Deployment', name).spec.template.metadata.annotations['checksum/config'], /^[0-9a-f]{64}$/);
    }
  });

  test('terminationGracePeriodSeconds exceeds RMT_SHUTDOWN_GRACE_MS in both Deployments, also when it is raised', () => {
    const cases: [K8sObject[], number][] = [
      [defaults, SETTINGS.shutdownGraceMs.default],
      [all, 45000],
      [render({ set: ['config.RMT_SHUTDOWN_GRACE_MS=90500'] }), 90500],
      [render({ set: ['config.RMT_SHUTDOWN_GRACE_MS=0'] }), 0],
    ];
    for (const [objs, graceMs] of cases) {
      for (const name of ['api', 'worker']) {
        const d = find(objs, 'Deployment', name);
        assert.ok(graceSeconds(d) > graceMs / 1000, `${name}: ${graceSeconds(d)} s <= ${graceMs} ms`);
      }
      // The api's preStop sleep comes out of the same budget.
      const api = find(objs, 'Deployment', 'api');
      assert.ok(graceSeconds(api) > graceMs / 1000 + container(api).lifecycle.preStop.sleep.seconds);
    }
    // A per-component env override of the grace counts too.
    const env = render({ set: ['worker.env[0].name=RMT_SHUTDOWN_GRACE_MS', 'worker.env[0].value=120000'] });
    env.forEach(validateObject); // --set made the value a number: the chart prints it as a string
    assert.ok(graceSeconds(find(env, 'Deployment', 'worker')) > 120);
    assert.equal(envOf(find(env, 'Deployment', 'worker'), 'RMT_SHUTDOWN_GRACE_MS')?.value, '120000');
    // An explicit value is kept when above the grace, refused with a clear message otherwise.
    assert.equal(graceSeconds(find(render({ set: ['worker.terminationGracePeriodSeconds=100'] }), 'Deployment', 'worker')), 100);
    const low = helm(templateArgs({ set: ['config.RMT_SHUTDOWN_GRACE_MS=60000', 'worker.terminationGracePeriodSeconds=60'] }));
    assert.notEqual(low.status, 0);
    assert.match(low.stderr, /worker\.terminationGracePeriodSeconds \(60\) must be above RMT_SHUTDOWN_GRACE_MS \(60000 ms\)/);
  });

  test('GPU workers: nvidia.com/gpu, cuda provider, precision, the -cuda image, GPU node placement', () => {
    const worker = find(all, 'Deployment', 'worker');
    const c = container(worker);
    assert.equal(c.resources.limits['nvidia.com/gpu'], 1);
    assert.equal(c.resources.limits.memory, '16Gi');
    assert.equal(envOf(worker, 'RMT_EXECUTION_PROVIDER')?.value, 'cuda');
    assert.equal(envOf(worker, 'RMT_PRECISION')?.value, 'fp16');
    assert.equal(c.image, 'rmt-serve:0.1.0-cuda');
    assert.equal(container(find(all, 'Deployment', 'api')).image, 'rmt-serve:0.1.0');
    assert.deepEqual(worker.spec.template.spec.nodeSelector, { 'nvidia.com/gpu.present': 'true' });
    assert.ok(worker.spec.template.spec.tolerations.some((t: { key: string }) => t.key === 'nvidia.com/gpu'));
    const tagged = find(render({ set: ['worker.gpu.enabled=true', 'image.tag=1.2.3', 'image.cudaTag=1.2.3-cuda12'] }), 'Deployment', 'worker');
    assert.equal(container(tagged).image, 'rmt-serve:1.2.3-cuda12');
    assert.equal(envOf(tagged, 'RMT_PRECISION')?.value, 'fp32');
  });

  test('GPU workers, several per pod: gpusPerPod GPUs, `worker --devices all`, a metrics port per process, all scraped', () => {
    // Default: one GPU, one process per pod.
    const one = find(all, 'Deployment', 'worker');
    assert.deepEqual(container(one).args, ['worker']);
    assert.deepEqual(container(one).ports.map((p: { name: string }) => p.name), ['metrics']);
    const objs = render({ files: ['gpu-keda-monitoring-values.yaml'], set: ['worker.gpu.gpusPerPod=4'] });
    const worker = find(objs, 'Deployment', 'worker');
    const c = container(worker);
    assert.equal(c.resources.limits['nvidia.com/gpu'], 4);
    assert.deepEqual(c.args, ['worker', '--devices', 'all']);
    const port = c.ports[0].containerPort as number;
    assert.deepEqual(c.ports.map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]),
      [['metrics', port], ['metrics-1', port + 1], ['metrics-2', port + 2], ['metrics-3', port + 3]]);
    assert.equal(envOf(worker, 'RMT_WORKER_METRICS_PORT')?.value, String(port));
    const svc = find(objs, 'Service', 'worker');
    assert.deepEqual(svc.spec.ports.map((p: { targetPort: string }) => p.targetPort), ['metrics', 'metrics-1', 'metrics-2', 'metrics-3']);
    const sm = find(objs, 'ServiceMonitor', 'worker');
    assert.deepEqual(sm.spec.endpoints.map((e: { port: string }) => e.port), ['metrics', 'metrics-1', 'metrics-2', 'metrics-3']);
    // Without GPU workers gpusPerPod means nothing: one process, no GPU.
    const cpu = find(render({ set: ['worker.gpu.gpusPerPod=4'] }), 'Deployment', 'worker');
    assert.deepEqual(container(cpu).args, ['worker']);
    assert.equal(container(cpu).resources.limits?.['nvidia.com/gpu'], undefined);
    // count (GPUs of a one-process pod) and gpusPerPod both above 1: refused.
    const both = helm(templateArgs({ set: ['worker.gpu.enabled=true', 'worker.gpu.gpusPerPod=2', 'worker.gpu.count=2'] }));
    assert.notEqual(both.status, 0);
    assert.match(both.stderr, /set gpusPerPod \(GPUs per pod, one worker process each\), not count/);
    const bad = helm(templateArgs({ set: ['worker.gpu.gpusPerPod=0'] }));
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /gpusPerPod/);
  });

  test('all enabled: KEDA on the BullMQ lists and rmt_queue_depth, ServiceMonitors, NetworkPolicies, HPA, PDBs, API keys', () => {
    const so = find(all, 'ScaledObject', 'worker');
    assert.equal(so.spec.scaleTargetRef.name, 'rel-rmt-serve-worker');
    assert.deepEqual([so.spec.minReplicaCount, so.spec.maxReplicaCount], [1, 4]);
    const redisTriggers = so.spec.triggers.filter((t: { type: string }) => t.type === 'redis');
    assert.deepEqual(redisTriggers.map((t: { metadata: { listName: string } }) => t.metadata.listName), ['rmt:q:sessions:wait', 'rmt:q:sessions:active']);
    assert.equal(redisTriggers[0].authenticationRef.name, 'rel-rmt-serve-worker-redis');
    const prom = so.spec.triggers.find((t: { type: string }) => t.type === 'prometheus');
    assert.match(prom.metadata.query, /^max\(rmt_queue_depth\{/);
    assert.match(readFileSync(path.resolve(CHART, '../../src/api/metrics.ts'), 'utf8'), /name: 'rmt_queue_depth'/);
    assert.equal(find(all, 'Deployment', 'worker').spec.replicas, undefined, 'KEDA owns the worker replica count');
    assert.equal(find(all, 'Deployment', 'api').spec.replicas, undefined, 'the HPA owns the api replica count');
    const prefixed = find(render({ files: ['gpu-keda-monitoring-values.yaml'], set: ['config.RMT_PREFIX=blue'] }), 'ScaledObject', 'worker');
    assert.equal(prefixed.spec.triggers[0].metadata.listName, 'blue:q:sessions:wait');
    assert.deepEqual(find(all, 'ServiceMonitor', 'api').spec.endpoints[0].port, 'http');
    assert.deepEqual(find(all, 'ServiceMonitor', 'worker').spec.endpoints[0].port, 'metrics');
    assert.equal(find(all, 'ServiceMonitor', 'worker').metadata.labels.release, 'kube-prometheus-stack');
    const redisNp = find(all, 'NetworkPolicy', 'redis');
    assert.deepEqual(redisNp.spec.ingress[0].from[0].podSelector.matchExpressions[0].values, ['api', 'worker']);
    find(all, 'NetworkPolicy', 'api');
    find(all, 'NetworkPolicy', 'worker');
    find(all, 'HorizontalPodAutoscaler', 'api');
    find(all, 'PodDisruptionBudget', 'api');
    find(all, 'PodDisruptionBudget', 'worker');
    const keys = find(all, 'Secret', 'api-keys');
    assert.equal(keys.stringData['api-keys'], 'ci-key-1,ci-key-2');
    assert.deepEqual(envOf(find(all, 'Deployment', 'api'), 'RMT_API_KEYS')?.valueFrom?.secretKeyRef, { name: 'rel-rmt-serve-api-keys', key: 'api-keys' });
    assert.equal(envOf(find(all, 'Deployment', 'worker'), 'RMT_API_KEYS'), undefined);
    assert.equal(envOf(find(all, 'Deployment', 'api'), 'REDIS_URL')?.value, 'redis://:$(REDIS_PASSWORD)@rel-rmt-serve-redis:6379');
    assert.ok(find(all, 'StatefulSet', 'redis').spec.template.spec.containers[0].args.includes('--requirepass'));
  });

  test('config values land in the ConfigMap both roles read; per-component env wins', () => {
    const cm = find(all, 'ConfigMap', '');
    assert.equal(cm.metadata.name, 'rel-rmt-serve');
    assert.equal(cm.data.RMT_MAX_BATCH, '64');
    assert.equal(cm.data.RMT_MAX_BATCH_TOKENS, '8388608', 'large integers are not printed as floats');
    assert.equal(cm.data.RMT_SEGMENT_STEPS, 'true');
    assert.equal(cm.data.RMT_MODELS, 'rmt-brown-small,rmt-brown-lm');
    for (const name of ['api', 'worker']) assert.deepEqual(container(find(all, 'Deployment', name)).envFrom, [{ configMapRef: { name: 'rel-rmt-serve' } }]);
    assert.equal(envOf(find(all, 'Deployment', 'api'), 'RMT_TOKENIZER_THREADS')?.value, '4');
    const own = find(render({ set: ['api.env[0].name=RMT_MODELS_DIR', 'api.env[0].value=/elsewhere'] }), 'Deployment', 'api');
    assert.deepEqual(container(own).env.filter((e: EnvVar) => e.name === 'RMT_MODELS_DIR'), [{ name: 'RMT_MODELS_DIR', value: '/elsewhere' }]);
    const a = find(defaults, 'Deployment', 'worker').spec.template.metadata.annotations['checksum/config'];
    const b = find(render({ set: ['config.RMT_MAX_BATCH=8'] }), 'Deployment', 'worker').spec.template.metadata.annotations['checksum/config'];
    assert.notEqual(a, b, 'a config change rolls the pods');
  });

  test('external Redis: no StatefulSet, REDIS_URL from the named Secret; models from a read-only PVC', () => {
    assert.ok(!external.some((o) => o.kind === 'StatefulSet'));
    assert.ok(!external.some((o) => o.kind === 'Service' && o.metadata.name.endsWith('-redis')));
    for (const name of ['api', 'worker']) {
      const d = find(external, 'Deployment', name);
      assert.deepEqual(envOf(d, 'REDIS_URL'), { name: 'REDIS_URL', valueFrom: { secretKeyRef: { name: 'rmt-redis', key: 'url' } } });
      assert.equal(envOf(d, 'RMT_MODELS_DIR')?.value, '/models');
      assert.deepEqual(d.spec.template.spec.volumes.find((v: { name: string }) => v.name === 'models').persistentVolumeClaim, { claimName: 'rmt-models', readOnly: true });
      assert.ok(container(d).volumeMounts.some((m: { mountPath: string; readOnly: boolean }) => m.mountPath === '/models' && m.readOnly));
    }
    assert.deepEqual(envOf(find(external, 'Deployment', 'api'), 'RMT_API_KEYS')?.valueFrom?.secretKeyRef, { name: 'rmt-api-keys', key: 'keys' });
    const url = render({ set: ['redis.enabled=false', 'redis.external.url=redis://:pw@redis.example:6379'] });
    assert.equal(find(url, 'Secret', 'redis-url').stringData['redis-url'], 'redis://:pw@redis.example:6379');
    const none = helm(templateArgs({ set: ['redis.enabled=false'] }));
    assert.notEqual(none.status, 0);
    assert.match(none.stderr, /set redis\.external\.url or redis\.external\.existingSecret/);
  });

  test('models from an init container: an emptyDir filled before the app starts', () => {
    const objs = render({ set: ['models.initContainer.enabled=true', 'models.initContainer.command={sh,-c,cp -r /src/. "$MODELS_DIR"}'] });
    const spec = find(objs, 'Deployment', 'worker').spec.template.spec;
    assert.equal(spec.initContainers[0].command[2], 'cp -r /src/. "$MODELS_DIR"');
    assert.ok(spec.volumes.some((v: { name: string; emptyDir?: object }) => v.name === 'models' && v.emptyDir));
    assert.equal(envOf(find(objs, 'Deployment', 'worker'), 'RMT_MODELS_DIR')?.value, '/models');
  });

  describe('values.schema.json refuses', () => {
    const refused: [string, string[], RegExp][] = [
      ['an unknown top-level key', ['replicas=3'], /at '': additional properties 'replicas' not allowed/],
      ['an unknown key under api', ['api.replicas=3'], /at '\/api': additional properties 'replicas' not allowed/],
      ['a wrong type', ['api.replicaCount=two'], /at '\/api\/replicaCount': got string, want integer/],
      ['an unknown config key', ['config.RMT_NOPE=1'], /at '\/config': additional properties 'RMT_NOPE' not allowed/],
      ['a wrong config type', ['config.RMT_MAX_BATCH=x'], /at '\/config\/RMT_MAX_BATCH': got string, want integer/],
      ['a config integer out of bounds', ['config.RMT_MAX_BATCH=5000'], /at '\/config\/RMT_MAX_BATCH': maximum/],
      ['a config value outside its enum', ['config.RMT_EXECUTION_PROVIDER=tpu'], /at '\/config\/RMT_EXECUTION_PROVIDER'/],
      ['a setting the chart sets itself', ['config.REDIS_URL=redis://x'], /additional properties 'REDIS_URL' not allowed/],
    ];
    for (const [what, set, message] of refused) {
      test(what, () => {
        const r = helm(templateArgs({ set }));
        assert.equal(r.status, 1, `helm accepted --set ${set.join(' ')}`);
        assert.match(r.stderr, /values don't meet the specifications of the schema/);
        assert.match(r.stderr, message);
      });
    }
  });

  test("the schema's config properties are SETTINGS' env names (less the chart's own), as scripts/chart-schema.ts writes them", () => {
    const text = readFileSync(SCHEMA_FILE, 'utf8');
    const config = JSON.parse(text).properties.config;
    const expected = Object.values(SETTINGS).map((s) => s.env).filter((e) => !(CHART_OWNED as readonly string[]).includes(e));
    assert.deepEqual(Object.keys(config.properties).sort(), expected.sort());
    assert.equal(config.additionalProperties, false);
    assert.deepEqual(config.properties.RMT_MAX_BATCH, { type: 'integer', minimum: 1, maximum: 4096, default: 32, description: SETTINGS.maxBatch.doc });
    assert.equal(config.properties.RMT_SEGMENT_STEPS.type, 'boolean');
    assert.deepEqual(config.properties.RMT_PRECISION.enum, ['fp32', 'fp16']);
    assert.equal(text, withConfigSchema(text), 'values.schema.json is out of date: run node --import tsx scripts/chart-schema.ts');
  });
});
