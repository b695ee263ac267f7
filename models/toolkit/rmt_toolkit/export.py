"""ONNX export of the segment and decode graphs (fp32 for CPU, fp16 for GPU).

Both graphs of one precision keep their weights in one shared external-data file
(weights.<precision>.bin): the decode graph reuses the segment graph's tensors byte for byte, so a
package holds each weight once per precision. State and logits stay float32 in every precision, so a
session's memory moves freely between CPU (fp32) and GPU (fp16) workers.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os

import numpy as np
import torch

from .arch import build_model, is_rmt
from .config import config_from_dict
from .model import RMT, DecodeGraph, SegmentGraph, WriteRowsStateGraph

OPSET = 17
SEGMENT_IO = {
    "inputs": ["input_ids", "attention_mask", "state.memory"],
    "outputs": ["next_state.memory", "logits", "token_logprobs"],
}
STATE_IO = {"inputs": SEGMENT_IO["inputs"], "outputs": ["next_state.memory"]}
DECODE_IO = {
    "inputs": ["input_ids", "attention_mask", "memory", "past_key_values"],
    "outputs": ["logits", "present_key_values"],
}


def precision_target(precision: str):
    """(device, dtype, file suffix) an export of `precision` runs on: fp16 needs CUDA (half-precision kernels)."""
    if precision == "fp16":
        if not torch.cuda.is_available():
            raise SystemExit("fp16 export needs a CUDA device (half-precision kernels)")
        return torch.device("cuda"), torch.float16, ".fp16"
    if precision == "fp32":
        return torch.device("cpu"), torch.float32, ""
    raise SystemExit(f"unknown precision {precision!r}: use fp32 or fp16")


def load_checkpoint(path: str, device="cpu") -> tuple[RMT, dict]:
    """Any architecture's checkpoint (the config's `architecture`; none = rmt)."""
    ck = torch.load(path, map_location=device)
    model = build_model(config_from_dict(ck["config"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval().to(device), ck


def _export(module, args, path, io, dynamic_axes, exporter: str):
    kw = dict(input_names=io["inputs"], output_names=io["outputs"], opset_version=OPSET, do_constant_folding=True)
    if exporter in ("auto", "torchscript"):
        try:
            try:
                torch.onnx.export(module, args, path, dynamic_axes=dynamic_axes, dynamo=False, **kw)
            except TypeError:  # torch < 2.5 has no `dynamo` argument
                torch.onnx.export(module, args, path, dynamic_axes=dynamic_axes, **kw)
            return "torchscript"
        except Exception as e:  # noqa: BLE001
            if exporter == "torchscript":
                raise
            print(f"torchscript exporter failed ({type(e).__name__}: {e}); trying dynamo", flush=True)
    from torch.export import Dim

    shapes = []
    for name in io["inputs"]:
        axes = dynamic_axes.get(name, {})
        shapes.append({ax: Dim(f"{label}", min=0) if label.endswith("length") else Dim(label)
                       for ax, label in axes.items()} or None)
    torch.onnx.export(module, args, path, dynamic_shapes=tuple(shapes), dynamo=True, external_data=False, **kw)
    return "dynamo"


def export_graphs(model: RMT, out_dir: str, precision: str, exporter: str = "auto", fused_attention: bool = False,
                  state_graph: str = "write-rows") -> dict:
    """Writes segment[.fp16].onnx, segment.state[.fp16].onnx, decode[.fp16].onnx and weights[.fp16].bin; returns their file names.

    fused_attention: the segment graphs use the fused layout and com.microsoft.MultiHeadAttention
    (model.py); onnxruntime's CPU and CUDA providers run it. The decode graph keeps masked attention
    (its KV cache needs the per-layer keys and values). Needs the TorchScript exporter (the op comes
    from a symbolic function).

    state_graph (fused packages): "write-rows" exports segment.state.onnx from fused_next_memory (the
    last block at the write rows only); "pruned" cuts the segment graph down to its next memory
    (state_graph.py; what masked packages always do).

    Architectures other than the RMT export their state-conditioned graphs (state_export.py)."""
    if not is_rmt(model):
        if fused_attention:
            raise SystemExit("fused attention is an RMT export option")
        from .state_export import export_state_graphs

        return export_state_graphs(model, out_dir, precision, exporter)
    cfg = model.cfg
    dev, dtype, suffix = precision_target(precision)
    m = copy.deepcopy(model).to(dev, dtype).eval()
    if fused_attention and exporter == "dynamo":
        raise SystemExit("fused attention needs the torchscript exporter")
    B, T, M, D = 2, cfg.segment_length, cfg.memory_tokens, cfg.d_model
    ids = torch.randint(2, cfg.vocab_size, (B, T), device=dev)
    mask = torch.ones(B, T, dtype=torch.long, device=dev)
    mask[1, T // 2:] = 0
    mem = m.initial_memory(B).to(dev)
    seg_path = os.path.join(out_dir, f"segment{suffix}.onnx")
    dec_path = os.path.join(out_dir, f"decode{suffix}.onnx")
    with torch.no_grad():
        m.fused_attention = fused_attention
        used = _export(SegmentGraph(m), (ids, mask, mem), seg_path, SEGMENT_IO, {
            "input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "state.memory": {0: "batch"}, "next_state.memory": {0: "batch"}, "logits": {0: "batch"},
            "token_logprobs": {0: "batch", 1: "tokens"}}, "torchscript" if fused_attention else exporter)
        m.fused_attention = False
        P, N = 5, 3
        past = torch.zeros(cfg.n_layers, 2, B, cfg.n_heads, P, cfg.head_dim, device=dev, dtype=dtype)
        dmask = torch.ones(B, P + M + N, dtype=torch.long, device=dev)
        _export(DecodeGraph(m), (ids[:, :N], dmask, mem, past), dec_path, DECODE_IO, {
            "input_ids": {0: "batch", 1: "new_length"}, "attention_mask": {0: "batch", 1: "total_length"},
            "memory": {0: "batch", 1: "memory_length"}, "past_key_values": {2: "batch", 4: "past_length"},
            "logits": {0: "batch"}, "present_key_values": {2: "batch", 4: "total_length"}}, used)
    weights = f"weights{suffix}.bin"
    state_path = os.path.join(out_dir, f"segment.state{suffix}.onnx")
    write_rows = fused_attention and state_graph == "write-rows"
    if write_rows:
        with torch.no_grad():
            _export(WriteRowsStateGraph(m), (ids, mask, mem), state_path, STATE_IO, {
                "input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "state.memory": {0: "batch"}, "next_state.memory": {0: "batch"}}, "torchscript")
    share_weights([seg_path, dec_path] + ([state_path] if write_rows else []), os.path.join(out_dir, weights))
    if not write_rows:
        from .state_graph import prune_to_state

        prune_to_state(seg_path, state_path)
    if fused_attention and precision == "fp32":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:  # the CPU machines: test/fused-attention.test.ts checks
            print("fused attention check skipped (no onnxruntime for Python here)", flush=True)
        else:
            print(f"fused attention check (onnxruntime CPU vs masked PyTorch): {json.dumps(fused_check(model, seg_path, state_path))}", flush=True)
    return {"segment": os.path.basename(seg_path), "decode": os.path.basename(dec_path),
            "segment_state": os.path.basename(state_path), "weights": weights, "exporter": used}


def fused_check(model: RMT, seg_path: str, state_path: str, tol: float = 2e-4) -> dict:
    """The fused segment graph (onnxruntime, CPU, fp32) against the masked-attention PyTorch model on a
    batch with padded rows; exits non-zero above `tol`."""
    import onnxruntime as ort

    cfg = model.cfg
    m = copy.deepcopy(model).float().eval()
    m.fused_attention = False
    g = torch.Generator().manual_seed(1)
    B, T = 4, cfg.segment_length
    ids = torch.randint(2, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate([T, T // 2, 1, T - 1]):
        mask[b, n:] = 0
    with torch.no_grad():
        mem = m.initial_memory(B) + 0.1 * torch.randn(B, cfg.memory_tokens, cfg.d_model, generator=g)
        ref = [t.numpy() for t in m.segment(ids, mask, mem)]
    sess = ort.InferenceSession(seg_path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "state.memory": mem.numpy()})
    report = {name: float(np.abs(r - o).max()) for name, r, o in zip(SEGMENT_IO["outputs"], ref, got)}
    state = ort.InferenceSession(state_path, providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "state.memory": mem.numpy()})[0]
    report["segment_state"] = float(np.abs(ref[0] - state).max())
    ops = {n.op_type for n in __import__("onnx").load(seg_path, load_external_data=False).graph.node}
    report["multi_head_attention_op"] = "MultiHeadAttention" in ops
    if max(v for k, v in report.items() if k != "multi_head_attention_op") > tol or not report["multi_head_attention_op"]:
        raise SystemExit(f"fused attention graph differs from the masked model: {report}")
    return report


def share_weights(graph_paths: list[str], weights_path: str, min_bytes: int = 1024) -> None:
    """Moves every large initializer into one external-data file, each distinct tensor stored once."""
    import onnx
    from onnx import numpy_helper

    offsets: dict[str, tuple[int, int]] = {}
    with open(weights_path, "wb") as wf:
        for gp in graph_paths:
            model = onnx.load(gp, load_external_data=True)
            for init in model.graph.initializer:
                arr = numpy_helper.to_array(init)
                raw = np.ascontiguousarray(arr).tobytes()
                if len(raw) < min_bytes:
                    continue
                key = hashlib.sha256(raw + str(arr.dtype).encode() + str(arr.shape).encode()).hexdigest()
                if key not in offsets:
                    pad = (-wf.tell()) % 64  # aligned, so the runtime may map tensors in place
                    wf.write(b"\0" * pad)
                    offsets[key] = (wf.tell(), len(raw))
                    wf.write(raw)
                off, length = offsets[key]
                init.ClearField("raw_data")
                for f in ("float_data", "int32_data", "int64_data", "double_data"):
                    init.ClearField(f)
                init.data_location = onnx.TensorProto.EXTERNAL
                del init.external_data[:]
                for k, v in (("location", os.path.basename(weights_path)), ("offset", str(off)), ("length", str(length))):
                    e = init.external_data.add()
                    e.key, e.value = k, v
            onnx.save(model, gp)
