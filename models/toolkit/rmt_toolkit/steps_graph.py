"""The segment_state_steps graph: K segments of one session per onnxruntime run.

The engine runs a session's segments one after another, each run's memory feeding the next. Between
two dependent runs the engine thread turns the results around (replies, feeds, planning: about 0.2 ms
on the H200, BENCHMARKS.md run 14) while the device waits. This graph is the segment_state graph
unrolled K times, the memory of step k feeding step k + 1 inside the graph, so that turnaround is paid
once per K segments. The copies share the initializers (same names, so the same offsets in the
package's external weights file): the graph adds only its nodes.

  in   input_ids          int64    [batch, K, tokens]   segment k of row b at [b, k]
  in   attention_mask     int64    [batch, K, tokens]
  in   state.memory       float32  [batch, M, d_model]
  out  next_state.memory  float32  [batch, M, d_model]  after the K-th segment
  out  step_states.memory float32  [batch, K, M, d_model] after each segment
"""
from __future__ import annotations

import json
import os

import numpy as np

from .state_graph import STATE_OUTPUT

STATE_INPUT = "state.memory"
STEPS_OUTPUT = "step_states.memory"


def unroll(state_path: str, out_path: str, steps: int) -> dict:
    import onnx
    from onnx import TensorProto, helper

    if steps < 2:
        raise SystemExit(f"--steps must be at least 2, found {steps}")
    m = onnx.load(state_path, load_external_data=False)
    g = m.graph
    inputs = {i.name: i for i in g.input}
    if set(inputs) != {"input_ids", "attention_mask", STATE_INPUT} or [o.name for o in g.output] != [STATE_OUTPUT]:
        raise SystemExit(f"{state_path}: expected a segment_state graph (input_ids, attention_mask, {STATE_INPUT} -> {STATE_OUTPUT}), "
                         f"found {sorted(inputs)} -> {[o.name for o in g.output]}")
    if any(a.g.node or a.graphs for n in g.node for a in n.attribute):
        raise SystemExit(f"{state_path}: nodes with subgraphs (If/Loop) are not unrolled by this tool")
    shared = {i.name for i in g.initializer}

    def dims(vi) -> list:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    batch, tokens = dims(inputs["input_ids"])
    _, mem_tokens, d_model = dims(inputs[STATE_INPUT])
    nodes = []
    # Step k's ids and mask: a Gather on axis 1 (a scalar index drops the axis: [batch, tokens]).
    for k in range(steps):
        nodes.append(helper.make_node("Constant", [], [f"step{k}/index"], name=f"step{k}/index",
                                      value=helper.make_tensor(f"step{k}/index_value", TensorProto.INT64, [], [k])))
        for name in ("input_ids", "attention_mask"):
            nodes.append(helper.make_node("Gather", [name, f"step{k}/index"], [f"step{k}/{name}"], name=f"step{k}/gather_{name}", axis=1))
    for k in range(steps):
        def rename(t: str) -> str:
            if t == "" or t in shared:
                return t
            if t in ("input_ids", "attention_mask"):
                return f"step{k}/{t}"
            if t == STATE_INPUT:
                return STATE_INPUT if k == 0 else f"step{k - 1}/{STATE_OUTPUT}"
            return f"step{k}/{t}"

        for n in g.node:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = f"step{k}/{n.name}"
            c.input[:] = [rename(t) for t in n.input]
            c.output[:] = [rename(t) for t in n.output]
            nodes.append(c)
    nodes.append(helper.make_node("Constant", [], ["steps_axis"], name="steps_axis",
                                  value=helper.make_tensor("steps_axis_value", TensorProto.INT64, [1], [1])))
    for k in range(steps):
        nodes.append(helper.make_node("Unsqueeze", [f"step{k}/{STATE_OUTPUT}", "steps_axis"], [f"step{k}/state_1"], name=f"step{k}/unsqueeze"))
    nodes.append(helper.make_node("Concat", [f"step{k}/state_1" for k in range(steps)], [STEPS_OUTPUT], name="step_states", axis=1))
    nodes.append(helper.make_node("Identity", [f"step{steps - 1}/{STATE_OUTPUT}"], [STATE_OUTPUT], name="next_state"))

    graph = helper.make_graph(
        nodes, f"{g.name}_x{steps}",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, steps, tokens]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, steps, tokens]),
         helper.make_tensor_value_info(STATE_INPUT, TensorProto.FLOAT, [batch, mem_tokens, d_model])],
        [helper.make_tensor_value_info(STATE_OUTPUT, TensorProto.FLOAT, [batch, mem_tokens, d_model]),
         helper.make_tensor_value_info(STEPS_OUTPUT, TensorProto.FLOAT, [batch, steps, mem_tokens, d_model])],
        initializer=list(g.initializer))
    out = helper.make_model(graph, opset_imports=list(m.opset_import), producer_name="rmt_toolkit steps")
    out.ir_version = m.ir_version
    # Initializers keep their external-data entries (file and offset): the package's weights file as is.
    onnx.save(out, out_path)
    return {"steps": steps, "nodes": len(nodes), "bytes": os.path.getsize(out_path)}


