"""PyTorch checks of the state-conditioned architectures (tiny random models, CPU, about a minute):
  PYTHONPATH=models/toolkit python3 models/toolkit/check_models.py
1. Transformer-XL and LaMemo against re-derivations of their references' algorithms (sequence-first
   tensors, the shift trick for relative positions, memories that grow from empty), over segments of
   mixed lengths with the state carried;
2. every architecture: a later token never changes earlier logits (causality: membottleneck's memory);
   a padded row equals its real tokens alone (state, logits, log-probs); decode (prefill, steps, a
   padded prefill) equals segment over the same tokens;
3. batched perplexity (documents as padded rows) equals reading each document alone;
4. armt: with W_v = 0 (its init) it computes the RMT of the same weights; with W_v set, the matrices
   change the logits; over three segments it equals a re-derivation of the reference's algebra
   (einsum reads and writes, the correction with its epsilon) to float rounding.
Prints one line per check and "N passed, N failed"; exits non-zero on a failure.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from rmt_toolkit.arch import build_model
from rmt_toolkit.config import tiny_config
from rmt_toolkit.evaluate import batched_perplexity

ARCHS = ["transformer-xl", "lamemo", "memtransformer", "memctrl", "membottleneck", "armt"]
results = [0, 0]


def tiny_model(arch: str):
    """A tiny random model whose global attention biases (r_w_bias, r_r_bias, r_r_bias_future) have
    unit scale: at the training init (std 0.02) they move the scores too little for a wrong bias to
    show above the tolerance."""
    torch.manual_seed(0)
    m = build_model(tiny_config(arch)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("r_") and name.count("bias"):
                p.normal_(0.0, 1.0)
            if name.startswith("assoc.") and name.endswith("w_v.weight"):  # zero at init: nothing stored
                p.normal_(0.0, 0.2)
    return m


def check(label: str, diff: float, tol: float = 1e-5) -> None:
    ok = diff <= tol
    results[0 if ok else 1] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {label}: {diff:.2e}")


def shift(x, future=False):
    """The references' relative shift of [q, k, ...] scores (future: LaMemo's look-ahead variant)."""
    z = torch.zeros((x.size(0), 1) + x.size()[2:])
    p = torch.cat([x, z] if future else [z, x], 1).view(x.size(1) + 1, x.size(0), *x.size()[2:])
    return (p[:-1] if future else p[1:]).view_as(x)


def sin_emb(m, pos):
    s = torch.outer(pos, m.inv_freq)
    return torch.cat([s.sin(), s.cos()], -1)


def rel_attn(m, a, q, k, v, rk, qlen, klen, mask, r_bias):
    B, H, Dh = q.shape[1], a.n_heads, a.head_dim
    q, k, v = q.view(qlen, B, H, Dh), k.view(klen, B, H, Dh), v.view(klen, B, H, Dh)
    ac = torch.einsum("ibnd,jbnd->ijbn", q + m.r_w_bias, k)
    bd = shift(torch.einsum("ibnd,jnd->ijbn", q + r_bias, rk[:klen]))
    s = ((ac + bd) * a.scale).masked_fill(mask[:, :, None, None], -float("inf"))
    return torch.einsum("ijbn,jbnd->ibnd", F.softmax(s, 1), v), torch.logsumexp(s, 1)


def xl_reference(m, ids, mems):
    """ids [T,B]; mems: per layer [mlen,B,D] (growing from empty, cut to mem_len)."""
    qlen, B = ids.shape
    mlen, D = mems[0].size(0), m.cfg.d_model
    klen = mlen + qlen
    x = m.word_emb(ids) * math.sqrt(D)
    mask = torch.triu(torch.ones(qlen, klen), diagonal=1 + mlen).bool()
    pe = sin_emb(m, torch.arange(klen - 1, -1, -1.0))
    hids = [x]
    for i, layer in enumerate(m.layers):
        a = layer.attn
        q, k, v = torch.chunk(a.qkv_net(torch.cat([mems[i], x], 0)), 3, -1)
        vec, _ = rel_attn(m, a, q[-qlen:], k, v, a.r_net(pe).view(-1, a.n_heads, a.head_dim), qlen, klen, mask, m.r_r_bias)
        x = layer.ff(a.layer_norm(x + a.o_net(vec.reshape(qlen, B, D))))
        hids.append(x)
    return x, [torch.cat([mems[i], hids[i]], 0)[max(0, klen - m.cfg.mem_len):] for i in range(len(m.layers))]


def lamemo_reference(m, ids, mems):
    """mems = [word embeddings [mlen,B,D], then per layer recur [mlen,B,H,Dh], denom [mlen,B,H]]."""
    qlen, B = ids.shape
    mlen, D, C = mems[0].size(0), m.cfg.d_model, m.cfg.mem_len
    klen = mlen + qlen
    we = m.word_emb(ids) * math.sqrt(D)
    mask = torch.triu(torch.ones(qlen, klen), diagonal=1 + mlen).bool()
    pos = torch.arange(klen - 1, -1, -1.0)
    pe = sin_emb(m, torch.cat([pos, torch.arange(1, mlen + 1).float()]) if mlen else pos)
    x, hm, new = we, mems[0], [None]
    for i, layer in enumerate(m.layers):
        a = layer.attn
        H, Dh = a.n_heads, a.head_dim
        recur, denom = mems[1 + 2 * i], mems[2 + 2 * i]
        q, k, v = torch.chunk(a.qkv_net(torch.cat([hm, x], 0)), 3, -1)
        rk = a.r_net(pe).view(-1, H, Dh)
        vec, cur = rel_attn(m, a, q[-qlen:], k, v, rk, qlen, klen, mask, m.r_r_bias)
        out = a.layer_norm(x + a.o_net(vec.reshape(qlen, B, D)))
        if mlen:
            beg, kl = max(-2 * qlen + 1, -klen + 1), min(mlen, qlen)
            mk, mv = (t[beg:-qlen + 1] if qlen > 1 else t[beg:] for t in (k, v))
            mq, mk, mv = q[:mlen].view(mlen, B, H, Dh), mk.reshape(kl, B, H, Dh), mv.reshape(kl, B, H, Dh)
            ac = torch.einsum("ibnd,jbnd->ijbn", mq + m.r_w_bias, mk)
            bd = shift(torch.einsum("ibnd,jnd->ijbn", mq + m.r_r_bias_future, rk[klen:]), future=True)[:, -qlen:]
            s = (ac + bd) * a.scale
            s = s.masked_fill(torch.triu(torch.ones(mlen, mlen))[:, -qlen:].ne(1)[:, :, None, None], -float("inf"))
            look, md = torch.einsum("ijbn,jbnd->ibnd", F.softmax(s, 1), mv), torch.logsumexp(s, 1)
            top = torch.maximum(md, denom)
            alpha = ((denom - top).exp() / ((denom - top).exp() + (md - top).exp() + 1e-6)).unsqueeze(-1)
            inter = recur * alpha + look * (1 - alpha)
            outm, prev = a.layer_norm(hm + a.o_net(inter.reshape(mlen, B, D))), torch.logaddexp(denom, md)
        else:
            inter, outm, prev = torch.zeros(0, B, H, Dh), torch.zeros(0, B, D), torch.zeros(0, B, H)
        cut = max(0, klen - C)
        new += [torch.cat([inter, vec], 0)[cut:], torch.cat([prev, cur], 0)[cut:]]
        both = layer.ff(torch.cat([outm, out], 0))
        hm, x = both[:mlen], both[mlen:]
    new[0] = torch.cat([mems[0], we], 0)[max(0, klen - C):]
    return x, new


@torch.no_grad()
def reference_checks():
    for arch, lens in (("transformer-xl", [20, 5, 32, 32]), ("lamemo", [20, 32, 32, 32])):
        m = tiny_model(arch)
        C, B, D = m.cfg.mem_len, 2, m.cfg.d_model
        H, Dh = m.cfg.n_heads, m.cfg.head_dim
        ids = torch.randint(2, 4096, (B, sum(lens)))
        st = m.initial_state(B)
        mems = [torch.zeros(0, B, D) for _ in m.layers] if arch == "transformer-xl" else \
            [torch.zeros(0, B, D)] + [torch.zeros(0, B, H, Dh), torch.zeros(0, B, H)] * m.cfg.n_layers
        off = 0
        for i, T in enumerate(lens):
            seg = ids[:, off:off + T]
            off += T
            h, st = m.forward_segment(seg, torch.ones_like(seg), st)
            if arch == "transformer-xl":
                hr, mems = xl_reference(m, seg.t(), mems)
                n = mems[0].size(0)
                ds = max((st["mems"][:, l, C - n:] - mems[l].transpose(0, 1)).abs().max().item() for l in range(len(mems)))
            else:
                hr, mems = lamemo_reference(m, seg.t(), mems)
                n = mems[0].size(0)
                ds = max([(st["mem_emb"][:, C - n:] - mems[0].transpose(0, 1)).abs().max().item()] +
                         [(st["recur"][:, l, C - n:] - mems[1 + 2 * l].transpose(0, 1).reshape(B, n, D)).abs().max().item()
                          for l in range(m.cfg.n_layers)] +
                         [(st["denom"][:, l, C - n:] - mems[2 + 2 * l].transpose(0, 1)).abs().max().item()
                          for l in range(m.cfg.n_layers)])
            check(f"{arch} vs reference, segment {i} ({T} tokens): hidden", (h - hr.transpose(0, 1)).abs().max().item())
            check(f"{arch} vs reference, segment {i}: state ({n} cached)", ds)
            check(f"{arch} segment {i}: mem_mask counts {n}", abs(st["mem_mask"][0].sum().item() - n), 0)


@torch.no_grad()
def behaviour_checks(arch):
    m = tiny_model(arch)
    S = m.cfg.segment_length
    ids = torch.randint(2, 4096, (3, 3 * S))
    one = lambda n, b=1: torch.ones(b, n, dtype=torch.long)  # noqa: E731
    st = m.initial_state(3)
    for i in range(2):
        st, _, _ = m.segment(ids[:, i * S:(i + 1) * S], one(S, 3), st)
    row = {k: v[:1] for k, v in st.items()}
    seg = ids[:1, 2 * S:]
    logits = m.lm_logits(m.forward_segment(seg, one(S), row)[0])
    worst = 0.0
    for j in (1, S // 3, S - 1):
        s2 = seg.clone()
        s2[0, j] = (s2[0, j] + 7) % 4096
        worst = max(worst, (m.lm_logits(m.forward_segment(s2, one(S), row)[0])[0, :j] - logits[0, :j]).abs().max().item())
    check(f"{arch}: a later token changes no earlier logit", worst, 0.0)
    pad, mask = ids[:, 2 * S:].clone(), one(S, 3)
    for b, n in enumerate((S, 10, 1)):
        mask[b, n:], pad[b, n:] = 0, 1
    nst, lg, lp = m.segment(pad, mask, st)
    for b, n in enumerate((S, 10, 1)):
        u, ul, ulp = m.segment(pad[b:b + 1, :n], mask[b:b + 1, :n], {k: v[b:b + 1] for k, v in st.items()})
        d = max([(u[k][0] - nst[k][b]).abs().max().item() for k in u] + [(ul[0] - lg[b]).abs().max().item(),
                float((ulp[0] - lp[b, :n]).abs().max()), float(lp[b, n:].abs().max()) if n < S else 0.0])
        check(f"{arch}: padded row of {n} tokens equals it alone", d)
    lg_d, kv = m.decode(seg[:, :20], one(20), row, m.empty_past(1))
    d = (lg_d - m.segment(seg[:, :20], one(20), row)[1]).abs().max().item()
    for t in range(20, 24):
        lg_d, kv = m.decode(seg[:, t:t + 1], one(t + 1), row, kv)
        d = max(d, (lg_d - m.segment(seg[:, :t + 1], one(t + 1), row)[1]).abs().max().item())
    check(f"{arch}: decode prefill and steps equal segment", d)
    two = {k: v[:2] for k, v in st.items()}
    p_ids, p_mask = ids[:2, 2 * S:2 * S + 12].clone(), one(12, 2)
    p_mask[1, 7:], p_ids[1, 7:] = 0, 1
    _, kv = m.decode(p_ids, p_mask, two, m.empty_past(2))
    nxt = torch.tensor([[5], [6]])
    lg_d, _ = m.decode(nxt, torch.cat([p_mask, one(1, 2)], 1), two, kv)
    d = max((lg_d[b] - m.segment(torch.cat([p_ids[b:b + 1, :n], nxt[b:b + 1]], 1), one(n + 1),
                                 {k: v[b:b + 1] for k, v in two.items()})[1][0]).abs().max().item() for b, n in enumerate((12, 7)))
    check(f"{arch}: padded decode prefill + step equals segment", d)
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 4096, n) for n in (100, 31, 64, 5, 70)]
    for reset in (False, True):
        tb, cb = batched_perplexity(m, docs, S, "cpu", reset, batch=3)
        ts, cs = 0.0, 0
        for doc in docs:
            state = m.initial_state(1)
            for i in range(0, len(doc), S):
                x = torch.from_numpy(doc[i:i + S]).unsqueeze(0)
                nxt_st, _, lpx = m.segment(x, torch.ones_like(x), m.initial_state(1) if reset else state)
                ts, cs, state = ts - lpx[0, 1:].double().sum().item(), cs + x.shape[1] - 1, nxt_st
        check(f"{arch}: batched perplexity equals one document at a time ({'reset' if reset else 'carried'})",
              abs(tb - ts) / ts + abs(cb - cs), 1e-7)


def armt_reference(m, segs):
    """ARMT as its paper's code states the algebra (modeling_amt AssociativeLayerWrapper), re-derived: per layer
    a matrix and a normaliser held as state, no read on the first segment, einsum reads of the normalised DPFP
    query, writes weighted by sigmoid(W_b) with the correction 1 - (z.k + eps) / |k|^2 clipped to [0, 1].
    Full segments, the memory carried. Returns each segment's token hidden states and the last state."""
    from rmt_toolkit.arch.armt import dpfp

    c, B = m.cfg, segs[0].shape[0]
    M, H = c.memory_tokens, c.assoc_heads
    heads = lambda t: t.reshape(t.shape[0], t.shape[1], H, -1).permute(0, 2, 1, 3)  # noqa: E731
    key = lambda t, w: F.normalize(dpfp(heads(w(t)), c.nu), dim=-1, p=2.0)  # noqa: E731
    W, Z, first, mem, outs = [None] * c.n_layers, [None] * c.n_layers, True, m.memory.unsqueeze(0).expand(B, -1, -1), []
    for seg in segs:
        T = seg.shape[1]
        x = torch.cat([mem, m.wte(seg), mem], 1) + m.wpe(torch.arange(2 * M + T)).unsqueeze(0)
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).tril().view(1, 1, n, n)
        for i, blk in enumerate(m.h):
            a = m.assoc[i]
            if not first:
                mq = key(x, a.w_q)
                num = torch.einsum("ihjk,ihkt->ihjt", mq, W[i])
                den = torch.einsum("ihk,ihjk->ihj", Z[i], mq)[..., None] + 1e-5
                x = x + (num / den).permute(0, 2, 1, 3).reshape(x.shape)
            x, _, _ = blk(x, causal)
            w = x[:, -M:]
            mk, mv = key(w, a.w_k), heads(a.w_v(w))
            if first:
                prev, coef = torch.zeros_like(mv), 1.0
                W[i] = torch.zeros(B, H, mk.shape[-1], mv.shape[-1])
                Z[i] = torch.zeros(B, H, mk.shape[-1])
            else:
                den = torch.einsum("ihj,ihkj->ihk", Z[i], mk)[..., None] + 1e-5
                prev = torch.einsum("ihjk,ihkt->ihjt", mk, W[i]) / den
                coef = torch.clip(1 - den / (torch.linalg.norm(mk, dim=-1) ** 2)[..., None], 0, 1)
            mb = heads(torch.sigmoid(a.w_b(w)))
            W[i] = W[i] + torch.einsum("ihjk,ihjt,ihjx->ihkt", mk, mv - prev, mb)
            Z[i] = Z[i] + (coef * mk).sum(dim=-2)
        first = False
        x = m.ln_f(x)
        mem = x[:, -M:]
        outs.append(x[:, M:M + T])
    return outs, {"memory": mem, "assoc": torch.stack(W, 1), "assoc_z": torch.stack(Z, 1)}


