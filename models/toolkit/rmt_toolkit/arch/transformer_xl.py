"""Transformer-XL (Dai et al. 2019; kimiyoung/transformer-xl pytorch/mem_transformer.py, attn_type 0).

Segment-level recurrence: each layer's queries attend to that layer's input hidden states of the
last mem_len positions before the segment (the "mems", cached without gradient) and to the
segment's tokens before them, with relative positions.

State (per session):
  mems      [n_layers, mem_len, d_model]  layer l's input hidden states at the last mem_len real
                                          positions (l = 0: the scaled word embeddings)
  mem_mask  [mem_len]                     1 where a slot holds a position; slots fill from the right
The reference also caches the last layer's output (n_layers + 1 entries) but no layer reads it, so
it is not kept. A padded row's next mems are the last mem_len of its *real* positions (`fifo`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import StateModel, XLLayer, fifo


class TransformerXL(StateModel):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.layers = nn.ModuleList([XLLayer(cfg) for _ in range(cfg.n_layers)])
        self.init_weights()

    def state_spec(self):
        c = self.cfg
        return [("mems", (c.n_layers, c.mem_len, c.d_model)), ("mem_mask", (c.mem_len,))]

    def _layer(self, layer, x, keys_h, dist, allowed, pos, past_k=None, past_v=None):
        """One block: queries x, keys [keys_h (state positions); past; x]. Returns x and the new
        tokens' (k, v) for the KV cache."""
        a = layer.attn
        q, (kc, vc), (kx, vx) = a.q(x), a.kv(keys_h), a.kv(x)
        kt = kx if past_k is None else torch.cat([past_k, kx], dim=2)
        vt = vx if past_v is None else torch.cat([past_v, vx], dim=2)
        vec, _ = a.attend(q, torch.cat([kc, kt], 2), torch.cat([vc, vt], 2), dist, allowed, a.r(pos),
                          self.r_w_bias, self.r_r_bias)
        return layer.ff(a.out(x, vec)), kt, vt

    def forward_segment(self, input_ids, attention_mask, state):
        C, dt = self.cfg.mem_len, self.word_emb.weight.dtype
        mems, valid = state["mems"].to(dt), state["mem_mask"]
        T = input_ids.shape[1]
        dev = input_ids.device
        x = self.drop(self.embed(input_ids))
        # Keys: cache slots at positions 0..C-1, tokens at C..C+T-1; query i sits at C + i.
        kpos = torch.arange(C + T, device=dev)
        dist = (C + torch.arange(T, device=dev)).unsqueeze(1) - kpos.unsqueeze(0)
        key_valid = torch.cat([valid > 0.5, attention_mask > 0], dim=1)
        allowed = (dist >= 0).unsqueeze(0) & key_valid.unsqueeze(1)
        dist = dist.clamp(min=0).unsqueeze(0)
        pos = self.pos_emb(C + T)
        hids = []
        for i, layer in enumerate(self.layers):
            hids.append(x)
            x, _, _ = self._layer(layer, x, mems[:, i], dist, allowed, pos)
        lengths = attention_mask.sum(dim=1)
        new_mems = torch.stack([fifo(mems[:, i], hids[i], lengths) for i in range(len(self.layers))], dim=1)
        new_valid = fifo(valid, attention_mask.to(valid.dtype), lengths)
        return self.drop(x), {"mems": new_mems, "mem_mask": new_valid}

    def decode(self, input_ids, attention_mask, state, past):
        """input_ids [B,N]; attention_mask [B,P+N] over cached and new tokens; state as segment();
        past [L,2,B,H,P,Dh] -> (logits [B,V] at the last real new token, present [L,2,B,H,P+N,Dh])."""
        C, dt = self.cfg.mem_len, self.word_emb.weight.dtype
        mems, valid = state["mems"].to(dt), state["mem_mask"]
        B = input_ids.shape[0]
        P = past.shape[4]
        dev = input_ids.device
        tpos, causal = self.decode_positions(attention_mask, P)
        qpos = C + tpos[:, P:]
        kpos = torch.cat([torch.arange(C, device=dev).unsqueeze(0).expand(B, -1), C + tpos], dim=1)
        dist = (qpos.unsqueeze(2) - kpos.unsqueeze(1)).clamp(min=0)
        n_new = qpos.shape[1]
        allowed = torch.cat([(valid > 0.5).unsqueeze(1).expand(-1, n_new, -1),
                             causal.unsqueeze(0) & (attention_mask > 0).unsqueeze(1)], dim=2)
        pos = self.pos_emb(kpos.shape[1])
        x = self.embed(input_ids)
        presents = []
        for i, layer in enumerate(self.layers):
            x, kt, vt = self._layer(layer, x, mems[:, i], dist, allowed, pos, past[i, 0], past[i, 1])
            presents.append(torch.stack([kt, vt], dim=0))
        return self.last_new_logits(self.lm_logits, x, attention_mask, P), torch.stack(presents, dim=0)
