"""ONNX export and package writing for the state-conditioned architectures (everything but the RMT).

Graph IO follows models/README.md ("State-conditioned packages"): every state entry is an input
`state.<name>` and an output `next_state.<name>` of segment.onnx, and an input of decode.onnx on
every call. State and logits stay float32 in every precision (fp16 graphs cast inside), as for the
RMT; the same share_weights puts each weight once in weights[.fp16].bin for all graphs.
"""
from __future__ import annotations

import copy
import os
import shutil

import numpy as np
import torch
import torch.nn as nn

from .export import _export, precision_target, share_weights
from .package import FORMAT, write_manifest


class SegmentStateGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.names = model, [n for n, _ in model.state_spec()]

    def forward(self, input_ids, attention_mask, *state):
        nxt, logits, lp = self.model.segment(input_ids, attention_mask, dict(zip(self.names, state)))
        return tuple(nxt[n] for n in self.names) + (logits, lp)


class DecodeStateGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.names = model, [n for n, _ in model.state_spec()]

    def forward(self, input_ids, attention_mask, *args):
        state, past = dict(zip(self.names, args[:-1])), args[-1]
        return self.model.decode(input_ids, attention_mask, state, past)


def io_names(model) -> tuple[dict, dict]:
    names = [n for n, _ in model.state_spec()]
    seg = {"inputs": ["input_ids", "attention_mask"] + [f"state.{n}" for n in names],
           "outputs": [f"next_state.{n}" for n in names] + ["logits", "token_logprobs"]}
    dec = {"inputs": ["input_ids", "attention_mask"] + [f"state.{n}" for n in names] + ["past_key_values"],
           "outputs": ["logits", "present_key_values"]}
    return seg, dec


