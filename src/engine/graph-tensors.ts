// What the runner reads from a package's graphs and hands them, as the graph contract has it
// (model-package.ts checks each graph's inputs and outputs against it at load).
import type { ModelPackage } from '../model/model-package.ts';
import type { Tensor } from './onnx-runtime.ts';

/** `state` as a memory of the package's shape ([memory_tokens, d_model]). */
export function memoryState(pkg: Pick<ModelPackage, 'memoryTokens' | 'dModel'>, state: Float32Array): Float32Array {
  const expected = pkg.memoryTokens * pkg.dModel;
  if (state.length !== expected) {
    throw new Error(`memory state has ${state.length} values, expected ${expected} ([${pkg.memoryTokens}, ${pkg.dModel}])`);
  }
  return state;
}

/** A float32 output of a run. */
export function asFloat32(t: Tensor | undefined, name: string): Float32Array {
  if (!t || t.dtype !== 'float32') throw new Error(`expected float32 output '${name}'`);
  return t.data;
}