@torch.no_grad()
def armt_checks():
    """ARMT: with W_v = 0 (its init) it computes the RMT of the same weights; with W_v set, the matrices
    carry information a reset state does not (a read changes the logits)."""
    from rmt_toolkit.model import RMT

    torch.manual_seed(1)
    armt = build_model(tiny_config("armt")).eval()
    rmt = RMT(tiny_config("rmt")).eval()
    rmt.load_state_dict({k: v for k, v in armt.state_dict().items() if not k.startswith("assoc.")})
    S = armt.cfg.segment_length
    ids = torch.randint(2, 4096, (2, 3 * S))
    st, mem, d = armt.initial_state(2), rmt.initial_memory(2), 0.0
    for i in range(3):
        x, mask = ids[:, i * S:(i + 1) * S], torch.ones(2, S, dtype=torch.long)
        st, la, lpa = armt.segment(x, mask, st)
        mem, lr, lpr = rmt.segment(x, mask, mem)
        d = max(d, (st["memory"] - mem).abs().max().item(), (la - lr).abs().max().item(), (lpa - lpr).abs().max().item())
    check("armt: with W_v = 0 it is the RMT of the same weights", d)
    for blk in armt.assoc:
        blk.w_v.weight.normal_(0.0, 0.2)
    st = armt.initial_state(2)
    for i in range(2):
        st, _, _ = armt.segment(ids[:, i * S:(i + 1) * S], torch.ones(2, S, dtype=torch.long), st)
    x = ids[:, 2 * S:]
    reset = dict(st, assoc=torch.zeros_like(st["assoc"]), assoc_z=torch.zeros_like(st["assoc_z"]))
    moved = (armt.segment(x, torch.ones_like(x), st)[1] - armt.segment(x, torch.ones_like(x), reset)[1]).abs().max().item()
    check("armt: the associative matrices change the logits (1 - max |diff|)", max(0.0, 1.0 - moved), 0.999)
    m = tiny_model("armt")
    segs = [ids[:, i * S:(i + 1) * S] for i in range(3)]
    ref_h, ref_st = armt_reference(m, segs)
    st = m.initial_state(2)
    for i, seg in enumerate(segs):
        h, st = m.forward_segment(seg, torch.ones_like(seg), st)
        check(f"armt vs the reference's algebra, segment {i}: hidden", (h - ref_h[i]).abs().max().item(), 1e-4)
    for name in ref_st:
        scale = max(1.0, ref_st[name].abs().max().item())
        check(f"armt vs the reference's algebra: state {name} (relative to its largest value, {scale:.1f})",
              (st[name] - ref_st[name]).abs().max().item() / scale, 1e-5)


if __name__ == "__main__":
    armt_checks()
    reference_checks()
    for a in ARCHS:
        behaviour_checks(a)
    print(f"{results[0]} passed, {results[1]} failed")
    sys.exit(1 if results[1] else 0)