def example_state(model, batch: int, device) -> dict:
    """A plausible mid-document state for tracing (values do not shape the graph)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for n, s in model.state_spec():
        t = torch.randn((batch,) + tuple(s), generator=g)
        out[n] = (torch.ones((batch,) + tuple(s)) if n == "mem_mask" else t * 0.1).to(device)
    return out


def _check_io(path: str, io: dict) -> None:
    import onnx

    g = onnx.load(path, load_external_data=False).graph
    got = ([i.name for i in g.input], [o.name for o in g.output])
    if got != (io["inputs"], io["outputs"]):
        raise SystemExit(f"{path}: graph IO {got} differs from the contract {(io['inputs'], io['outputs'])} "
                         "(an unused input is dropped by the exporter)")


def export_state_graphs(model, out_dir: str, precision: str, exporter: str = "auto") -> dict:
    dev, dtype, suffix = precision_target(precision)
    m = copy.deepcopy(model).to(dev, dtype).eval()
    cfg = m.cfg
    seg_io, dec_io = io_names(m)
    B, T = 2, cfg.segment_length
    ids = torch.randint(2, cfg.vocab_size, (B, T), device=dev)
    mask = torch.ones(B, T, dtype=torch.long, device=dev)
    mask[1, T // 2:] = 0
    state = example_state(m, B, dev)
    batch = {0: "batch"}
    seg_axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "logits": batch, "token_logprobs": {0: "batch", 1: "tokens"}}
    for n in seg_io["inputs"][2:] + seg_io["outputs"][:-2]:
        seg_axes[n] = batch
    seg_path = os.path.join(out_dir, f"segment{suffix}.onnx")
    dec_path = os.path.join(out_dir, f"decode{suffix}.onnx")
    with torch.no_grad():
        used = _export(SegmentStateGraph(m), (ids, mask, *state.values()), seg_path, seg_io, seg_axes, exporter)
        P, N = 5, 3
        past = torch.randn(cfg.n_layers, 2, B, cfg.n_heads, P, cfg.head_dim, device=dev, dtype=dtype)
        dec_axes = {"input_ids": {0: "batch", 1: "new_length"}, "attention_mask": {0: "batch", 1: "total_length"},
                    "past_key_values": {2: "batch", 4: "past_length"}, "logits": batch,
                    "present_key_values": {2: "batch", 4: "total_length"}}
        for n in dec_io["inputs"][2:-1]:
            dec_axes[n] = batch
        _export(DecodeStateGraph(m), (ids[:, :N], torch.ones(B, P + N, dtype=torch.long, device=dev), *state.values(), past),
                dec_path, dec_io, dec_axes, used)
    _check_io(seg_path, seg_io)
    _check_io(dec_path, dec_io)
    weights = f"weights{suffix}.bin"
    share_weights([seg_path, dec_path], os.path.join(out_dir, weights))
    from .state_graph import prune_to_state

    state_path = os.path.join(out_dir, f"segment.state{suffix}.onnx")
    prune_to_state(seg_path, state_path, outputs=tuple(seg_io["outputs"][:-2]))
    return {"segment": os.path.basename(seg_path), "decode": os.path.basename(dec_path),
            "segment_state": os.path.basename(state_path), "weights": weights, "exporter": used}


def write_state_package(model, ck: dict, out_dir: str, name: str, description: str, tokenizer: str | None,
                        graphs: dict, extra: dict | None = None) -> dict:
    """model.json (format rmt-serve/model@1, state-conditioned decode), one init file per state entry,
    the tokenizer."""
    cfg = model.cfg
    os.makedirs(out_dir, exist_ok=True)
    init = model.initial_state(1)
    entries = []
    for n, shape in model.state_spec():
        fname = f"state.{n}.f32"
        init[n][0].detach().float().cpu().numpy().astype("<f4").tofile(os.path.join(out_dir, fname))
        entries.append({"name": n, "shape": list(shape), "dtype": "float32", "init": fname})
    if tokenizer:
        shutil.copy(tokenizer, os.path.join(out_dir, "tokenizer.json"))
        cfg_json = os.path.join(os.path.dirname(tokenizer), "tokenizer_config.json")
        if os.path.exists(cfg_json):
            shutil.copy(cfg_json, os.path.join(out_dir, "tokenizer_config.json"))
    meta = {
        "format": FORMAT,
        "name": name,
        "description": description,
        "architecture": cfg.architecture,
        "segment_length": cfg.segment_length,
        "memory_tokens": cfg.memory_tokens,
        "vocab_size": cfg.vocab_size,
        "tokenizer": "tokenizer.json",
        "special_tokens": {"eos": cfg.eos_id, "pad": cfg.pad_id},
        "state": entries,
        "graphs": graphs,
        "decode": {"conditioning": "state",
                   "past_key_values": {"layout": ["layers", "kv", "batch", "heads", "past_length", "head_dim"],
                                       "layers": cfg.n_layers, "heads": cfg.n_heads, "head_dim": cfg.head_dim}},
        "config": cfg.to_dict(),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "training": ck.get("training", {}),
    }
    if ck.get("task"):  # trained on the recall task (train's curriculum)
        meta["task"] = ck["task"]
    return write_manifest(out_dir, meta, extra)


def state_arrays(state: dict) -> dict:
    return {k: np.ascontiguousarray(v.detach().float().cpu().numpy()) for k, v in state.items()}


def random_state_package(a):
    """A random-weights package of a state-conditioned architecture (tiny: test fixtures; brown: the
    configs/<architecture>.json size), with golden.json written by verify on random token ids."""
    from .arch import build_model, parameter_count
    from .config import load_config, tiny_config
    from .export import export_graphs
    from .package import write_package
    from .verify_state import verify_state

    torch.manual_seed(a.seed)
    if a.size == "gpt2-small" or a.attention != "masked":
        raise SystemExit(f"{a.architecture}: use --size tiny or --size brown (masked attention only)")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = tiny_config(a.architecture) if a.size == "tiny" else load_config(os.path.join(here, "configs", f"{a.architecture}.json"))
    model = build_model(cfg).eval()
    if cfg.architecture == "armt":  # W_v starts at zero (nothing stored): give the fixture's matrices content
        with torch.no_grad():
            for blk in model.assoc:
                blk.w_v.weight.normal_(0.0, 0.2)
    os.makedirs(a.out, exist_ok=True)
    ck = os.path.join(a.out, "model.pt")
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict(), "training": {"note": "random init"}}, ck)
    graphs = {p: {k: v for k, v in export_graphs(model, a.out, p, a.exporter).items() if k != "exporter"}
              for p in a.precisions.split(",")}
    desc = f"{a.architecture}, {a.size} size ({parameter_count(model):,} parameters), random weights: a test fixture"
    meta = write_package(ck, a.out, a.name if a.name != "rmt-gpt2-small-random" else f"{a.architecture}-{a.size}-random",
                         desc, a.tokenizer, graphs)
    rng = __import__("numpy").random.default_rng(a.seed)
    doc = rng.integers(2, cfg.vocab_size, 14 * cfg.segment_length).tolist()
    verify_state(model, a.out, doc, meta, allow_missing_ort=True)
    os.remove(ck)
    print(f"wrote {a.out}")
