"""Writes a model package's model.json, state init file and tokenizer (format rmt-serve/model@1)."""
from __future__ import annotations

import json
import os
import shutil

from .export import load_checkpoint

FORMAT = "rmt-serve/model@1"


def write_package(ckpt: str, out_dir: str, name: str, description: str, tokenizer: str | None,
                  graphs: dict, extra: dict | None = None) -> dict:
    model, ck = load_checkpoint(ckpt)
    from .arch import is_rmt

    if not is_rmt(model):
        from .state_export import write_state_package

        return write_state_package(model, ck, out_dir, name, description, tokenizer, graphs, extra)
    cfg = model.cfg
    os.makedirs(out_dir, exist_ok=True)
    init_file = "state.memory.f32"
    model.initial_memory(1)[0].detach().numpy().astype("<f4").tofile(os.path.join(out_dir, init_file))
    if tokenizer:
        shutil.copy(tokenizer, os.path.join(out_dir, "tokenizer.json"))
        cfg_json = os.path.join(os.path.dirname(tokenizer), "tokenizer_config.json")
        if os.path.exists(cfg_json):
            shutil.copy(cfg_json, os.path.join(out_dir, "tokenizer_config.json"))
    meta = {
        "format": FORMAT,
        "name": name,
        "description": description,
        "architecture": "rmt",
        "segment_length": cfg.segment_length,
        "memory_tokens": cfg.memory_tokens,
        "vocab_size": cfg.vocab_size,
        "tokenizer": "tokenizer.json",
        "special_tokens": {"eos": cfg.eos_id, "pad": cfg.pad_id},
        "state": [{"name": "memory", "shape": [cfg.memory_tokens, cfg.d_model], "dtype": "float32", "init": init_file}],
        "graphs": graphs,
        "decode": {"past_key_values": {"layout": ["layers", "kv", "batch", "heads", "past_length", "head_dim"],
                                       "layers": cfg.n_layers, "heads": cfg.n_heads, "head_dim": cfg.head_dim}},
        "config": cfg.to_dict(),
        "training": ck.get("training", {}),
    }
    if ck.get("task"):
        meta["task"] = ck["task"]
    return write_manifest(out_dir, meta, extra)


def write_manifest(out_dir: str, meta: dict, extra: dict | None = None) -> dict:
    """Writes model.json (meta updated with extra), keeping the measured tables of an earlier `evaluate`."""
    if extra:
        meta.update(extra)
    path = os.path.join(out_dir, "model.json")
    if os.path.exists(path) and "eval" not in meta:
        old = json.load(open(path))
        if "eval" in old:
            meta["eval"] = old["eval"]
    with open(path, "w") as fh:
        json.dump(meta, fh, indent=2)
    return meta

