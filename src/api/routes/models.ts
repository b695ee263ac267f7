// GET /v1/models: the configured model packages in the OpenAI list shape.
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { ApiDeps } from '../deps.ts';
import type { CatalogModel } from '../../model/model-catalog.ts';
import { observeRequests } from '../metrics.ts';
import { ErrorResponses, ModelListSchema, ModelSchema, errorResponses, type ModelObject } from '../schemas.ts';
import { Type } from 'typebox';
import { modelNotFound } from '../errors.ts';

export function modelObject(m: CatalogModel, created: number): ModelObject {
  return {
    id: m.name, object: 'model', created, owned_by: 'rmt-serve', architecture: m.architecture, segment_length: m.segmentLength, memory_tokens: m.memoryTokens,
    state_bytes: m.stateBytes, state_shape: [...m.stateShape],
    state_entries: m.stateEntries.map((e) => ({ name: e.name, shape: [...e.shape], dtype: 'float32' as const, offset: e.offset, size: e.size })),
    description: m.description,
  };
}

export default async function modelsRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  observeRequests(r);
  // Packages carry no creation time; report when this process loaded them.
  const created = Math.floor(Date.now() / 1000);

  r.get('/v1/models', {
    schema: { operationId: 'listModels', tags: ['models'], summary: 'List the models', response: { 200: ModelListSchema, ...ErrorResponses } },
  }, async () => ({
    object: 'list' as const,
    data: deps.catalog.list().map((m) => modelObject(m, created)),
  }));

  r.get('/v1/models/:model', {
    schema: {
      operationId: 'getModel', tags: ['models'], summary: 'Get a model',
      params: Type.Object({ model: Type.String({ minLength: 1, maxLength: 256 }) }, { additionalProperties: false }),
      response: { 200: ModelSchema, ...errorResponses(404) },
    },
  }, async (req) => {
    const m = deps.catalog.get(req.params.model);
    if (!m) throw modelNotFound(req.params.model);
    return modelObject(m, created);
  });
}
