// Renders the chart with real helm and checks each object against its Kubernetes / CRD schema
// (kubernetes-models and the KEDA and prometheus-operator models). Shared by the chart test and
// scripts/chart-objects.ts.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { ScaledObject, TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { helm } from '../support/helm.ts';

export const CHART = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../helm/rmt-serve');
export const CI_VALUES = ['defaults-values.yaml', 'gpu-keda-monitoring-values.yaml', 'external-redis-values.yaml'];

export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; [k: string]: any }; [k: string]: any };
type Model = new (data: never) => { validate(): void };

/** The kinds the chart may render, each with the model whose schema validates it. */
export const MODELS: Record<string, Model> = {
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': TriggerAuthentication,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** Throws when the object's kind has no model or the object does not satisfy its schema. */
export function validateObject(o: K8sObject): void {
  const Model = MODELS[`${o.apiVersion}/${o.kind}`];
  if (!Model) throw new Error(`no schema for ${o.apiVersion}/${o.kind} (${o.metadata?.name}): add one to MODELS in test/deploy/chart-render.ts`);
  try {
    new Model(o as never).validate();
  } catch (err) {
    throw new Error(`${o.kind}/${o.metadata.name} is invalid: ${(err as Error).message}`);
  }
}

export interface RenderArgs {
  /** File names in the chart's ci/ folder. */
  files?: string[];
  /** --set assignments. */
  set?: string[];
  /** Release name (default rel). */
  release?: string;
}

export function templateArgs({ files = [], set = [], release = 'rel' }: RenderArgs): string[] {
  return ['template', release, CHART, '--namespace', 'ns', ...files.flatMap((f) => ['-f', path.join(CHART, 'ci', f)]), ...set.flatMap((s) => ['--set', s])];
}

/** helm template's objects; throws with helm's message when rendering fails. */
export function render(args: RenderArgs = {}): K8sObject[] {
  const r = helm(templateArgs(args));
  if (r.status !== 0) throw new Error(`helm template failed (${r.status}): ${r.stderr}`);
  return parseAllDocuments(r.stdout)
    .map((d) => {
      if (d.errors.length) throw new Error(`helm template printed invalid YAML: ${d.errors[0]!.message}`);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
}

/** "Kind/name" of each object, in render order. */
export function objectList(objects: K8sObject[]): string[] {
  return objects.map((o) => `${o.kind}/${o.metadata.name}`);
}
