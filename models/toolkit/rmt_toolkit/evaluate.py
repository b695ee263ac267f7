"""Evaluation on the held-out Brown files only: recall accuracy by length and perplexity.

Recall: a sample counts as correct when greedy decoding after the question reproduces the whole
answer (" kitchen.") token for token. "reset" re-initialises the memory at every segment, so the
question segment sees only the initial memory: the answer can then come from nowhere but chance.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import arch
from .data import TokenStream, load_split
from .two_fact import make_builder, task_from_dict
from .train import question_batch, run_context


@torch.no_grad()
def greedy_answer(model, state: dict, samples: list[dict], pad_id: int) -> list[bool]:
    dev = next(iter(state.values())).device
    qids, qmask, _ = question_batch(samples, pad_id, with_answer=False)
    ids, mask = torch.from_numpy(qids).to(dev), torch.from_numpy(qmask).to(dev)
    want = [s["answer"].tolist() for s in samples]
    got = [[] for _ in samples]
    for _ in range(max(len(w) for w in want)):
        _, logits, _ = arch.segment(model, ids, mask, state)
        nxt = logits.argmax(-1)
        # append each row's token right after its last real token
        lengths = mask.sum(1)
        ids = torch.cat([ids, torch.full_like(ids[:, :1], pad_id)], 1)
        mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], 1)
        rows = torch.arange(len(samples), device=dev)
        ids[rows, lengths] = nxt
        mask[rows, lengths] = 1
        for i, t in enumerate(nxt.tolist()):
            got[i].append(t)
    return [g[:len(w)] == w for g, w in zip(got, want)]


@torch.no_grad()
def recall_table(model, tok, data_dir: str, lengths, samples_per_length: int, batch: int, seed: int,
                 split: str = "heldout", modes=("carried", "reset"), task: dict | None = None,
                 facts: int | None = None) -> dict:
    """task: the checkpoint's task dict (its kind picks the builder; none = recall); facts: fix k per sample
    (default: k drawn from the task's min_facts..max_facts)."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    stream = TokenStream(tok, load_split(data_dir, split))
    task = task_from_dict(task)
    builder = make_builder(tok, task, stream, cfg.segment_length)
    table = {"carried": {}, "reset": {}}
    for n in lengths:
        rng = np.random.default_rng(seed + n)
        samples = [builder.sample(rng, n, k=facts) for _ in range(samples_per_length)]
        for mode in modes:
            ok = []
            for i in range(0, len(samples), batch):
                chunk = samples[i:i + batch]
                ctx = torch.from_numpy(np.stack([s["context"] for s in chunk])).to(dev)
                state, _ = run_context(model, ctx, cfg.segment_length, reset=(mode == "reset"))
                ok += greedy_answer(model, state, chunk, cfg.pad_id)
            table[mode][str(n)] = round(float(np.mean(ok)), 4)
        print({"segments": n, **{m: table[m][str(n)] for m in modes}}, flush=True)
    table["samples_per_length"] = samples_per_length
    table["chance"] = round(1.0 / len(task.places), 4)
    if facts:
        table["facts"] = facts
    return table


@torch.no_grad()
def batched_perplexity(model, docs: list, S: int, dev, reset: bool, batch: int = 64) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) over whole documents, t >= 1 of each segment,
    for the state-conditioned models: up to `batch` documents side by side, each row's segment i
    right-padded (a padded row computes what it computes alone: verify checks it), the state kept
    per document. The same sum as reading each document alone, far fewer calls."""
    total, count = 0.0, 0
    for g in range(0, len(docs), batch):
        group = [np.asarray(d, dtype=np.int64) for d in docs[g:g + batch]]
        state = model.initial_state(len(group), dev)
        for i in range(0, max(len(d) for d in group), S):
            rows = [j for j, d in enumerate(group) if len(d) > i]
            segs = [group[j][i:i + S] for j in rows]
            T = max(len(x) for x in segs)
            ids = torch.full((len(rows), T), model.cfg.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for r, x in enumerate(segs):
                ids[r, :len(x)] = torch.from_numpy(x)
                mask[r, :len(x)] = 1
            idx = torch.tensor(rows, device=dev)
            st = model.initial_state(len(rows), dev) if reset else {k: v.index_select(0, idx) for k, v in state.items()}
            nxt, _, lp = model.segment(ids.to(dev), mask.to(dev), st)
            total -= lp[:, 1:].double().sum().item()  # padding and t = 0 are exactly 0
            count += int(mask.sum().item()) - len(rows)
            for k in state:
                state[k] = state[k].index_copy(0, idx, nxt[k])
    return total, count


@torch.no_grad()
def perplexity(model, tok, data_dir: str, max_docs: int = 0) -> dict:
    """Token-level perplexity over every held-out document, split into segments; t >= 1 of each segment.
    "reset": every segment starts from the initial state (any architecture, arch.segment)."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    S = cfg.segment_length
    out = {}
    docs = load_split(data_dir, "heldout")[:max_docs or None]  # max_docs: CPU smoke runs
    if not arch.is_rmt(model):
        ids = [tok.encode(" " + d["text"]).ids for d in docs]
        for mode in ("carried", "reset"):
            total, count = batched_perplexity(model, ids, S, dev, reset=mode == "reset")
            out[mode] = round(math.exp(total / count), 3)
            out["tokens_scored"] = count
        out["documents"] = len(docs)
        return out
    for mode in ("carried", "reset"):
        total, count = 0.0, 0
        for d in docs:
            ids = tok.encode(" " + d["text"]).ids
            state = arch.initial_state(model, 1, dev)
            for i in range(0, len(ids), S):
                seg = torch.tensor([ids[i:i + S]], device=dev)
                mask = torch.ones_like(seg)
                nxt, _, lp = arch.segment(model, seg, mask, state if mode == "carried" else arch.initial_state(model, 1, dev))
                total += -lp[0, 1:].double().sum().item()
                count += seg.shape[1] - 1
                state = nxt
        out[mode] = round(math.exp(total / count), 3)
        out["tokens_scored"] = count
    out["documents"] = len(docs)
    return out
