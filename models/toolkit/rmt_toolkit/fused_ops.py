"""PyTorch functions that export as onnxruntime's fused transformer ops (domain com.microsoft).

Each computes in PyTorch exactly what the op computes, so the eager model (verification, the fused
check in export.py) and the graph agree; the TorchScript exporter writes the op from `symbolic`.
onnxruntime runs all three on its CPU and CUDA providers. Why fused ops instead of relying on
onnxruntime's own graph fusions: its GPT-2 patterns did not match this graph (bench/results/gpu-2:
separate bias Adds, LayerNormalization and masked softmax), and the unfused attention alone took
about a fifth of an fp16 step.
  MultiHeadAttention (unidirectional=1, with the QKV bias): flash attention on CUDA, no [B,H,T,T] scores.
  SkipLayerNormalization: residual + projection bias + LayerNorm in one pass, also returning the sum.
  FastGelu (with bias): the projection bias and GPT-2's tanh GELU in one pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _causal_attention(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # torch < 2.0 (the CPU machines' Debian torch 1.13): the same softmax written out.
    t = q.shape[-2]
    s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _typed(out, like):
    out.setType(like.type())
    return out


class CausalAttention(torch.autograd.Function):
    """softmax(QK^T/sqrt(Dh) + causal mask)V over q/k/v [B,T,H*Dh] after adding `bias` [3*H*Dh]."""

    @staticmethod
    def forward(ctx, q, k, v, bias, n_heads: int):
        b, t, d = q.shape
        bq, bk, bv = bias.split(d)
        heads = lambda x: x.view(b, t, n_heads, d // n_heads).transpose(1, 2)  # noqa: E731
        y = _causal_attention(heads(q + bq), heads(k + bk), heads(v + bv))
        return y.transpose(1, 2).reshape(b, t, d)

    @staticmethod
    def symbolic(g, q, k, v, bias, n_heads: int):
        return _typed(g.op("com.microsoft::MultiHeadAttention", q, k, v, bias, num_heads_i=n_heads, unidirectional_i=1), q)


class SkipLayerNorm(torch.autograd.Function):
    """(LayerNorm(x + skip + bias), x + skip + bias)."""

    @staticmethod
    def forward(ctx, x, skip, gamma, beta, bias, eps: float):
        s = x + skip + bias
        return F.layer_norm(s, (s.shape[-1],), gamma, beta, eps), s

    @staticmethod
    def symbolic(g, x, skip, gamma, beta, bias, eps: float):
        out, _mean, _inv_std, s = g.op("com.microsoft::SkipLayerNormalization", x, skip, gamma, beta, bias,
                                       epsilon_f=eps, outputs=4)
        return _typed(out, x), _typed(s, x)


class BiasFastGelu(torch.autograd.Function):
    """GPT-2's tanh GELU of x + bias."""

    @staticmethod
    def forward(ctx, x, bias):
        y = x + bias
        return 0.5 * y * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * torch.pow(y, 3.0))))

    @staticmethod
    def symbolic(g, x, bias):
        return _typed(g.op("com.microsoft::FastGelu", x, bias), x)
