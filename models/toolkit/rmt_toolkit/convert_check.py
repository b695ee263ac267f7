"""Checks `convert` against Hugging Face's own GPT-2 run the way the authors' MemoryCell runs it.

Builds a small random GPT2LMHeadModel (transformers), saves it in the authors' state-dict layout
(`memory_cell.memory`, `memory_cell.model.*`), converts it, and compares, over several segments with
the memory carried: the HF model fed inputs_embeds = [memory; wte(ids); memory] (positions 0..n+2M-1,
as MemoryCell.process_input does), taking logits at the token positions and the new memory from
hidden_states[-1] at the write positions, against the toolkit's RMT.segment on the converted checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

from .convert import convert
from .export import load_checkpoint


@torch.no_grad()
def check(memory_tokens: int = 4, segment_length: int = 24, segments: int = 4, tol: float = 1e-4) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_cfg = GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=2 * memory_tokens + segment_length,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0, pad_token_id=1)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    memory = torch.randn(memory_tokens, hf_cfg.n_embd) * hf.transformer.wte.weight.std()
    sd = {"memory_cell.memory": memory, **{f"memory_cell.model.{k}": v for k, v in hf.state_dict().items()}}
    with tempfile.TemporaryDirectory() as tmp:
        ck_in, cfg_json, ck_out = (os.path.join(tmp, f) for f in ("pytorch_model.bin", "config.json", "model.pt"))
        torch.save(sd, ck_in)
        json.dump(hf_cfg.to_dict(), open(cfg_json, "w"))
        convert(ck_in, cfg_json, memory_tokens, segment_length, ck_out)
        ours, _ = load_checkpoint(ck_out)
    M = memory_tokens
    ids = torch.randint(0, hf_cfg.vocab_size, (2, segments * segment_length))
    mem_hf = memory.unsqueeze(0).expand(2, -1, -1)
    mem_ours = ours.initial_memory(2)
    worst = {"state": 0.0, "logits": 0.0}
    for s in range(segments):
        seg = ids[:, s * segment_length:(s + 1) * segment_length]
        emb = torch.cat([mem_hf, hf.transformer.wte(seg), mem_hf], dim=1)
        out = hf(inputs_embeds=emb, output_hidden_states=True)
        hf_logits, mem_hf = out.logits[:, M:-M], out.hidden_states[-1][:, -M:]
        h_tok, h_write = ours.encode_segment(seg, torch.ones_like(seg), mem_ours)
        our_logits, mem_ours = ours.lm_logits(h_tok), h_write
        worst["state"] = max(worst["state"], (mem_ours - mem_hf).abs().max().item())
        worst["logits"] = max(worst["logits"], (our_logits - hf_logits).abs().max().item())
    report = {"segments": segments, "max_abs_diff": worst, "tolerance": tol}
    if max(worst.values()) > tol:
        raise SystemExit(f"convert-check FAILED: {report}")
    return report
