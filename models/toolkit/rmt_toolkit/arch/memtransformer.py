"""The Memory Transformer family (Burtsev et al. 2020, arXiv 2006.11527) as causal language models.

All three add M trainable [mem] token embeddings to every segment. For what crosses segments they
follow the RMT paper's language-model baselines, where the Memory Transformer is built on
Transformer-XL: the session state is Transformer-XL's cache of the tokens' layer inputs (the
[mem] tokens are not cached: they restart from their trained embeddings every segment, so the
memory is "what the [mem] tokens compute from the cache and the segment", not a recurrent state).

  memtransformer  [mem] tokens prepended: the layout [cache; mem; tokens] runs through shared layers,
                  causally; the tokens attend to the cache, the [mem] tokens and the tokens before them.
  memctrl         the same layout, but the [mem] positions are updated by a dedicated sub-network
                  (their own attention and feed-forward weights per layer, the memory controller).
  membottleneck   the tokens attend ONLY to memory; the memory (its own weights) attends to itself,
                  the cache and the tokens. Causality: each token t reads a view of the memory that
                  has attended to tokens <= t only: the views are computed for every position (the
                  [mem] tokens of view t sit at t's position, relative distance 0 to t), so no token
                  can see a later one through the memory, and decode extends it one view per token.

For memtransformer and memctrl the [mem] tokens precede the segment, so with causal attention they
can read the cache (mem_reads_cache, default on; LM-RMT's read_mem_from_cache) and each other, never
the segment. State: mems [n_layers, mem_len, d_model] and mem_mask [mem_len], as Transformer-XL,
detached between segments as in Transformer-XL.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .common import StateModel, XLLayer, fifo


class MemoryTransformer(StateModel):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.kind = cfg.architecture
        self.layers = nn.ModuleList([XLLayer(cfg) for _ in range(cfg.n_layers)])
        if self.kind != "memtransformer":
            self.mem_layers = nn.ModuleList([XLLayer(cfg) for _ in range(cfg.n_layers)])
        self.mem_tokens = nn.Parameter(torch.zeros(cfg.memory_tokens, cfg.d_model))
        self.init_weights()
        # The scale of the (sqrt(d)-scaled) word embeddings they sit beside.
        nn.init.normal_(self.mem_tokens, 0.0, 0.02 * math.sqrt(cfg.d_model))

    def mem_layer(self, i):
        return self.layers[i] if self.kind == "memtransformer" else self.mem_layers[i]

    def state_spec(self):
        c = self.cfg
        return [("mems", (c.n_layers, c.mem_len, c.d_model)), ("mem_mask", (c.mem_len,))]

    def _block(self, layer, x, keys_h, dist, allowed, r_head, past_k=None, past_v=None):
        """Queries x over keys [keys_h; past; x]; returns x after the block and the (k, v) of
        [past; x] (the tokens', for the KV cache)."""
        a = layer.attn
        (kh, vh), (kx, vx) = a.kv(keys_h), a.kv(x)
        kt = kx if past_k is None else torch.cat([past_k, kx], 2)
        vt = vx if past_v is None else torch.cat([past_v, vx], 2)
        vec, _ = a.attend(a.q(x), torch.cat([kh, kt], 2), torch.cat([vh, vt], 2), dist, allowed, r_head,
                          self.r_w_bias, self.r_r_bias)
        return layer.ff(a.out(x, vec)), kt, vt

    def _mem_step(self, i, mem, cache, valid, r_head):
        """memtransformer / memctrl: the [mem] positions (C..C+M-1) over [cache; mem before them]."""
        C, M = self.cfg.mem_len, mem.shape[1]
        dev = mem.device
        dist = (C + torch.arange(M, device=dev)).unsqueeze(1) - torch.arange(C + M, device=dev).unsqueeze(0)
        cache_ok = valid > 0.5 if self.cfg.mem_reads_cache else torch.zeros_like(valid) > 0.5
        key_ok = torch.cat([cache_ok, torch.ones_like(mem[:, :, 0]) > 0], 1)
        allowed = (dist >= 0).unsqueeze(0) & key_ok.unsqueeze(1)
        out, _, _ = self._block(self.mem_layer(i), mem, cache, dist.clamp(min=0).unsqueeze(0), allowed, r_head)
        return out

    # ---- membottleneck ---------------------------------------------------------------------------
    def _views_step(self, i, views, kc, vc, kt, vt, dist, allowed, r_head):
        """Memory views [B,T,M,D] (T views of M slots) attend to their own slots (distance 0) and to the
        shared keys kc/kt [B,H,C|T,Dh] at dist/allowed [B|1,T*M,C+T]; one softmax over both."""
        layer = self.mem_layers[i]
        a = layer.attn
        B, T, M, D = views.shape
        H, Dh = a.n_heads, a.head_dim
        flat = views.reshape(B, T * M, D)
        q = a.q(flat)
        ko, vo = (t.reshape(B, H, T, M, Dh) for t in a.kv(flat))
        qw, qr = q + self.r_w_bias.unsqueeze(1), q + self.r_r_bias.unsqueeze(1)
        ks, vs = torch.cat([kc, kt], 2), torch.cat([vc, vt], 2)
        bd_all = torch.matmul(qr, r_head.permute(1, 2, 0))
        idx = dist.unsqueeze(1).expand(B, H, -1, -1)
        s_shared = (torch.matmul(qw, ks.transpose(-1, -2)) + torch.gather(bd_all, 3, idx)) * a.scale
        s_shared = s_shared.masked_fill(~allowed.unsqueeze(1), torch.finfo(s_shared.dtype).min)
        s_own = torch.matmul(qw.reshape(B, H, T, M, Dh), ko.transpose(-1, -2)) + bd_all[..., :1].reshape(B, H, T, M, 1)
        p = a.dropatt(torch.softmax(torch.cat([s_shared, (s_own * a.scale).reshape(B, H, T * M, M)], -1), dim=-1))
        K = ks.shape[2]
        vec = torch.matmul(p[..., :K], vs) + torch.matmul(p[..., K:].reshape(B, H, T, M, M), vo).reshape(B, H, T * M, Dh)
        return layer.ff(a.out(flat, vec)).reshape(B, T, M, D)

    def _read_views(self, i, x, views):
        """Token t attends only to its own memory view (all at distance 0, so the position term is
        the same for every key and cancels in the softmax)."""
        layer = self.layers[i]
        a = layer.attn
        B, T, M, D = views.shape
        ko, vo = (t.reshape(B, a.n_heads, T, M, a.head_dim) for t in a.kv(views.reshape(B, T * M, D)))
        q = (a.q(x) + self.r_w_bias.unsqueeze(1)).unsqueeze(3)  # [B,H,T,1,Dh]
        p = a.dropatt(torch.softmax(torch.matmul(q, ko.transpose(-1, -2)) * a.scale, dim=-1))
        return layer.ff(a.out(x, torch.matmul(p, vo).squeeze(3)))

    def _bottleneck(self, x, mems, dist, allowed, r_pos, past=None):
        """Runs every layer: views first (memory update), then tokens read their view. Returns the
        tokens' final hidden states, their layer inputs, and the memory layers' token (k, v)."""
        B, T, _ = x.shape
        M = self.cfg.memory_tokens
        views = self.mem_tokens.to(x.dtype).view(1, 1, M, -1).expand(B, T, -1, -1)
        hids, kvs = [], []
        for i in range(self.cfg.n_layers):
            hids.append(x)
            a = self.mem_layers[i].attn
            (kc, vc), (kx, vx) = a.kv(mems[:, i]), a.kv(x)
            kt = kx if past is None else torch.cat([past[i, 0], kx], 2)
            vt = vx if past is None else torch.cat([past[i, 1], vx], 2)
            kvs.append(torch.stack([kt, vt], 0))
            views = self._views_step(i, views, kc, vc, kt, vt, dist, allowed, a.r(r_pos))
            x = self._read_views(i, x, views)
        return x, hids, kvs

    # ---- the contract -------------------------------------------------------------------------------
    def forward_segment(self, input_ids, attention_mask, state):
        C, M, dt = self.cfg.mem_len, self.cfg.memory_tokens, self.word_emb.weight.dtype
        mems, valid = state["mems"].to(dt), state["mem_mask"]
        B, T = input_ids.shape
        dev = input_ids.device
        x = self.drop(self.embed(input_ids))
        key_valid = torch.cat([valid > 0.5, attention_mask > 0], dim=1)  # cache, tokens
        lengths = attention_mask.sum(dim=1)
        if self.kind == "membottleneck":
            # View t at position C + t over the cache (0..C-1) and the tokens (C..C+T-1).
            d = (C + torch.arange(T, device=dev)).unsqueeze(1) - torch.arange(C + T, device=dev).unsqueeze(0)
            allowed = ((d >= 0).unsqueeze(0) & key_valid.unsqueeze(1)).unsqueeze(2).expand(-1, -1, M, -1)
            dist = d.clamp(min=0).unsqueeze(1).expand(-1, M, -1).reshape(1, T * M, C + T)
            x, hids, _ = self._bottleneck(x, mems, dist, allowed.reshape(B, T * M, C + T), self.pos_emb(C + T))
        else:
            mem = self.mem_tokens.to(dt).unsqueeze(0).expand(B, -1, -1)
            kpos = torch.arange(C + M + T, device=dev)
            d = (C + M + torch.arange(T, device=dev)).unsqueeze(1) - kpos.unsqueeze(0)
            kv = torch.cat([valid > 0.5, torch.ones_like(mem[:, :, 0]) > 0, attention_mask > 0], 1)
            allowed = (d >= 0).unsqueeze(0) & kv.unsqueeze(1)
            pos = self.pos_emb(C + M + T)
            hids = []
            for i, layer in enumerate(self.layers):
                hids.append(x)
                r_head = layer.attn.r(pos)
                nxt_mem = self._mem_step(i, mem, mems[:, i], valid, self.mem_layer(i).attn.r(pos))
                x, _, _ = self._block(layer, x, torch.cat([mems[:, i], mem], 1), d.clamp(min=0).unsqueeze(0), allowed, r_head)
                mem = nxt_mem
        new_mems = torch.stack([fifo(mems[:, i], hids[i], lengths) for i in range(len(hids))], dim=1)
        return self.drop(x), {"mems": new_mems, "mem_mask": fifo(valid, attention_mask.to(valid.dtype), lengths)}

    def decode(self, input_ids, attention_mask, state, past):
        """Cached keys: the tokens' (k, v) of the sequence layers (memtransformer, memctrl) or of the
        memory layers (membottleneck, whose tokens are read only by the memory). The [mem] tokens are
        recomputed from the state on every call."""
        C, M, dt = self.cfg.mem_len, self.cfg.memory_tokens, self.word_emb.weight.dtype
        mems, valid = state["mems"].to(dt), state["mem_mask"]
        B, N = input_ids.shape
        P = past.shape[4]
        dev = input_ids.device
        tpos, causal = self.decode_positions(attention_mask, P)
        tok_ok = causal.unsqueeze(0) & (attention_mask > 0).unsqueeze(1)  # [B,N,P+N]
        x = self.embed(input_ids)
        cache_pos = torch.arange(C, device=dev).unsqueeze(0).expand(B, -1)
        cache_ok = (valid > 0.5).unsqueeze(1).expand(-1, N, -1)
        if self.kind == "membottleneck":
            kpos = torch.cat([cache_pos, C + tpos], 1)
            d = ((C + tpos[:, P:]).unsqueeze(2) - kpos.unsqueeze(1)).clamp(min=0)  # [B,N,C+P+N]
            allowed = torch.cat([cache_ok, tok_ok], 2).unsqueeze(2).expand(-1, -1, M, -1).reshape(B, N * M, -1)
            dist = d.unsqueeze(2).expand(-1, -1, M, -1).reshape(B, N * M, -1)
            x, _, kvs = self._bottleneck(x, mems, dist, allowed, self.pos_emb(kpos.shape[1]), past)
        else:
            mem = self.mem_tokens.to(dt).unsqueeze(0).expand(B, -1, -1)
            mem_pos = (C + torch.arange(M, device=dev)).unsqueeze(0).expand(B, -1)
            kpos = torch.cat([cache_pos, mem_pos, C + M + tpos], 1)
            dist = ((C + M + tpos[:, P:]).unsqueeze(2) - kpos.unsqueeze(1)).clamp(min=0)
            allowed = torch.cat([cache_ok, torch.ones_like(tok_ok[:, :, :1]).expand(-1, -1, M), tok_ok], 2)
            pos = self.pos_emb(kpos.shape[1])
            kvs = []
            for i, layer in enumerate(self.layers):
                nxt_mem = self._mem_step(i, mem, mems[:, i], valid, self.mem_layer(i).attn.r(pos))
                x, kt, vt = self._block(layer, x, torch.cat([mems[:, i], mem], 1), dist, allowed, layer.attn.r(pos),
                                        past[i, 0], past[i, 1])
                kvs.append(torch.stack([kt, vt], 0))
                mem = nxt_mem
        return self.last_new_logits(self.lm_logits, x, attention_mask, P), torch.stack(kvs, dim=0)
