"""Reference: the strongest plain-PyTorch RMT ingest step, to compare the ONNX engine against (issue 26).

reference-pytorch.py runs the authors' Hugging Face loop in eager mode; this is what a user who cares
about speed would write instead. From a toolkit checkpoint it builds a minimal GPT-2 block stack of its
own (fused QKV linear, scaled_dot_product_attention with is_causal=True, tanh GELU, pre-LN, final LN)
that computes only the next memory, as the service's segment_state graph does (no vocabulary
projection), and times the recurrence memory_{k+1} = step(memory_k, tokens_k) over SEGMENTS full
segments for B independent documents, under torch.compile (CUDA graphs by default), in fp16 and bf16.

A full segment [read memory; S tokens; write memory] at positions 0..S+2M-1 is plain causal attention.
Variant `write-only` (--last-layer-write-only): the last layer computes queries, attention output and
MLP at the M write positions only (keys and values still at all positions), since nothing else there
reaches the next memory. Both variants are reported when the flag is given.

MFU: the card's dense matmul peak is measured in the same run (an N×N×N matmul per dtype); FLOPs per
input token count the matmuls (2 × weights × positions) and causal attention (QK^T and AV) of one
step over its S+2M positions, divided by S. floor = peak ÷ FLOPs per token, the tok/s at 100 % of it.
`first step` is each batch size's first call, timed alone: compile (dynamo, inductor) and first run.

  PYTHONPATH=models/toolkit python3 bench/reference-compiled.py --ckpt DIR/model.pt --batches 1,8,64,256 \
      --segments 8 --dtypes fp16,bf16 --last-layer-write-only --out reference-compiled.json
  python3 bench/reference-compiled.py --ckpt DIR/model.pt --check        # CPU fp32 parity with the toolkit

CPU smoke test (torch 1.13 has neither torch.compile nor SDPA: eager, explicit causal softmax):
  ... --device cpu --no-compile --dtypes fp32 --batches 1,2 --segments 2 --peak-n 512
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "toolkit"))

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")
OOM = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)


def attention(q, k, v, mask=None):
    """Causal attention; `mask` [Tq, Tk] (True = attend) where queries are not all positions."""
    if HAS_SDPA:
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # torch < 2.0 (the CPU smoke test): the same function written out.
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is None:
        t = q.shape[-2]
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


class Block(nn.Module):
    def __init__(self, d: int, d_ff: int, n_heads: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.fc = nn.Linear(d, d_ff)
        self.fc_out = nn.Linear(d_ff, d)

    def heads(self, t, n):
        b = t.shape[0]
        return t.view(b, n, self.n_heads, -1).transpose(1, 2)

    def forward(self, x, write_mask=None):
        """x [B,T,D]. With write_mask ([M,T]), the output is at the last M positions only."""
        b, t, d = x.shape
        h = self.ln_1(x)
        if write_mask is None:
            q, k, v = self.qkv(h).view(b, t, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            y = attention(q, k, v)
        else:
            m = write_mask.shape[0]
            # Keys and values at every position, queries at the write positions (a third less QKV work).
            kv = F.linear(h, self.qkv.weight[d:], self.qkv.bias[d:])
            k, v = kv.view(b, t, 2, self.n_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            q = self.heads(F.linear(h[:, t - m:], self.qkv.weight[:d], self.qkv.bias[:d]), m)
            y = attention(q, k, v, write_mask)
            x = x[:, t - m:]
        x = x + self.proj(y.transpose(1, 2).reshape(b, x.shape[1], d))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class Stack(nn.Module):
    """The RMT's GPT-2 body for full segments: next memory = ln_f(hidden state at the write positions)."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, self.M, self.S = cfg["d_model"], cfg["memory_tokens"], cfg["segment_length"]
        self.wte = nn.Embedding(cfg["vocab_size"], d)
        self.blocks = nn.ModuleList([Block(d, cfg["d_ff"], cfg["n_heads"], cfg["layer_norm_eps"])
                                     for _ in range(cfg["n_layers"])])
        self.ln_f = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        T = self.S + 2 * self.M
        # Full segments: read memory, tokens and write memory sit at positions 0..T-1 in order.
        self.register_buffer("pos", torch.zeros(T, d))
        self.register_buffer("memory", torch.zeros(self.M, d))
        i = torch.arange(T)
        self.register_buffer("write_mask", i.unsqueeze(0) <= i[T - self.M:].unsqueeze(1))

    def load_toolkit(self, sd: dict):
        """Toolkit (GPT-2 Conv1D, weight [in, out]) names onto this stack; every tensor used, none missing."""
        T = self.pos.shape[0]
        with torch.no_grad():
            self.wte.weight.copy_(sd["wte.weight"])
            self.pos.copy_(sd["wpe.weight"][:T])
            self.memory.copy_(sd["memory"])
            self.ln_f.weight.copy_(sd["ln_f.weight"])
            self.ln_f.bias.copy_(sd["ln_f.bias"])
            for n, b in enumerate(self.blocks):
                p = f"h.{n}."
                for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
                    getattr(b, ours).weight.copy_(sd[p + theirs + ".weight"])
                    getattr(b, ours).bias.copy_(sd[p + theirs + ".bias"])
                for ours, theirs in (("qkv", "attn.c_attn"), ("proj", "attn.c_proj"), ("fc", "mlp.c_fc"), ("fc_out", "mlp.c_proj")):
                    getattr(b, ours).weight.copy_(sd[p + theirs + ".weight"].t())
                    getattr(b, ours).bias.copy_(sd[p + theirs + ".bias"])
        return self

    def initial_memory(self, batch: int) -> torch.Tensor:
        return self.memory.unsqueeze(0).expand(batch, -1, -1).contiguous()

    def step(self, memory, ids, write_only: bool = False):
        """memory [B,M,D], ids [B,S] (a full segment) -> next memory [B,M,D]."""
        x = torch.cat([memory, self.wte(ids), memory], dim=1) + self.pos
        last = len(self.blocks) - 1
        for n, b in enumerate(self.blocks):
            x = b(x, self.write_mask if write_only and n == last else None)
        return self.ln_f(x[:, -self.M:])


