// A batch's session states as the graphs take and give them. A row's state is one flat float32 array
// (src/model/state-layout.ts: the entries back to back); a graph takes `state.<name>` [batch, ...shape]
// per entry and returns `<kind>.<name>` (next_state, step_states) per entry. Here, and only here, the
// flat rows are sliced per entry and the outputs joined back into flat rows, from the package's layout
// alone: no architecture is named. The RMT's one entry is the flat state itself, so its feeds and
// outputs are the rows' and the runs' buffers as they are (rowsInPlace, views), as before.
import type { ModelPackage } from '../model/model-package.ts';
import type { StateLayout } from '../model/state-layout.ts';
import { asFloat32 } from './graph-tensors.ts';
import { invariant } from './invariant.ts';
import { float32, type Tensor } from './onnx-runtime.ts';

type Layout = Pick<ModelPackage, 'stateLayout'>;

/** `state`, a flat state of the package's layout. */
export function flatState(pkg: Layout, state: Float32Array): Float32Array {
  const { size, slots } = pkg.stateLayout;
  invariant(state.length === size, () => `state has ${state.length} values, expected ${size} (${slots.map((s) => `${s.name} [${s.shape.join(', ')}]`).join(', ')})`);
  return state;
}

/**
 * When the rows' states lie one after another in one buffer, in row order (a chain's views of the run
 * before: SegmentOptions.views), that stretch of the buffer: no copy.
 */
function rowsInPlace(rows: readonly { state: Float32Array }[], stateSize: number): Float32Array | undefined {
  const first = rows[0]!.state;
  for (let b = 1; b < rows.length; b++) {
    const s = rows[b]!.state;
    if (s.buffer !== first.buffer || s.byteOffset !== first.byteOffset + b * stateSize * 4) return undefined;
  }
  return new Float32Array(first.buffer, first.byteOffset, rows.length * stateSize);
}

/**
 * Whether stateFeeds can take the rows' buffer as it is (one entry, rows back to back), so the caller
 * need not give it a buffer.
 */
export function feedsInPlace(layout: StateLayout, rows: readonly { state: Float32Array }[]): boolean {
  return layout.slots.length === 1 && rowsInPlace(rows, layout.size) !== undefined;
}

/**
 * `state.<name>` [batch, ...shape] for every entry, from the rows' flat states: written into `buffer`
 * (batch x the state's size, entry after entry), or, when feedsInPlace, the rows' own buffer.
 */
export function stateFeeds(layout: StateLayout, rows: readonly { state: Float32Array }[], buffer?: Float32Array): Record<string, Tensor> {
  const batch = rows.length;
  const feeds: Record<string, Tensor> = {};
  if (layout.slots.length === 1) {
    const inPlace = rowsInPlace(rows, layout.size);
    if (inPlace) {
      const s = layout.slots[0]!;
      feeds[`state.${s.name}`] = float32(inPlace, [batch, ...s.shape]);
      return feeds;
    }
  }
  const all = buffer ?? new Float32Array(batch * layout.size);
  invariant(all.length === batch * layout.size, () => `state feed buffer has ${all.length} values, expected ${batch * layout.size}`);
  for (const s of layout.slots) {
    const data = all.subarray(batch * s.offset, batch * (s.offset + s.size));
    rows.forEach((r, b) => data.set(r.state.subarray(s.offset, s.offset + s.size), b * s.size));
    feeds[`state.${s.name}`] = float32(data, [batch, ...s.shape]);
  }
  return feeds;
}

/** The output names of a run's states: `<kind>.<name>` for every entry. */
export function stateOutputs(layout: StateLayout, kind: 'next_state' | 'step_states'): string[] {
  return layout.slots.map((s) => `${kind}.${s.name}`);
}

/**
 * `rows` flat states from a run's `<kind>.<name>` outputs ([rows, ...shape] each; step_states'
 * [batch, K, ...] is batch x K rows). With one entry a row is a view of the output (`views`) or a copy
 * of its own; with several, every row is joined into one new buffer, rows back to back, and returned as
 * views of it (`views`) or each in a buffer of its own.
 */
export function statesFromOutputs(
  pkg: Pick<ModelPackage, 'stateLayout'>, out: Record<string, Tensor | undefined>, kind: 'next_state' | 'step_states', rows: number, views = false,
): Float32Array[] {
  const layout = pkg.stateLayout;
  const size = layout.size;
  const data = layout.slots.map((s) => {
    const name = `${kind}.${s.name}`;
    const d = asFloat32(out[name], name);
    // The graph's output sizes are the package's, not checked at load: checked here.
    if (d.length !== rows * s.size) throw new Error(`${name} has ${d.length} values, expected ${rows} rows of [${s.shape.join(', ')}]`);
    return d;
  });
  if (layout.slots.length === 1) {
    const flat = data[0]!;
    // slice() copies, so results do not pin the whole batch buffer.
    return Array.from({ length: rows }, (_, b) => (views ? flat.subarray(b * size, (b + 1) * size) : flat.slice(b * size, (b + 1) * size)));
  }
  const join = (b: number, into: Float32Array, at: number) =>
    layout.slots.forEach((s, e) => into.set(data[e]!.subarray(b * s.size, (b + 1) * s.size), at + s.offset));
  if (!views) {
    return Array.from({ length: rows }, (_, b) => {
      const row = new Float32Array(size);
      join(b, row, 0);
      return row;
    });
  }
  const flat = new Float32Array(rows * size);
  for (let b = 0; b < rows; b++) join(b, flat, b * size);
  return Array.from({ length: rows }, (_, b) => flat.subarray(b * size, (b + 1) * size));
}

/**
 * The decode graph's state feeds for a batch (DecodeConditioning, chosen by the loader from the
 * manifest): the RMT's `memory` [batch, M, d_model] at prefill and empty ([batch, 0, d_model]) on the
 * steps, its memory being inside the cache by then; or a state-conditioned package's `state.<name>`
 * of every entry on every call. `states` are the rows' flat states (a step's: what its cache was
 * prefilled with).
 */
export function decodeStateFeeds(pkg: Pick<ModelPackage, 'stateLayout' | 'conditioning'>, states: readonly Float32Array[], prefill: boolean): Record<string, Tensor> {
  const layout = pkg.stateLayout;
  const batch = states.length;
  if (pkg.conditioning.kind === 'state') return stateFeeds(layout, states.map((state) => ({ state: flatState(pkg, state) })));
  const shape = layout.slots[0]!.shape;
  if (!prefill) return { memory: float32(new Float32Array(0), [batch, 0, ...shape.slice(1)]) };
  const memory = new Float32Array(batch * layout.size);
  states.forEach((s, b) => memory.set(flatState(pkg, s), b * layout.size));
  return { memory: float32(memory, [batch, ...shape]) };
}
