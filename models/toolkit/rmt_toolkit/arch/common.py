"""Transformer-XL building blocks shared by the state-conditioned architectures.

Follows kimiyoung/transformer-xl pytorch/mem_transformer.py, attn_type 0 (the default): word
embeddings scaled by sqrt(d_model), relative positions as sinusoids projected per layer (r_net)
with the two global biases r_w_bias (content) and r_r_bias (position), post-LayerNorm residual
blocks, a ReLU feed-forward, and the output layer tied to the embedding (plus a bias).

The relative term is computed as q·r(d) for every distance d and then gathered at each (query, key)
pair's distance, instead of the reference's shift trick: the same numbers, but any layout of
queries and keys (cache slots, [mem] tokens, KV-cached tokens) and per-row positions export as one
GatherElements.

State convention (models/README.md, "state-conditioned packages"): every architecture keeps its
cross-segment state as fixed-shape float32 tensors whose cached positions fill a window of
`mem_len` slots from the right; `mem_mask` [mem_len] marks the filled slots (1) so an empty or
short history is exactly the reference's shorter cache, never zeros that are attended to.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid(length: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """[length, d] embeddings of the distances 0..length-1 (sin half, then cos half)."""
    d = torch.arange(length, device=inv_freq.device, dtype=inv_freq.dtype)
    x = d.unsqueeze(1) * inv_freq.unsqueeze(0)
    return torch.cat([x.sin(), x.cos()], dim=-1)


def fifo(old: torch.Tensor, new: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The last C real positions of [old (C slots); new (T, real tokens first)] per row.

    old [B, C, ...], new [B, T, ...], lengths [B]: rows lengths..lengths+C-1 of the concatenation,
    so a padded row keeps exactly what its real tokens alone would leave."""
    C = old.shape[1]
    cat = torch.cat([old, new.to(old.dtype)], dim=1)
    idx = lengths.view(-1, 1) + torch.arange(C, device=old.device).view(1, C)
    idx = idx.view(idx.shape[0], C, *([1] * (old.dim() - 2))).expand(-1, -1, *old.shape[2:])
    return torch.gather(cat, 1, idx)


class RelAttention(nn.Module):
    """Relative multi-head attention (RelPartialLearnableMultiHeadAttn) and its post-LN residual."""

    def __init__(self, cfg):
        super().__init__()
        D = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv_net = nn.Linear(D, 3 * D, bias=False)
        self.r_net = nn.Linear(D, D, bias=False)
        self.o_net = nn.Linear(D, D, bias=False)
        self.layer_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.dropatt = nn.Dropout(cfg.dropatt)

    def heads(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)

    def q(self, x):
        D = x.shape[-1]
        return self.heads(F.linear(x, self.qkv_net.weight[:D]))

    def kv(self, x):
        D = x.shape[-1]
        k, v = F.linear(x, self.qkv_net.weight[D:]).split(D, dim=-1)
        return self.heads(k), self.heads(v)

    def r(self, pos_emb):
        """[K, H, Dh] position keys for the distances 0..K-1."""
        return self.r_net(pos_emb).view(-1, self.n_heads, self.head_dim)

    def attend(self, q, k, v, dist, allowed, r_head, w_bias, r_bias, lse: bool = False):
        """q [B,H,Nq,Dh], k/v [B,H,Nk,Dh], dist [B|1,Nq,Nk] (>= 0), allowed [B|1,Nq,Nk] bool.

        Returns the attention vectors [B,H,Nq,Dh] and, with lse, the log normaliser of each query's
        scaled scores [B,H,Nq] (LaMemo keeps it to interpolate later)."""
        ac = torch.matmul(q + w_bias.unsqueeze(1), k.transpose(-1, -2))
        bd_all = torch.matmul(q + r_bias.unsqueeze(1), r_head.permute(1, 2, 0))  # [B,H,Nq,K]
        idx = dist.unsqueeze(1).expand(q.shape[0], self.n_heads, -1, -1)
        s = (ac + torch.gather(bd_all, 3, idx)) * self.scale
        # Masked keys get exactly zero weight (exp of the dtype's lowest value underflows to 0).
        s = s.masked_fill(~allowed.unsqueeze(1), torch.finfo(s.dtype).min)
        p = self.dropatt(torch.softmax(s, dim=-1))
        return torch.matmul(p, v), (torch.logsumexp(s, dim=-1) if lse else None)

    def merge(self, vec):
        b, _, n, _ = vec.shape
        return vec.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim)

    def out(self, x, vec):
        """Post-LN residual: LayerNorm(x + o_net(vec)); vec [B,H,N,Dh] or already merged [B,N,D]."""
        if vec.dim() == 4:
            vec = self.merge(vec)
        return self.layer_norm(x + self.drop(self.o_net(vec)))