def load_stack(ckpt: str, device, dtype) -> tuple[Stack, dict]:
    ck = torch.load(ckpt, map_location="cpu")
    c = ck["config"]
    if c.get("architecture", "rmt") != "rmt":
        raise SystemExit(f"{ckpt}: architecture {c['architecture']}, this reference is the RMT's")
    stack = Stack(c).load_toolkit(ck["state_dict"]).to(device, dtype).eval().requires_grad_(False)
    return stack, c


def step_flops(c: dict, write_only: bool) -> float:
    """Multiply-add FLOPs of one step for one document (full segment, causal attention)."""
    d, f, L, M, S = c["d_model"], c["d_ff"], c["n_layers"], c["memory_tokens"], c["segment_length"]
    T = S + 2 * M
    per_pos = 2 * (4 * d * d + 2 * d * f)  # QKV, projection, MLP
    attn_full = 4 * d * T * (T + 1) / 2  # QK^T and AV: query i sees i+1 keys
    total = L * (T * per_pos + attn_full)
    if write_only:
        # Last layer: K,V at every position; Q, projection, MLP and attention at the M write rows.
        keys = M * (T - M) + M * (M + 1) / 2
        last = T * 2 * (2 * d * d) + M * (2 * (2 * d * d + 2 * d * f)) + 4 * d * keys
        total += last - (T * per_pos + attn_full)
    return float(total)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n: int, iters: int) -> float:
    """Dense matmul TFLOP/s of this card in `dtype` (best of `iters` back-to-back n×n×n products)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del a, b
    return 2 * n ** 3 / best / 1e12


@torch.no_grad()
def check(ckpt: str, segments: int, tol: float, device: str) -> float:
    """fp32: next memory of this stack (both variants) vs the toolkit's RMT over `segments` segments."""
    from rmt_toolkit.export import load_checkpoint

    if device.startswith("cuda"):
        # fp32 means fp32 here: TF32 matmuls would differ from the CPU by ~1e-3.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ours, c = load_stack(ckpt, torch.device(device), torch.float32)
    rmt, _ = load_checkpoint(ckpt, device)
    g = torch.Generator().manual_seed(1)
    S = c["segment_length"]
    ids = torch.randint(2, min(c["vocab_size"], 4096), (2, segments, S), generator=g).to(device)
    worst = 0.0
    for write_only in (False, True):
        m_rmt = rmt.initial_memory(2)
        m_ours = ours.initial_memory(2)
        for s in range(segments):
            _, m_rmt = rmt.encode_segment(ids[:, s], torch.ones_like(ids[:, s]), m_rmt)
            m_ours = ours.step(m_ours, ids[:, s], write_only)
            diff = (m_rmt - m_ours).abs().max().item()
            worst = max(worst, diff)
            print(f"check {'write-only' if write_only else 'full':10s} segment {s + 1}: max abs diff {diff:.2e} "
                  f"(memory max abs {m_rmt.abs().max().item():.2f})", flush=True)
    print(f"check: {'ok' if worst <= tol else 'FAILED'} (worst {worst:.2e}, tolerance {tol:.0e})", flush=True)
    if worst > tol:
        raise SystemExit(1)
    return worst


