"""Training: curriculum over the number of segments, full backpropagation through the memory.

Each batch is recall samples (noise + facts in n full segments, then question + answer). The loss is
the language-model loss on every segment (the noise is contiguous Brown text, so the memory helps it)
plus the answer loss on the question segment, which only the memory can reduce.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .config import RMTConfig
from .data import RecallBuilder, RecallTask, TokenStream, load_split
from .model import RMT
from .tokenizer import load_tokenizer


def question_batch(samples: list[dict], pad_id: int, with_answer: bool, in_context: bool = False):
    """Right-padded [question (+ answer)] rows, their mask, and the index of the last question token.

    in_context: the sample's context is put in the same row, before the question (no memory needed)."""
    rows, q_last = [], []
    for s in samples:
        head = np.concatenate([s["context"], s["question"]]) if in_context else s["question"]
        rows.append(np.concatenate([head, s["answer"]]) if with_answer else head)
        q_last.append(len(head) - 1)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask, np.asarray(q_last, dtype=np.int64)


def answer_loss(model: RMT, samples, memory, pad_id: int, in_context: bool = False):
    """Cross-entropy on the answer tokens after the question; also first-token accuracy."""
    dev = memory.device
    qids, qmask, q_last = question_batch(samples, pad_id, with_answer=True, in_context=in_context)
    qids, qmask = torch.from_numpy(qids).to(dev), torch.from_numpy(qmask).to(dev)
    h_tok, _ = model.encode_segment(qids, qmask, memory)
    logits = model.lm_logits(h_tok[:, :-1]).float()
    tgt = torch.full_like(qids[:, 1:], -100)
    for i, s in enumerate(samples):
        tgt[i, q_last[i]:q_last[i] + len(s["answer"])] = torch.from_numpy(s["answer"]).to(dev)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        first = logits[torch.arange(len(samples), device=dev), torch.from_numpy(q_last).to(dev)].argmax(-1)
        want = torch.tensor([s["answer"][0] for s in samples], device=dev)
        acc = (first == want).float().mean().item()
    return loss, acc


def run_context(model: RMT, ctx: torch.Tensor, S: int, reset: bool = False, lm_loss: bool = False):
    """Feed [B, n*S] tokens segment by segment; returns final memory and the mean LM loss."""
    B = ctx.shape[0]
    n = ctx.shape[1] // S
    init = model.initial_memory(B).to(ctx.device)
    memory = init
    ones = torch.ones(B, S, dtype=torch.long, device=ctx.device)
    losses = []
    for i in range(n):
        seg = ctx[:, i * S:(i + 1) * S]
        h_tok, h_write = model.encode_segment(seg, ones, init if reset else memory)
        if lm_loss:
            logits = model.lm_logits(h_tok[:, :-1])
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), seg[:, 1:].reshape(-1)))
        memory = h_write.float()
    if reset:
        memory = init
    return memory, (torch.stack(losses).mean() if losses else None)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = RMTConfig.load(args.config) if args.config else RMTConfig()
    if args.dropout is not None:
        cfg.dropout = args.dropout
    tok = load_tokenizer(args.tokenizer)
    if tok.get_vocab_size() != cfg.vocab_size:
        raise SystemExit(f"config vocab_size {cfg.vocab_size} != tokenizer vocabulary {tok.get_vocab_size()}")
    task = RecallTask()
    stream = TokenStream(tok, load_split(args.data, "train"))
    builder = RecallBuilder(tok, task, stream, cfg.segment_length)
    model = RMT(cfg).to(dev).train()
    resumed = torch.load(args.resume, map_location=dev) if args.resume else None
    if resumed:
        model.load_state_dict(resumed["state_dict"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    stages = [int(s) for s in args.stages.split(",")]
    S = cfg.segment_length
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
    budget = args.minutes * 60.0
    t0 = time.time()
    stage, stage_steps, step, recent = 0, 0, 0, []
    log = []
    os.makedirs(args.out, exist_ok=True)
    while True:
        elapsed = time.time() - t0
        if elapsed > budget or (args.max_steps and step >= args.max_steps):
            break
        n_max = stages[stage]
        n = n_max if rng.random() < 0.5 else int(rng.integers(1, n_max + 1))
        samples = [builder.sample(rng, n) for _ in range(args.batch)]
        ctx = torch.from_numpy(np.stack([s["context"] for s in samples])).to(dev)
        # lr: warm-up, constant through the curriculum, cosine decay over the last 20% of the budget.
        frac = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / 100)
        if frac > 0.8 and stage == len(stages) - 1:
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (frac - 0.8) / 0.2))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(**amp) if amp else torch.enable_grad():
            memory, lm = run_context(model, ctx, S, lm_loss=True)
            ans, acc = answer_loss(model, samples, memory, cfg.pad_id)
            loss = args.lm_weight * lm + args.answer_weight * ans
            if args.in_context_batch:
                # Facts and question in one segment: teaches the retrieval the memory path then reuses.
                # Variable noise around the facts, down to almost none: dense facts make the binding easy to find.
                ic = [builder.sample(rng, 0, total=int(rng.integers(32, S - builder.max_qa + 1)))
                      for _ in range(args.in_context_batch)]
                ic_loss, ic_acc = answer_loss(model, ic, model.initial_memory(len(ic)).to(dev), cfg.pad_id, in_context=True)
                loss = loss + args.answer_weight * ic_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if n == n_max:
            recent = (recent + [acc])[-args.window:]
        step += 1
        stage_steps += 1
        if step % 25 == 0:
            row = {"step": step, "stage": n_max, "n": n, "lm": round(lm.item(), 4), "answer": round(ans.item(), 4), "acc": round(acc, 3),
                   "ic_acc": round(ic_acc, 3) if args.in_context_batch else None,
                   "acc_recent": round(float(np.mean(recent)), 3) if recent else None, "lr": lr,
                   "sec": round(time.time() - t0, 1)}
            log.append(row)
            print(json.dumps(row), flush=True)
        if (stage < len(stages) - 1 and stage_steps >= args.min_stage_steps and len(recent) >= args.window
                and np.mean(recent) >= args.advance_acc):
            print(json.dumps({"advance": stages[stage + 1], "step": step, "sec": round(time.time() - t0, 1)}), flush=True)
            stage, stage_steps, recent = stage + 1, 0, []
    wall = time.time() - t0
    training = {"data": {"train_files": len(load_split(args.data, "train")), "train_tokens": int(len(stream.ids)),
                         "note": "Brown corpus training files (number not divisible by 5); recall samples built on the fly"},
                "steps": step, "batch": args.batch, "stages": stages, "reached_stage": stages[stage],
                "wall_time_s": round(wall, 1), "lr": args.lr, "answer_weight": args.answer_weight, "lm_weight": args.lm_weight,
                "in_context_batch": args.in_context_batch, "dropout": cfg.dropout,
                "hardware": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                "precision": "bf16 autocast" if amp else "fp32", "seed": args.seed}
    if resumed:
        training["resumed_from"] = resumed.get("training", {})
    ck = {"config": cfg.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
          "task": task.to_dict(), "training": training}
    torch.save(ck, os.path.join(args.out, "model.pt"))
    with open(os.path.join(args.out, "train-log.json"), "w") as fh:
        json.dump({"training": training, "log": log}, fh, indent=1)
    return training
