// What the runner reads from a package's graphs and hands them, as the graph contract has it
// (model-package.ts checks each graph's inputs and outputs against it at load). Assertions, not
// checks: a memory was checked where it came in (engine-args.ts, request-check.ts; one read from Redis
// by the session store) and an output's dtype at load.
import type { ModelPackage } from '../model/model-package.ts';
import { invariant } from './invariant.ts';
import type { Tensor } from './onnx-runtime.ts';

/** `state`, a memory of the package's shape ([memory_tokens, d_model]). */
export function memoryState(pkg: Pick<ModelPackage, 'memoryTokens' | 'dModel'>, state: Float32Array): Float32Array {
  const expected = pkg.memoryTokens * pkg.dModel;
  invariant(state.length === expected, () => `memory state has ${state.length} values, expected ${expected} ([${pkg.memoryTokens}, ${pkg.dModel}])`);
  return state;
}

/** A float32 output of a run. */
export function asFloat32(t: Tensor | undefined, name: string): Float32Array {
  invariant(t?.dtype === 'float32', () => `expected float32 output '${name}', found ${t?.dtype ?? 'none'}`);
  return t.data;
}