def make_step(stack: Stack, a, device):
    """The step to time: compiled (static shapes, one graph per batch size) or eager."""
    if a.no_compile or not hasattr(torch, "compile"):
        if not a.no_compile:
            print(f"note: torch {torch.__version__} has no torch.compile; running eager", flush=True)
        return stack.step, False
    import torch._dynamo as dynamo

    # Each (dtype, variant, batch) is its own static-shape graph on the same code object: allow them all.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
    uses_graphs = device.type == "cuda" and a.compile_mode in ("reduce-overhead", "max-autotune")
    if not a.dynamic_batch:
        return torch.compile(stack.step, mode=a.compile_mode, fullgraph=True, dynamic=False), uses_graphs
    # One graph for every batch size > 1 (size 1 is always specialised), to cut compile time; the
    # matmuls are cuBLAS calls and CUDA graphs are still recorded per shape, so little speed is lost.
    compiled = torch.compile(stack.step, mode=a.compile_mode, fullgraph=True, dynamic=None)

    def step(memory, ids, write_only):
        dynamo.maybe_mark_dynamic(memory, 0)
        dynamo.maybe_mark_dynamic(ids, 0)
        return compiled(memory, ids, write_only)
    return step, uses_graphs


@torch.no_grad()
def recurrence(step, stack, ids, write_only: bool, cuda_graphs: bool):
    """ids [SEGMENTS,B,S]: the documents' memory after every segment, one step after the other."""
    mem = stack.initial_memory(ids.shape[1])
    for k in range(ids.shape[0]):
        if cuda_graphs:
            # Each step is a new CUDA-graph replay; its output buffer is reused by the next replay, so
            # the memory carried forward is copied out (a [B,M,D] copy), as torch.compile's docs ask.
            torch.compiler.cudagraph_mark_step_begin()
            mem = step(mem, ids[k], write_only).clone()
        else:
            mem = step(mem, ids[k], write_only)
    return mem


