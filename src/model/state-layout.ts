// A session's state as the service keeps it: ONE flat float32 array, the package's declared state
// entries concatenated in manifest order. Redis, snapshots, fork and the engine's state ring then move
// byte arrays of one constant size whatever the architecture; only the graph feeds (the engine's
// state-feeds.ts) see the entries, as slices of it. No onnxruntime here (the API reads it too).

/** Where one state entry lies in the flat state, in float32 elements. */
export interface StateSlot {
  name: string;
  /** The entry's shape without the batch axis (model.json `state[].shape`). */
  shape: number[];
  offset: number;
  size: number;
}

export interface StateLayout {
  /** In manifest order, back to back from offset 0. */
  slots: StateSlot[];
  /** Floats in the flat state: the slots' sizes added up. */
  size: number;
}

export function stateLayout(entries: readonly { name: string; shape: readonly number[] }[]): StateLayout {
  let offset = 0;
  const slots = entries.map((e) => {
    const size = e.shape.reduce((a, b) => a * b, 1);
    const slot = { name: e.name, shape: [...e.shape], offset, size };
    offset += size;
    return slot;
  });
  return { slots, size: offset };
}

/**
 * The shape the service reports and checks for the flat state (sessions, snapshots): the entry's own
 * shape when there is one (the RMT: `memory` [M, d_model], as before), else [total floats].
 */
export function flatShape(layout: StateLayout): number[] {
  return layout.slots.length === 1 ? [...layout.slots[0]!.shape] : [layout.size];
}

/** The entries' values (keyed by name) as one flat state. */
export function flattenState(layout: StateLayout, values: Readonly<Record<string, Float32Array>>): Float32Array {
  const out = new Float32Array(layout.size);
  for (const s of layout.slots) out.set(values[s.name]!, s.offset);
  return out;
}

/** One entry of a flat state, as a view. */
export function stateEntry(layout: StateLayout, flat: Float32Array, name: string): Float32Array {
  const s = layout.slots.find((x) => x.name === name);
  if (!s) throw new Error(`no state entry '${name}' (entries: ${layout.slots.map((x) => x.name).join(', ')})`);
  return flat.subarray(s.offset, s.offset + s.size);
}
