// What the API needs to know about model packages, read from model.json and the state init file
// without loading onnxruntime (API processes never run a graph; workers validate the graphs).
import path from 'node:path';
import { modelInfo, readModelSpec, type ModelInfo } from './model-spec.ts';

/** The catalog's name for ModelInfo (one type: what the API and the workers know of a model). */
export type CatalogModel = ModelInfo;

export interface ModelCatalog {
  defaultModel: string;
  list(): CatalogModel[];
  /** undefined when unknown. */
  get(name: string): CatalogModel | undefined;
}

export async function loadCatalog(modelsDir: string, names: readonly string[]): Promise<ModelCatalog> {
  if (names.length === 0) throw new Error('no models configured (RMT_MODELS)');
  const models = new Map<string, CatalogModel>();
  for (const name of names) {
    const dir = path.join(modelsDir, name);
    let info: ModelInfo;
    try {
      info = modelInfo(name, await readModelSpec(dir));
    } catch (err) {
      // The reader names the file within the package; say which package.
      throw new Error(`model '${name}' (${dir}): ${(err as Error).message}`, { cause: err });
    }
    models.set(name, info);
  }
  return { defaultModel: names[0]!, list: () => [...models.values()], get: (n) => models.get(n) };
}
