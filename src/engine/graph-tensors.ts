// What the runner reads from a package's graphs, as the graph contract has it (model-package.ts checks
// each graph's inputs and outputs against it at load; states: state-feeds.ts). Assertions, not checks:
// an output's dtype was checked at load.
import { invariant } from './invariant.ts';
import type { Tensor } from './onnx-runtime.ts';

/** A float32 output of a run. */
export function asFloat32(t: Tensor | undefined, name: string): Float32Array {
  invariant(t?.dtype === 'float32', () => `expected float32 output '${name}', found ${t?.dtype ?? 'none'}`);
  return t.data;
}
