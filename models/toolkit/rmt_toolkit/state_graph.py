"""The segment_state graph: the segment graph cut down to its next_state.memory output.

onnxruntime executes every node of a graph whatever outputs a run fetches, and the segment graph
projects every position onto the vocabulary for token_logprobs (for GPT-2-small at 512 tokens that
is about 40 % more matrix work and a [batch, tokens, vocab] tensor). A worker that only ingests text
needs the next memory alone, so packages also ship this pruned graph. It shares the segment graph's
external weights file (initializers keep their offsets), so it adds only a few kilobytes.
"""
from __future__ import annotations

import json
import os

import numpy as np

STATE_OUTPUT = "next_state.memory"


def _subgraph_inputs(node) -> set[str]:
    """Names a node's subgraph attributes (If/Loop bodies) read from the outer scope."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in list(attr.g.node and [attr.g] or []) + list(attr.graphs):
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_inputs(n)
    return names


def prune_to_state(segment_path: str, out_path: str, outputs=(STATE_OUTPUT,)) -> dict:
    """Keeps the nodes that `outputs` (the next_state.* names) need; state-conditioned packages pass
    one per state entry."""
    import onnx

    m = onnx.load(segment_path, load_external_data=False)
    g = m.graph
    needed = set(outputs)
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed |= _subgraph_inputs(node)
    keep.reverse()
    kept_ids = {id(n) for n in keep}
    before = len(g.node)
    for n in [n for n in g.node if id(n) not in kept_ids]:
        g.node.remove(n)
    for out in [o for o in g.output if o.name not in outputs]:
        g.output.remove(out)
    for init in [i for i in g.initializer if i.name not in needed]:
        g.initializer.remove(init)
    for vi in [v for v in g.value_info if v.name not in needed]:
        g.value_info.remove(vi)
    # Graph inputs stay as they are (the contract's), used or not.
    onnx.save(m, out_path)
    return {"nodes_before": before, "nodes_after": len(g.node)}


def add_state_graph(package_dir: str, precision: str, verify: bool = True) -> dict:
    """Writes segment.state[.fp16].onnx beside segment[.fp16].onnx and lists it in model.json."""
    mj = os.path.join(package_dir, "model.json")
    meta = json.load(open(mj))
    graphs = meta["graphs"][precision]
    suffix = ".fp16" if precision == "fp16" else ""
    name = f"segment.state{suffix}.onnx"
    report = prune_to_state(os.path.join(package_dir, graphs["segment"]), os.path.join(package_dir, name))
    if verify:
        report["max_abs_diff_vs_segment"] = compare(package_dir, graphs["segment"], name, meta)
    graphs["segment_state"] = name
    with open(mj, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return report


def compare(package_dir: str, full: str, pruned: str, meta: dict, batch: int = 3) -> float:
    """Next memory of both graphs on the same padded batch (onnxruntime, CPU)."""
    import onnxruntime as ort

    T, M = meta["segment_length"], meta["memory_tokens"]
    D = meta["state"][0]["shape"][1]
    rng = np.random.default_rng(0)
    ids = rng.integers(2, meta["vocab_size"], (batch, T), dtype=np.int64)
    mask = np.ones((batch, T), dtype=np.int64)
    mask[1, T // 3:] = 0
    mem = rng.standard_normal((batch, M, D)).astype(np.float32) * 0.02
    feeds = {"input_ids": ids, "attention_mask": mask, "state.memory": mem}
    outs = []
    for f in (full, pruned):
        s = ort.InferenceSession(os.path.join(package_dir, f), providers=["CPUExecutionProvider"])
        outs.append(s.run([STATE_OUTPUT], feeds)[0])
    d = float(np.abs(outs[0] - outs[1]).max())
    if d > 1e-5:
        raise SystemExit(f"{pruned}: next memory differs from {full} by {d}")
    return d
