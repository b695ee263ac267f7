"""Reference: the RMT authors' way of running the same model, for comparison with the service.

booydar/recurrent-memory-transformer's RecurrentWrapper loops over segments in PyTorch eager mode;
its MemoryCell feeds a Hugging Face GPT2LMHeadModel inputs_embeds = [memory; wte(ids); memory] and
takes the next memory from the last hidden state at the write positions. This script builds that
GPT2LMHeadModel from a toolkit checkpoint (the same weights the ONNX graphs hold; parameter names
mirror GPT-2, see models/toolkit/rmt_toolkit/model.py), in fp16 on CUDA, with transformers' default
attention implementation, and times N documents of SEGMENTS full segments each:
  one at a time   the N documents one after the other (batch 1)
  batched         the N documents as one batch (the recurrence stays sequential over segments)
Two loops per mode: `authors` is the MemoryCell call as written (the LM head projects every
position, as GPT2LMHeadModel.forward does); `lean` calls the GPT2Model body only (no vocabulary
projection), which is what the service's ingest graph computes.

  PYTHONPATH=models/toolkit python3 bench/reference-pytorch.py --ckpt DIR/model.pt --docs 64 --segments 8

Prints one line per measurement and writes --out JSON. Tokens/s = N × SEGMENTS × segment_length / wall.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def build_hf(ckpt: str, device: str, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    ck = torch.load(ckpt, map_location="cpu")
    c = ck["config"]
    M, S = c["memory_tokens"], c["segment_length"]
    cfg = GPT2Config(vocab_size=c["vocab_size"], n_embd=c["d_model"], n_layer=c["n_layers"], n_head=c["n_heads"],
                     n_inner=c["d_ff"], n_positions=c["n_positions"], layer_norm_epsilon=c["layer_norm_eps"],
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(cfg)
    sd = {}
    for k, v in ck["state_dict"].items():
        if k == "memory":
            continue
        sd[f"transformer.{k}"] = v
    sd["lm_head.weight"] = ck["state_dict"]["wte.weight"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    # GPT-2's attention bias buffers are not parameters; anything else missing is a mapping bug.
    missing = [m for m in missing if not m.endswith(("attn.bias", "attn.masked_bias"))]
    if missing or unexpected:
        raise SystemExit(f"weight mapping failed: missing {missing}, unexpected {unexpected}")
    memory = ck["state_dict"]["memory"]
    return hf.to(device, dtype).eval(), memory.to(device, dtype), M, S, c["vocab_size"]


@torch.no_grad()
def run_docs(hf, memory, M, ids: torch.Tensor, segments: int, S: int, lean: bool) -> torch.Tensor:
    """ids [B, segments*S]; returns the final memory [B, M, D]. Same loop as RecurrentWrapper.forward."""
    B = ids.shape[0]
    mem = memory.unsqueeze(0).expand(B, -1, -1)
    wte = hf.transformer.wte
    for s in range(segments):
        seg = ids[:, s * S:(s + 1) * S]
        emb = torch.cat([mem, wte(seg), mem], dim=1)
        if lean:
            h = hf.transformer(inputs_embeds=emb).last_hidden_state
        else:
            out = hf(inputs_embeds=emb, output_hidden_states=True)
            h = out.hidden_states[-1]
        mem = h[:, -M:]
    return mem


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up (cuBLAS handles, allocator)
    torch.cuda.synchronize()
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best.append(time.perf_counter() - t0)
    return sorted(best)[len(best) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--docs", default="1,8,64,256")
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--single-docs", type=int, default=64, help="documents for the one-at-a-time loop (time scales linearly)")
    p.add_argument("--out")
    a = p.parse_args()
    dev, dtype = "cuda", torch.float16
    hf, memory, M, S, V = build_hf(a.ckpt, dev, dtype)
    import transformers

    impl = getattr(hf.config, "_attn_implementation", "?")
    print(f"reference: GPT2LMHeadModel fp16 on {torch.cuda.get_device_name()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, attention {impl}; M={M}, S={S}, {a.segments} segments per document", flush=True)
    g = torch.Generator().manual_seed(0)
    # Same weights, same computation: the toolkit's RMT (what the ONNX graphs were exported from)
    # and this GPT2LMHeadModel must carry the same memory over two segments.
    from rmt_toolkit.export import load_checkpoint

    ours, _ = load_checkpoint(a.ckpt, dev)
    ours = ours.to(dtype)
    chk = torch.randint(2, min(V, 4096), (2, 2 * S), generator=g).to(dev)
    with torch.no_grad():
        m_ours = ours.initial_memory(2).to(dev)
        for s in range(2):
            seg = chk[:, s * S:(s + 1) * S]
            _, m_ours = ours.encode_segment(seg, torch.ones_like(seg), m_ours)
        m_ref = run_docs(hf, memory, M, chk, 2, S, lean=False)
    parity = (m_ours.float() - m_ref.float()).abs().max().item()
    print(f"parity with the toolkit model after 2 segments (fp16): max abs diff {parity:.2e}", flush=True)
    del ours
    results = []
    for lean in (False, True):
        loop = "lean" if lean else "authors"
        # One document at a time: time per document is what matters; run single-docs of them.
        n1 = a.single_docs
        ids1 = torch.randint(2, min(V, 4096), (n1, a.segments * S), generator=g).to(dev)
        t = timed(lambda: [run_docs(hf, memory, M, ids1[i:i + 1], a.segments, S, lean) for i in range(n1)], repeats=1)
        tok = n1 * a.segments * S
        results.append({"loop": loop, "mode": "one at a time", "docs": n1, "seconds": t, "tokPerS": tok / t})
        print(f"{loop:8s} one at a time  docs {n1:4d} | {tok / t:10.0f} tok/s ({t:.3f} s)", flush=True)
        for n in [int(x) for x in a.docs.split(",")]:
            ids = torch.randint(2, min(V, 4096), (n, a.segments * S), generator=g).to(dev)
            try:
                t = timed(lambda: run_docs(hf, memory, M, ids, a.segments, S, lean))
            except torch.OutOfMemoryError:
                print(f"{loop:8s} batched        docs {n:4d} | out of GPU memory", flush=True)
                torch.cuda.empty_cache()
                continue
            tok = n * a.segments * S
            results.append({"loop": loop, "mode": "batched", "docs": n, "seconds": t, "tokPerS": tok / t})
            print(f"{loop:8s} batched        docs {n:4d} | {tok / t:10.0f} tok/s ({t:.3f} s)", flush=True)
            del ids
            torch.cuda.empty_cache()
    if a.out:
        json.dump({"attention": impl, "parity_max_abs_diff": parity, "segments": a.segments, "M": M, "S": S, "results": results}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