def timed(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="toolkit checkpoint (model.pt), e.g. random-gpt2-small's")
    p.add_argument("--check", action="store_true", help="only: fp32 CPU parity with the toolkit's RMT, then exit")
    p.add_argument("--check-segments", type=int, default=2)
    p.add_argument("--check-device", default="cpu", help="--check: where (GPT-2-small takes minutes on a small CPU)")
    p.add_argument("--tol", type=float, default=1e-4, help="--check: largest allowed max abs diff")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="fp16,bf16")
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--last-layer-write-only", action="store_true", help="also time the write-only last layer")
    p.add_argument("--no-compile", action="store_true", help="eager (torch < 2.0 always is)")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   choices=["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default"])
    p.add_argument("--dynamic-batch", action="store_true",
                   help="one compiled graph for all batch sizes > 1 instead of static shapes per batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed recurrences after the first (compiling) step")
    p.add_argument("--repeats", type=int, default=5, help="timed recurrences (median reported)")
    p.add_argument("--peak-n", type=int, default=8192)
    p.add_argument("--peak-iters", type=int, default=20)
    p.add_argument("--out")
    a = p.parse_args()
    if a.check:
        check(a.ckpt, a.check_segments, a.tol, a.check_device)
        return
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    c = torch.load(a.ckpt, map_location="cpu")["config"]
    M, S = c["memory_tokens"], c["segment_length"]
    variants = [False, True] if a.last_layer_write_only else [False]
    flops = {wo: step_flops(c, wo) / S for wo in variants}
    vname = {False: "full", True: "write-only"}
    print(f"reference-compiled on {name}, torch {torch.__version__}, "
          f"{'eager' if a.no_compile or not hasattr(torch, 'compile') else 'torch.compile ' + a.compile_mode}"
          f"{', dynamic batch' if a.dynamic_batch else ''}, "
          f"attention {'SDPA' if HAS_SDPA else 'explicit softmax'}; M={M}, S={S}, {c['n_layers']} layers, "
          f"d={c['d_model']}, {a.segments} segments per document", flush=True)
    for wo in variants:
        print(f"FLOPs per input token ({vname[wo]}): {flops[wo] / 1e9:.4g} GFLOP", flush=True)
    peaks, results, diffs = {}, [], {}
    g = torch.Generator().manual_seed(0)
    for dn in a.dtypes.split(","):
        dtype = DTYPES[dn]
        peaks[dn] = matmul_peak(device, dtype, a.peak_n, a.peak_iters)
        print(f"{dn} matmul peak ({a.peak_n}^3): {peaks[dn]:.4g} TFLOP/s", flush=True)
        stack, _ = load_stack(a.ckpt, device, dtype)
        ref32 = load_stack(a.ckpt, device, torch.float32)[0] if dtype != torch.float32 else stack
        step, graphs = make_step(stack, a, device)
        for wo in variants:
            for B in [int(x) for x in a.batches.split(",")]:
                ids = torch.randint(2, min(c["vocab_size"], 4096), (a.segments, B, S), generator=g).to(device)
                run = lambda: recurrence(step, stack, ids, wo, graphs)  # noqa: E731
                try:
                    # First step alone: dynamo + inductor for this batch size (and the first graph run).
                    sync(device)
                    t0 = time.perf_counter()
                    recurrence(step, stack, ids[:1], wo, graphs)
                    sync(device)
                    compile_s = time.perf_counter() - t0
                    for _ in range(a.warmup):
                        out = run()
                    t = timed(run, device, a.repeats)
                except OOM:
                    print(f"{dn} {vname[wo]:10s} batch {B:4d} | out of memory", flush=True)
                    torch.cuda.empty_cache() if device.type == "cuda" else None
                    continue
                if (dn, wo) not in diffs:
                    # The compiled low-precision memory against this stack's eager fp32 after all segments.
                    with torch.no_grad():
                        m32 = recurrence(ref32.step, ref32, ids, wo, False)
                    out = run()
                    diffs[(dn, wo)] = (out.float() - m32).abs().max().item()
                tok = B * a.segments * S
                tps = tok / t
                mfu = tps * flops[wo] / (peaks[dn] * 1e12)
                floor = peaks[dn] * 1e12 / flops[wo]
                results.append({"dtype": dn, "variant": vname[wo], "batch": B, "seconds": t, "tokPerS": tps,
                                "mfu": mfu, "floorTokPerS": floor, "firstStepSeconds": compile_s})
                print(f"{dn} {vname[wo]:10s} batch {B:4d} | {tps:10.0f} tok/s ({t:.4f} s) | MFU {100 * mfu:5.1f} % | "
                      f"floor {floor:10.0f} tok/s | first step {compile_s:6.1f} s", flush=True)
                del ids
        for (dn2, wo), dv in diffs.items():
            if dn2 == dn:
                print(f"{dn} {vname[wo]}: max abs diff vs fp32 eager after {a.segments} segments {dv:.2e}", flush=True)
        del stack, ref32, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__,
                       "compile": "eager" if a.no_compile or not hasattr(torch, "compile") else a.compile_mode,
                       "dynamicBatch": a.dynamic_batch,
                       "attention": "sdpa" if HAS_SDPA else "explicit", "segments": a.segments, "M": M, "S": S,
                       "flopsPerToken": {vname[wo]: flops[wo] for wo in variants},
                       "peakTflops": peaks, "peakN": a.peak_n,
                       "diffVsFp32": {f"{d}/{vname[wo]}": v for (d, wo), v in diffs.items()},
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