class PositionwiseFF(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.CoreNet = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.ReLU(), nn.Dropout(cfg.dropout),
                                     nn.Linear(cfg.d_ff, cfg.d_model), nn.Dropout(cfg.dropout))
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x):
        return self.layer_norm(x + self.CoreNet(x))


class XLLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn = RelAttention(cfg)
        self.ff = PositionwiseFF(cfg)


class StateModel(nn.Module):
    """Base of the state-conditioned models: embedding, tied output, relative-position globals, and
    the contract's segment() / token_logprobs() on top of each architecture's forward_segment()."""

    # The state is detached between segments in training (Transformer-XL's mems are cached under
    # no_grad; LaMemo detaches its memory the same way). train_lm backpropagates per segment then.
    detach_state = True

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg.validate()
        D, H = cfg.d_model, cfg.n_heads
        self.word_emb = nn.Embedding(cfg.vocab_size, D)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.r_w_bias = nn.Parameter(torch.zeros(H, cfg.head_dim))
        self.r_r_bias = nn.Parameter(torch.zeros(H, cfg.head_dim))
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0.0, D, 2.0) / D)), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)

    def init_weights(self):
        """The reference's normal(0, 0.02) init; LayerNorm weights around 1."""
        for name, p in self.named_parameters():
            if name.endswith("layer_norm.weight"):
                nn.init.normal_(p, 1.0, 0.02)
            elif name.endswith("layer_norm.bias") or name == "out_bias" or (name.endswith(".bias") and p.dim() == 1):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    # ---- pieces -------------------------------------------------------------------------------
    def embed(self, ids):
        return self.word_emb(ids) * math.sqrt(self.cfg.d_model)

    def pos_emb(self, length: int):
        return self.drop(sinusoid(length, self.inv_freq).to(self.word_emb.weight.dtype))

    def lm_logits(self, h):
        return torch.matmul(h, self.word_emb.weight.t()) + self.out_bias

    # ---- state --------------------------------------------------------------------------------
    def state_spec(self) -> list[tuple[str, tuple]]:
        raise NotImplementedError

    def initial_state(self, batch: int, device=None) -> dict:
        """Every architecture here starts empty: zeros, with mem_mask 0 (no cached position)."""
        dev = device or self.word_emb.weight.device
        return {n: torch.zeros((batch,) + tuple(s), device=dev) for n, s in self.state_spec()}

    def state_bytes(self) -> int:
        return sum(4 * math.prod(s) for _, s in self.state_spec())

    def empty_past(self, batch: int, device=None, dtype=None):
        c = self.cfg
        return torch.zeros(c.n_layers, 2, batch, c.n_heads, 0, c.head_dim, device=device or self.word_emb.weight.device,
                           dtype=dtype or self.word_emb.weight.dtype)

    # ---- the contract ---------------------------------------------------------------------------
    def forward_segment(self, input_ids, attention_mask, state: dict):
        """(final hidden states at the tokens [B,T,D], next state dict)."""
        raise NotImplementedError

    def segment(self, input_ids, attention_mask, state: dict):
        """(next state, logits at the last real token [B,V], token_logprobs [B,T])."""
        h, nxt = self.forward_segment(input_ids, attention_mask, state)
        logits = self.lm_logits(h).float()
        last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
        last_logits = logits.gather(1, last.view(-1, 1, 1).expand(-1, 1, logits.shape[2])).squeeze(1)
        return {k: v.float() for k, v in nxt.items()}, last_logits, self.token_logprobs(logits, input_ids, attention_mask)

    @staticmethod
    def token_logprobs(logits, input_ids, attention_mask):
        """log p(input_ids[:, t] | earlier tokens, state) for t >= 1; 0 at t = 0 and at padding."""
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = logp.gather(2, input_ids[:, 1:].unsqueeze(2)).squeeze(2)
        # The t = 0 column from the logits (not tgt[:, :1]), so a one-token segment still gives [B,1].
        tgt = torch.cat([torch.zeros_like(logits[:, :1, 0]), tgt], dim=1)
        return torch.where(attention_mask > 0, tgt, torch.zeros_like(tgt))

    @staticmethod
    def last_new_logits(logits_fn, h, attention_mask, P: int):
        """Logits at each row's last real new token (decode)."""
        n_real = attention_mask[:, P:].sum(dim=1)
        last = (n_real - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[2])
        return logits_fn(h.gather(1, last).squeeze(1)).float()

    @staticmethod
    def decode_positions(attention_mask, P: int):
        """Token positions within the segment (cumsum of the mask - 1) of [cache; new], and the
        index causality of the new tokens over them: [B,P+N] positions, [N,P+N] bool."""
        pos = (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)
        total = attention_mask.shape[1]
        kidx = torch.arange(total, device=attention_mask.device)
        qidx = P + torch.arange(total - P, device=attention_mask.device)
        return pos, kidx.unsqueeze(0) <= qidx.unsqueeze(1)