def add_steps_graph(package_dir: str, precision: str, steps: int, verify: bool = True) -> dict:
    """Writes segment.state.x<K>[.fp16].onnx beside segment.state[.fp16].onnx and lists it in model.json."""
    mj = os.path.join(package_dir, "model.json")
    meta = json.load(open(mj))
    graphs = meta["graphs"][precision]
    if "segment_state" not in graphs:
        raise SystemExit(f"{package_dir}: graphs.{precision} has no segment_state graph (python -m rmt_toolkit state-graph first)")
    suffix = ".fp16" if precision == "fp16" else ""
    name = f"segment.state.x{steps}{suffix}.onnx"
    report = unroll(os.path.join(package_dir, graphs["segment_state"]), os.path.join(package_dir, name), steps)
    if verify:
        report["max_abs_diff_vs_single_steps"] = compare(package_dir, graphs["segment_state"], name, meta, steps)
    graphs["segment_state_steps"] = name
    with open(mj, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return report


def compare(package_dir: str, single: str, unrolled: str, meta: dict, steps: int, batch: int = 3):
    """Each step's memory from the unrolled graph against K runs of the single-step graph (onnxruntime, CPU)."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("not verified here: no onnxruntime for Python (the engine's tests compare the graphs: test/segment-steps.test.ts)")
        return None
    T, M = meta["segment_length"], meta["memory_tokens"]
    D = meta["state"][0]["shape"][1]
    rng = np.random.default_rng(0)
    ids = rng.integers(2, meta["vocab_size"], (batch, steps, T), dtype=np.int64)
    mask = np.ones((batch, steps, T), dtype=np.int64)
    mask[1, steps - 1, T // 3:] = 0
    mem = rng.standard_normal((batch, M, D)).astype(np.float32) * 0.02
    one = ort.InferenceSession(os.path.join(package_dir, single), providers=["CPUExecutionProvider"])
    many = ort.InferenceSession(os.path.join(package_dir, unrolled), providers=["CPUExecutionProvider"])
    got_last, got_steps = many.run([STATE_OUTPUT, STEPS_OUTPUT], {"input_ids": ids, "attention_mask": mask, STATE_INPUT: mem})
    state, worst = mem, 0.0
    for k in range(steps):
        state = one.run([STATE_OUTPUT], {"input_ids": ids[:, k], "attention_mask": mask[:, k], STATE_INPUT: state})[0]
        worst = max(worst, float(np.abs(got_steps[:, k] - state).max()))
    worst = max(worst, float(np.abs(got_last - state).max()))
    # fp16 graphs: onnxruntime's CPU provider optimises the unrolled graph's casts differently (a few
    # half-float units; fp16 and fp32 graphs differ by up to 0.05, test/engine-device.test.ts).
    tolerance = 0.05 if ".fp16." in unrolled else 1e-4
    if worst > tolerance:
        raise SystemExit(f"{unrolled}: step memories differ from {single} run step by step by {worst} (> {tolerance})")
    return worst
