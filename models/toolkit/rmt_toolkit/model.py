"""Decoder-only Recurrent Memory Transformer around a GPT-2-style decoder.

Memory semantics follow booydar/recurrent-memory-transformer (modeling_rmt/language_modeling.py):
a segment is laid out as [read memory; tokens; write memory], the same memory vectors at both ends,
causal attention over the whole layout, and the next memory is the last-layer hidden state (after
the final norm) at the write positions.

Parameter names mirror Hugging Face's GPT-2 (wte, wpe, h.N.attn.c_attn, ...; Conv1D weights stored
[in, out]) so that an authors' GPT-2 MemoryCell checkpoint converts by renaming keys (convert.py).

Padding: real tokens are left-aligned. The write memory is placed after the padded block in the
tensor but gets the positions right after the real tokens, and padding is masked out as a key, so a
padded row computes exactly what the same tokens compute alone.

Fused attention (RMT.fused_attention, an export option): the segment is laid out with the padding
moved to the very end, [read memory; real tokens; write memory; padding], each element at the same
position id as above. Causal attention alone then hides the padding from every real position, so no
mask is needed and the exported graph can use onnxruntime's com.microsoft.MultiHeadAttention with
unidirectional=1, which runs flash attention on CUDA instead of materialising the [B,H,T,T] scores.
The fused layout also runs the blocks as onnxruntime's fused ops (fused_ops.py: bias and residual
adds folded into SkipLayerNormalization, FastGelu and the attention). It computes the same function
(export's fused check compares the two).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RMTConfig
from .fused_ops import BiasFastGelu, CausalAttention, SkipLayerNorm


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    # GPT-2's tanh approximation, so converted GPT-2 checkpoints compute what they were trained with.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight stored [in, out]."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight) + self.bias


class Attention(nn.Module):
    def __init__(self, cfg: RMTConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.c_attn = Conv1D(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = Conv1D(cfg.d_model, cfg.d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, allowed, past_k=None, past_v=None):
        q, k, v = self.c_attn(x).split(self.n_heads * self.head_dim, dim=2)
        q, k, v = self.split(q), self.split(k), self.split(v)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        # Masked keys get exactly zero weight (exp of the dtype's lowest value underflows to 0). The
        # softmax stays in the scores' dtype: the fp16 scores come out of an fp16 matmul anyway, and
        # onnxruntime's and torch's fp16 softmax kernels accumulate in fp32; casting the
        # [batch, heads, T, T] scores to fp32 and back cost a third of an fp16 GPT-2-small step
        # (bench/results/gpu-1/profile-gpt2.txt). Packages exported before this kept the casts.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        y = torch.matmul(probs, v).transpose(1, 2)
        b, t = y.shape[0], y.shape[1]
        return self.c_proj(y.reshape(b, t, self.n_heads * self.head_dim)), k, v


class MLP(nn.Module):
    def __init__(self, cfg: RMTConfig):
        super().__init__()
        self.c_fc = Conv1D(cfg.d_model, cfg.d_ff)
        self.c_proj = Conv1D(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: RMTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, allowed, past_k=None, past_v=None):
        a, k, v = self.attn(self.ln_1(x), allowed, past_k, past_v)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x, k, v


class RMT(nn.Module):
    def __init__(self, cfg: RMTConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        # Export option (not a parameter): segment steps in the fused layout (module docstring).
        self.fused_attention = False
        # The learned initial memory: the session state before any segment (state "memory").
        self.memory = nn.Parameter(torch.randn(cfg.memory_tokens, cfg.d_model) * 0.02)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    # ---- state -------------------------------------------------------------------------------
    def initial_memory(self, batch: int) -> torch.Tensor:
        return self.memory.float().unsqueeze(0).expand(batch, -1, -1).contiguous()

    # ---- one recurrence step -------------------------------------------------------------------
    def encode_segment(self, input_ids, attention_mask, memory):
        """Hidden states (after ln_f) at the token positions [B,T,D] and the write positions [B,M,D]."""
        if self.fused_attention:
            return self.encode_segment_causal(input_ids, attention_mask, memory)
        M = self.cfg.memory_tokens
        B, T = input_ids.shape
        dev = input_ids.device
        mem = memory.to(self.wte.weight.dtype)
        lengths = attention_mask.sum(dim=1)
        ar_m = torch.arange(M, device=dev)
        tok_pos = M + torch.arange(T, device=dev)
        write_pos = M + lengths.unsqueeze(1) + ar_m.unsqueeze(0)
        x = torch.cat([mem + self.wpe(ar_m).unsqueeze(0),
                       self.wte(input_ids) + self.wpe(tok_pos).unsqueeze(0),
                       mem + self.wpe(write_pos)], dim=1)
        ones = torch.ones(B, M, dtype=torch.bool, device=dev)
        key_valid = torch.cat([ones, attention_mask > 0, ones], dim=1)
        idx = torch.arange(x.shape[1], device=dev)
        causal = idx.unsqueeze(0) <= idx.unsqueeze(1)
        allowed = causal.unsqueeze(0).unsqueeze(0) & key_valid.unsqueeze(1).unsqueeze(1)
        for block in self.h:
            x, _, _ = block(x, allowed)
        x = self.ln_f(x)
        return x[:, M:M + T], x[:, M + T:]

    def encode_segment_causal(self, input_ids, attention_mask, memory):
        """encode_segment in the fused layout [read; real tokens; write; padding]: causal attention only.

        Token rows past a row's length hold the write memory and padding here (not padding): every
        consumer masks them (token_logprobs) or never reads them (last-token logits)."""
        M = self.cfg.memory_tokens
        B, T = input_ids.shape
        L = T + 2 * M
        x, lengths, rows = self.fused_input(input_ids, attention_mask, memory)
        D = x.shape[2]
        x = self.fused_blocks(x)
        write = M + lengths + torch.arange(M, device=input_ids.device).unsqueeze(0)
        return x[:, M:M + T], x.reshape(B * L, D)[(write + rows).reshape(-1)].reshape(B, M, D)

    def fused_input(self, input_ids, attention_mask, memory):
        """The fused layout's input [B, L, D] with positions, each row's length [B, 1] and its first
        flat row index [B, 1] (row b's positions are rows[b] + 0..L-1 of the [B*L, D] view)."""
        M = self.cfg.memory_tokens
        B, T = input_ids.shape
        L = T + 2 * M
        mem = memory.to(self.wte.weight.dtype)
        lengths = attention_mask.sum(dim=1, keepdim=True)
        src = torch.cat([mem, self.wte(input_ids), mem], dim=1)  # [read; tokens incl. padding; write]
        p = torch.arange(L, device=input_ids.device).unsqueeze(0)
        # Position p takes itself up to the last real token, then write memory slot p-M-len (at
        # M+T+slot in src), then padding (any pad token: src p-M).
        idx = torch.where(p < M + lengths, p, torch.where(p < 2 * M + lengths, p - lengths + T, p - M))
        # Row gathers on [B*L, D] (Gather), not element gathers with an index expanded to [B,L,D].
        D = src.shape[2]
        rows = torch.arange(B, device=input_ids.device).unsqueeze(1) * L
        return src.reshape(B * L, D)[(idx + rows).reshape(-1)].reshape(B, L, D) + self.wpe(p), lengths, rows

    def fused_blocks(self, x, layers: int | None = None):
        """The blocks and ln_f as fused ops: each SkipLayerNormalization adds the previous projection's
        output and bias to the residual stream and normalises for the next sub-layer.
        layers: run only the first `layers` blocks and return (h, residual stream), h normalised for
        the next block."""
        eps = self.cfg.layer_norm_eps
        d = self.cfg.d_model
        h = F.layer_norm(x, (d,), self.h[0].ln_1.weight, self.h[0].ln_1.bias, eps)
        res = x
        for i, blk in enumerate(self.h):
            if layers is not None and i == layers:
                return h, res
            at, mlp = blk.attn, blk.mlp
            q, k, v = torch.matmul(h, at.c_attn.weight).split(d, dim=2)
            a = torch.matmul(CausalAttention.apply(q, k, v, at.c_attn.bias, at.n_heads), at.c_proj.weight)
            h, res = SkipLayerNorm.apply(a, res, blk.ln_2.weight, blk.ln_2.bias, at.c_proj.bias, eps)
            m = torch.matmul(BiasFastGelu.apply(torch.matmul(h, mlp.c_fc.weight), mlp.c_fc.bias), mlp.c_proj.weight)
            nxt = self.h[i + 1].ln_1 if i + 1 < len(self.h) else self.ln_f
            h, res = SkipLayerNorm.apply(m, res, nxt.weight, nxt.bias, mlp.c_proj.bias, eps)
        return h

    def fused_next_memory(self, input_ids, attention_mask, memory):
        """encode_segment_causal's write memory alone, the last block computed at the M write rows
        only: of the last block, only the keys and values of the other rows reach the next memory
        (their queries, attention outputs and MLP do not), about 1/n_layers of the step's work."""
        M = self.cfg.memory_tokens
        B, T = input_ids.shape
        L = T + 2 * M
        d, eps = self.cfg.d_model, self.cfg.layer_norm_eps
        x, lengths, rows = self.fused_input(input_ids, attention_mask, memory)
        p = torch.arange(L, device=input_ids.device).unsqueeze(0)
        h, res = self.fused_blocks(x, layers=len(self.h) - 1)
        blk = self.h[-1]
        at, mlp = blk.attn, blk.mlp
        write = M + lengths + torch.arange(M, device=input_ids.device).unsqueeze(0)  # [B, M] positions
        wrows = (write + rows).reshape(-1)
        q, k, v = (torch.matmul(h, at.c_attn.weight) + at.c_attn.bias).split(d, dim=2)
        q = q.reshape(B * L, d)[wrows].reshape(B, M, d)
        heads = lambda t: t.reshape(B, t.shape[1], at.n_heads, d // at.n_heads).transpose(1, 2)  # noqa: E731
        scores = torch.matmul(heads(q), heads(k).transpose(2, 3)) / math.sqrt(d // at.n_heads)
        # Write slot j (position M + len + j) sees positions up to itself: the causal mask's rows.
        allowed = (p.unsqueeze(1) <= write.unsqueeze(2)).unsqueeze(1)  # [B, 1, M, L]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        a = torch.matmul(torch.softmax(scores, dim=-1), heads(v)).transpose(1, 2).reshape(B, M, d)
        resw = res.reshape(B * L, d)[wrows].reshape(B, M, d)
        h2, res2 = SkipLayerNorm.apply(torch.matmul(a, at.c_proj.weight), resw, blk.ln_2.weight, blk.ln_2.bias,
                                       at.c_proj.bias, eps)
        m = torch.matmul(BiasFastGelu.apply(torch.matmul(h2, mlp.c_fc.weight), mlp.c_fc.bias), mlp.c_proj.weight)
        out, _ = SkipLayerNorm.apply(m, res2, self.ln_f.weight, self.ln_f.bias, mlp.c_proj.bias, eps)
        return out

    def lm_logits(self, h):
        return torch.matmul(h, self.wte.weight.t())

    def segment(self, input_ids, attention_mask, memory):
        """The contract's segment step: (next_memory, logits at last real token, token_logprobs)."""
        h_tok, h_write = self.encode_segment(input_ids, attention_mask, memory)
        logits = self.lm_logits(h_tok).float()
        last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
        idx = last.view(-1, 1, 1).expand(-1, 1, logits.shape[2])
        last_logits = logits.gather(1, idx).squeeze(1)
        token_logprobs = self.token_logprobs(logits, input_ids, attention_mask)
        return h_write.float(), last_logits, token_logprobs

    @staticmethod
    def token_logprobs(logits, input_ids, attention_mask):
        """log p(input_ids[:, t] | earlier tokens, memory) for t >= 1; 0 at t = 0 and at padding."""
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = logp.gather(2, input_ids[:, 1:].unsqueeze(2)).squeeze(2)
        tgt = torch.cat([torch.zeros_like(tgt[:, :1]), tgt], dim=1)
        return tgt * (attention_mask > 0).to(tgt.dtype)

    # ---- incremental decoding ------------------------------------------------------------------
    def decode(self, input_ids, attention_mask, memory, past):
        """One decode call with a KV cache.

        input_ids [B,N]; memory [B,K,D] read memory to prepend (K = memory_tokens at prefill, 0 after);
        past [L,2,B,H,P,Dh]; attention_mask [B,P+K+N] over past, memory and new tokens (1 = valid).
        Returns logits [B,V] at the last real new token and present [L,2,B,H,P+K+N,Dh].
        """
        dev = input_ids.device
        P = past.shape[4]
        K = memory.shape[1]
        pos = (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)[:, P:]
        x = torch.cat([memory.to(self.wte.weight.dtype), self.wte(input_ids)], dim=1) + self.wpe(pos)
        n_new = x.shape[1]
        key_idx = torch.arange(attention_mask.shape[1], device=dev)
        q_idx = P + torch.arange(n_new, device=dev)
        causal = key_idx.unsqueeze(0) <= q_idx.unsqueeze(1)
        allowed = causal.unsqueeze(0).unsqueeze(0) & (attention_mask > 0).unsqueeze(1).unsqueeze(1)
        presents = []
        for i, block in enumerate(self.h):
            x, k, v = block(x, allowed, past[i, 0], past[i, 1])
            presents.append(torch.stack([k, v], dim=0))
        h = self.ln_f(x)[:, K:]
        n_real = attention_mask[:, P + K:].sum(dim=1)
        last = (n_real - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[2])
        logits = self.lm_logits(h.gather(1, last).squeeze(1)).float()
        return logits, torch.stack(presents, dim=0)

    def empty_past(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        c = self.cfg
        return torch.zeros(c.n_layers, 2, batch, c.n_heads, 0, c.head_dim,
                           device=device, dtype=dtype or self.wte.weight.dtype)


class SegmentGraph(nn.Module):
    """Export wrapper: the segment.onnx contract."""

    def __init__(self, rmt: RMT):
        super().__init__()
        self.rmt = rmt

    def forward(self, input_ids, attention_mask, memory):
        return self.rmt.segment(input_ids, attention_mask, memory)


class WriteRowsStateGraph(nn.Module):
    """Export wrapper: segment.state.onnx computed by fused_next_memory (fused packages)."""

    def __init__(self, rmt: RMT):
        super().__init__()
        self.rmt = rmt

    def forward(self, input_ids, attention_mask, memory):
        return self.rmt.fused_next_memory(input_ids, attention_mask, memory).float()


class DecodeGraph(nn.Module):
    """Export wrapper: decode.onnx (prefill and incremental steps in one graph)."""

    def __init__(self, rmt: RMT):
        super().__init__()
        self.rmt = rmt

    def forward(self, input_ids, attention_mask, memory, past_key_values):
        return self.rmt.decode(input_ids, attention_mask, memory, past_key_values)
