"""LaMemo: look-ahead memory (Ji et al. 2022; thu-coai/LaMemo pytorch/mem_transformer.py, attn_type 3).

A Transformer-XL whose memory is refreshed every segment instead of frozen. Per layer l:
  tokens   attend causally to [memory; tokens] (Transformer-XL relative attention, r_r_bias);
  memory   position s (a query) looks ahead at the keys to its right: memory positions s+1.. and the
           segment's first token (relative distances +1.., bias r_r_bias_future), and that attention
           is interpolated with the one it had when it was written, using the two log normalisers:
             alpha = e^d_old / (e^d_old + e^d_ahead + 1e-6),  a = alpha·a_old + (1 - alpha)·a_ahead
           i.e. the softmax over the union of the old and the new keys; the refreshed memory
           LayerNorm(h + o_net(a)) then feed-forward is layer l + 1's memory.
Only the word-embedding memory crosses segments as hidden states; every layer's memory is recomputed
from it, with the stored attention vectors and normalisers, and detached as in the reference.

State (per session):
  mem_emb   [mem_len, d_model]           the last mem_len real positions' scaled word embeddings
  recur     [n_layers, mem_len, d_model] their attention vectors per layer (heads concatenated, before o_net)
  denom     [n_layers, mem_len, n_heads] the log normalisers of those attention vectors
  mem_mask  [mem_len]                    1 where a slot holds a position (slots fill from the right)

The look-ahead window is the reference's with mem_len <= segment length: up to and including the
first token of the segment. The reference narrows it to the last T keys when a segment has T <
mem_len tokens; here it never depends on T, so a token's logits depend only on the state and the
tokens before it (a partial segment scores what the full one would, and decode's KV cache stays
valid as the tail grows). Full segments, the only ones the service commits, compute the reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import StateModel, XLLayer, fifo


def logaddexp(a, b):
    m = torch.maximum(a, b)
    return m + torch.log(torch.exp(a - m) + torch.exp(b - m))


class LaMemo(StateModel):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.layers = nn.ModuleList([XLLayer(cfg) for _ in range(cfg.n_layers)])
        self.r_r_bias_future = nn.Parameter(torch.zeros(cfg.n_heads, cfg.head_dim))
        self.init_weights()

    def state_spec(self):
        c = self.cfg
        return [("mem_emb", (c.mem_len, c.d_model)), ("recur", (c.n_layers, c.mem_len, c.d_model)),
                ("denom", (c.n_layers, c.mem_len, c.n_heads)), ("mem_mask", (c.mem_len,))]

    def _refresh(self, layer, hm, km, vm, k_first, v_first, recur, denom, valid, r_head):
        """Look-ahead of the memory hm [B,C,D] (keys km/vm [B,H,C,Dh] and the first token's
        [B,H,1,Dh]), interpolated with recur [B,C,D] / denom [B,C,H]. Returns the next layer's
        memory [B,C,D], the interpolated vectors [B,C,D] and the combined normalisers [B,C,H]."""
        a = layer.attn
        C = hm.shape[1]
        dev = hm.device
        # Keys at positions 1..C (memory slots 1..C-1, then the first token); query s sees j > s.
        d = torch.arange(1, C + 1, device=dev).unsqueeze(0) - torch.arange(C, device=dev).unsqueeze(1)
        look, lse = a.attend(a.q(hm), torch.cat([km[:, :, 1:], k_first], 2), torch.cat([vm[:, :, 1:], v_first], 2),
                             d.clamp(min=0).unsqueeze(0), (d >= 1).unsqueeze(0), r_head, self.r_w_bias,
                             self.r_r_bias_future, lse=True)
        old_d = denom.transpose(1, 2).float()  # [B,H,C]
        new_d = lse.float()
        top = torch.maximum(old_d, new_d)
        e_old, e_new = torch.exp(old_d - top), torch.exp(new_d - top)
        alpha = (e_old / (e_old + e_new + 1e-6)).to(look.dtype).unsqueeze(-1)
        inter = a.heads(recur) * alpha + look * (1 - alpha)
        ok = (valid > 0.5).view(valid.shape[0], 1, C, 1)
        inter = torch.where(ok, inter, torch.zeros_like(inter))  # empty slots stay zero
        both = torch.where(ok[..., 0], logaddexp(old_d, new_d), torch.zeros_like(new_d))
        return layer.ff(a.out(hm, inter)), a.merge(inter), both.transpose(1, 2)

    def _tokens(self, layer, x, km, vm, kt, vt, dist, allowed, r_head):
        a = layer.attn
        vec, lse = a.attend(a.q(x), torch.cat([km, kt], 2), torch.cat([vm, vt], 2), dist, allowed, r_head,
                            self.r_w_bias, self.r_r_bias, lse=True)
        return layer.ff(a.out(x, vec)), a.merge(vec), lse.transpose(1, 2)

    def forward_segment(self, input_ids, attention_mask, state):
        C, dt = self.cfg.mem_len, self.word_emb.weight.dtype
        hm, recur, denom, valid = state["mem_emb"].to(dt), state["recur"].to(dt), state["denom"], state["mem_mask"]
        T = input_ids.shape[1]
        dev = input_ids.device
        x = self.drop(self.embed(input_ids))
        x0 = x
        kpos = torch.arange(C + T, device=dev)
        dist = (C + torch.arange(T, device=dev)).unsqueeze(1) - kpos.unsqueeze(0)
        key_valid = torch.cat([valid > 0.5, attention_mask > 0], dim=1)
        allowed = (dist >= 0).unsqueeze(0) & key_valid.unsqueeze(1)
        dist = dist.clamp(min=0).unsqueeze(0)
        lengths = attention_mask.sum(dim=1)
        pos = self.pos_emb(C + T)
        new_recur, new_denom = [], []
        for i, layer in enumerate(self.layers):
            r_head = layer.attn.r(pos)
            (km, vm), (kt, vt) = layer.attn.kv(hm), layer.attn.kv(x)
            hm_next, inter, both = self._refresh(layer, hm, km, vm, kt[:, :, :1], vt[:, :, :1], recur[:, i], denom[:, i],
                                                 valid, r_head)
            x, vec, lse = self._tokens(layer, x, km, vm, kt, vt, dist, allowed, r_head)
            new_recur.append(fifo(inter, vec, lengths))
            new_denom.append(fifo(both.to(denom.dtype), lse.to(denom.dtype), lengths))
            hm = hm_next
        nxt = {"mem_emb": fifo(state["mem_emb"].to(dt), x0, lengths), "recur": torch.stack(new_recur, 1),
               "denom": torch.stack(new_denom, 1), "mem_mask": fifo(valid, attention_mask.to(valid.dtype), lengths)}
        return self.drop(x), nxt

    def decode(self, input_ids, attention_mask, state, past):
        """As TransformerXL.decode; each layer's memory is refreshed from the state on every call, with
        the segment's first token (index 0 of past + new) as its look-ahead key."""
        C, dt = self.cfg.mem_len, self.word_emb.weight.dtype
        hm, recur, denom, valid = state["mem_emb"].to(dt), state["recur"].to(dt), state["denom"], state["mem_mask"]
        B = input_ids.shape[0]
        P = past.shape[4]
        dev = input_ids.device
        tpos, causal = self.decode_positions(attention_mask, P)
        qpos = C + tpos[:, P:]
        kpos = torch.cat([torch.arange(C, device=dev).unsqueeze(0).expand(B, -1), C + tpos], dim=1)
        dist = (qpos.unsqueeze(2) - kpos.unsqueeze(1)).clamp(min=0)
        allowed = torch.cat([(valid > 0.5).unsqueeze(1).expand(-1, qpos.shape[1], -1),
                             causal.unsqueeze(0) & (attention_mask > 0).unsqueeze(1)], dim=2)
        pos = self.pos_emb(kpos.shape[1] + 1)  # + 1: the look-ahead reaches distance C even at one token
        x = self.embed(input_ids)
        presents = []
        for i, layer in enumerate(self.layers):
            r_head = layer.attn.r(pos)
            (km, vm), (kx, vx) = layer.attn.kv(hm), layer.attn.kv(x)
            kt, vt = torch.cat([past[i, 0], kx], 2), torch.cat([past[i, 1], vx], 2)
            hm_next, _, _ = self._refresh(layer, hm, km, vm, kt[:, :, :1], vt[:, :, :1], recur[:, i], denom[:, i], valid, r_head)
            x, _, _ = self._tokens(layer, x, km, vm, kt, vt, dist, allowed, r_head)
            presents.append(torch.stack([kt, vt], dim=0))
            hm = hm_next
        return self.last_new_logits(self.lm_logits, x, attention_mask, P), torch.stack(presents, dim=0)
