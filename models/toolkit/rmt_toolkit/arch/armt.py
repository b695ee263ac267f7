"""ARMT-style associative memory on the RMT (Rodkin et al. 2024, "Associative Recurrent Memory
Transformer"; RodkinIvan/associative-recurrent-memory-transformer, modeling_amt).

The RMT (model.py: GPT-2 blocks, [read memory; tokens; write memory], causal attention) plus, in
every layer l, an associative matrix A_l and a normaliser z_l that cross segments:
  read   before block l, every position adds A_l's answer to its own key:
           x += (phi(q) A_l) / (phi(q) . z_l + eps),   q = W_q x
  write  after block l, the M write-memory outputs w store key -> value pairs by the delta rule:
           k = phi(W_k w), v = W_v w, prev = (k A_l) / (k . z_l + eps), beta = sigmoid(W_b w)
           A_l += sum_j beta_j k_j (v_j - prev_j)^T,   z_l += sum_j gamma_j k_j,
           gamma_j = clip(1 - k_j . z_l, 0, 1) (stop-gradient): only the part of k_j not yet stored
phi is DPFP with nu = 3 (2 nu d_mem features, parameter-free), L2-normalised, per head. A and z start
at zero, so the first segment's read adds nothing (the reference skips it; same numbers), and W_v
starts at zero, so an ARMT initialised from an RMT's weights computes exactly that RMT until trained.
carry_memory (default on) keeps the RMT's recurrent memory tokens beside the matrices; off, the
read memory is the learned initial memory every segment, as the reference's memory cell does, and
only A and z carry information.

State (models/README.md, "state-conditioned packages"): memory [M, D], assoc [L, H, Dk, D/H] and
assoc_z [L, H, Dk] (Dk = 2 nu d_mem / H), float32. The state is backpropagated through in training.
Decode recomputes the read memory's keys and values from the state on every call (they depend on the
state only); the KV cache holds the tokens'.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import Block
from .common import StateModel

EPS = 1e-5


def dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Deterministic parameter-free projection: [relu(x), relu(-x)] times its rolls 1..nu."""
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([x * torch.roll(x, shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)


class AssociativeMemory(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, H = cfg.d_model, cfg.assoc_heads
        self.heads, self.nu = H, cfg.nu
        self.w_q = nn.Linear(D, cfg.d_mem, bias=False)
        self.w_k = nn.Linear(D, cfg.d_mem, bias=False)
        self.w_v = nn.Linear(D, D, bias=False)
        self.w_b = nn.Linear(D, H)
        for w in (self.w_q, self.w_k):
            nn.init.normal_(w.weight, std=0.02)
        nn.init.zeros_(self.w_v.weight)
        nn.init.zeros_(self.w_b.bias)
        nn.init.normal_(self.w_b.weight, std=0.02)

    def _heads(self, x):  # [B,N,H*d] -> [B,H,N,d]
        B, N, _ = x.shape
        return x.view(B, N, self.heads, -1).transpose(1, 2)

    def _keys(self, x, w):
        return F.normalize(dpfp(self._heads(w(x)), self.nu), p=2.0, dim=-1)

    def read(self, x, A, z):
        """A's answer at every position of x [B,N,D]; A [B,H,Dk,D/H], z [B,H,Dk]."""
        phi = self._keys(x, self.w_q)
        num = torch.matmul(phi, A)
        den = torch.matmul(phi, z.unsqueeze(-1)) + EPS
        out = num / den
        return out.transpose(1, 2).reshape(x.shape)

    def write(self, w, A, z):
        """(A, z) after storing the write-memory outputs w [B,M,D]."""
        k = self._keys(w, self.w_k)                                    # [B,H,M,Dk]
        v = self._heads(self.w_v(w))                                   # [B,H,M,D/H]
        kz = torch.matmul(k, z.unsqueeze(-1))                          # [B,H,M,1]
        prev = torch.matmul(k, A) / (kz + EPS)
        beta = torch.sigmoid(self.w_b(w)).transpose(1, 2).unsqueeze(-1)  # [B,H,M,1]
        A = A + torch.matmul(k.transpose(-1, -2), beta * (v - prev))
        gamma = torch.clamp(1.0 - kz, 0.0, 1.0).detach()
        z = z + (gamma * k).sum(dim=2)
        return A, z


class ARMT(nn.Module):
    """The contract of arch.common.StateModel (segment, decode, state) on GPT-2 blocks."""

    detach_state = False  # as the RMT: the curriculum backpropagates through the state

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg.validate()
        D = cfg.d_model
        self.wte = nn.Embedding(cfg.vocab_size, D)
        self.wpe = nn.Embedding(cfg.n_positions, D)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.assoc = nn.ModuleList([AssociativeMemory(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.memory = nn.Parameter(torch.randn(cfg.memory_tokens, D) * 0.02)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)

    # ---- state ---------------------------------------------------------------------------------
    def state_spec(self):
        c = self.cfg
        H = c.assoc_heads
        dk = 2 * c.nu * c.d_mem // H
        return [("memory", (c.memory_tokens, c.d_model)), ("assoc", (c.n_layers, H, dk, c.d_model // H)),
                ("assoc_z", (c.n_layers, H, dk))]

    def initial_state(self, batch: int, device=None) -> dict:
        dev = device or self.wte.weight.device
        out = {n: torch.zeros((batch,) + tuple(s), device=dev) for n, s in self.state_spec()}
        out["memory"] = self.memory.float().unsqueeze(0).expand(batch, -1, -1).contiguous().to(dev)
        return out

    state_bytes = StateModel.state_bytes

    def empty_past(self, batch: int, device=None, dtype=None):
        c = self.cfg
        return torch.zeros(c.n_layers, 2, batch, c.n_heads, 0, c.head_dim, device=device or self.wte.weight.device,
                           dtype=dtype or self.wte.weight.dtype)

    def _read_memory(self, state, batch: int):
        dt = self.wte.weight.dtype
        if self.cfg.carry_memory:
            return state["memory"].to(dt)
        return self.memory.to(dt).unsqueeze(0).expand(batch, -1, -1)

    # ---- the contract ----------------------------------------------------------------------------
    def forward_segment(self, input_ids, attention_mask, state):
        """(final hidden states at the tokens [B,T,D], next state); the layout is the RMT's masked one."""
        M = self.cfg.memory_tokens
        B, T = input_ids.shape
        dev = input_ids.device
        dt = self.wte.weight.dtype
        mem = self._read_memory(state, B)
        A_all, z_all = state["assoc"].to(dt), state["assoc_z"].to(dt)
        lengths = attention_mask.sum(dim=1)
        ar_m = torch.arange(M, device=dev)
        write_pos = M + lengths.unsqueeze(1) + ar_m.unsqueeze(0)
        x = torch.cat([mem + self.wpe(ar_m).unsqueeze(0),
                       self.wte(input_ids) + self.wpe(M + torch.arange(T, device=dev)).unsqueeze(0),
                       mem + self.wpe(write_pos)], dim=1)
        ones = torch.ones(B, M, dtype=torch.bool, device=dev)
        key_valid = torch.cat([ones, attention_mask > 0, ones], dim=1)
        idx = torch.arange(x.shape[1], device=dev)
        allowed = (idx.unsqueeze(0) <= idx.unsqueeze(1)).unsqueeze(0).unsqueeze(0) & key_valid.unsqueeze(1).unsqueeze(1)
        As, zs = [], []
        for i, block in enumerate(self.h):
            A, z = A_all[:, i], z_all[:, i]
            x = x + self.assoc[i].read(x, A, z)
            x, _, _ = block(x, allowed)
            A, z = self.assoc[i].write(x[:, M + T:], A, z)
            As.append(A)
            zs.append(z)
        x = self.ln_f(x)
        nxt_mem = x[:, M + T:] if self.cfg.carry_memory else mem
        nxt = {"memory": nxt_mem.float(), "assoc": torch.stack(As, 1).float(), "assoc_z": torch.stack(zs, 1).float()}
        return x[:, M:M + T], nxt

    def lm_logits(self, h):
        return torch.matmul(h, self.wte.weight.t())

    def segment(self, input_ids, attention_mask, state):
        return StateModel.segment(self, input_ids, attention_mask, state)

    token_logprobs = staticmethod(StateModel.token_logprobs)

    def decode(self, input_ids, attention_mask, state, past):
        """input_ids [B,N]; attention_mask [B,P+N] over cached and new tokens; past [L,2,B,H,P,Dh] (the
        tokens' keys and values) -> (logits [B,V] at the last real new token, present [L,2,B,H,P+N,Dh])."""
        M = self.cfg.memory_tokens
        B, N = input_ids.shape
        P = past.shape[4]
        dev = input_ids.device
        dt = self.wte.weight.dtype
        mem = self._read_memory(state, B)
        A_all, z_all = state["assoc"].to(dt), state["assoc_z"].to(dt)
        tpos, causal = StateModel.decode_positions(attention_mask, P)
        x = torch.cat([mem + self.wpe(torch.arange(M, device=dev)).unsqueeze(0),
                       self.wte(input_ids) + self.wpe(M + tpos[:, P:])], dim=1)
        # Queries: M memory rows (keys: the memory before them) and N new tokens (keys: all memory,
        # then the cached and new tokens causally, padding masked).
        mem_rows = torch.cat([torch.arange(M, device=dev).unsqueeze(1) >= torch.arange(M, device=dev).unsqueeze(0),
                              torch.zeros(M, P + N, dtype=torch.bool, device=dev)], dim=1).unsqueeze(0).expand(B, -1, -1)
        tok_rows = torch.cat([torch.ones(B, N, M, dtype=torch.bool, device=dev),
                              causal.unsqueeze(0) & (attention_mask > 0).unsqueeze(1)], dim=2)
        allowed = torch.cat([mem_rows, tok_rows], dim=1).unsqueeze(1)
        presents = []
        for i, block in enumerate(self.h):
            x = x + self.assoc[i].read(x, A_all[:, i], z_all[:, i])
            x, k, v = self._block_with_memory(block, x, M, allowed, past[i, 0], past[i, 1])
            presents.append(torch.stack([k, v], dim=0))
        h = self.ln_f(x)[:, M:]
        return StateModel.last_new_logits(self.lm_logits, h, attention_mask, P), torch.stack(presents, dim=0)

    @staticmethod
    def _block_with_memory(block, x, M, allowed, past_k, past_v):
        """block(x), x = [M memory rows; new tokens], over the keys [memory; past; new tokens]. The memory's
        keys are recomputed on every call (from the state alone), so the cache holds the tokens' only:
        returns x and the tokens' (k, v)."""
        a = block.attn
        q, k, v = a.c_attn(block.ln_1(x)).split(a.n_heads * a.head_dim, dim=2)
        q, k, v = a.split(q), a.split(k), a.split(v)
        kt = torch.cat([past_k, k[:, :, M:]], dim=2)
        vt = torch.cat([past_v, v[:, :, M:]], dim=2)
        keys, vals = torch.cat([k[:, :, :M], kt], dim=2), torch.cat([v[:, :, :M], vt], dim=2)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * (a.head_dim ** -0.5)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        y = torch.matmul(torch.softmax(scores, dim=-1), vals).transpose(1, 2)
        B, L = y.shape[0], y.shape[1]
        x = x + block.drop(a.c_proj(y.reshape(B, L, a.n_heads * a.head_dim)))
        x = x + block.drop(block.mlp(block.ln_2(x)))
        return x, kt, vt
