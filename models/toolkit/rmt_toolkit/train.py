"""Training: a curriculum over the number of segments, full backpropagation through the memory.

Stage 0 (in-context): facts and all their questions in one segment, no memory needed. It teaches the
name -> place binding that the memory path reuses; asking every fact's question (multi-query) gives
k answers of gradient per row and defeats the shortcut of naming any place that was mentioned, on
which single-question training plateaus at (1 + 1/2 + 1/3) / 3 = 0.61 first-token accuracy.

Stage n >= 1: n full segments of Brown noise with the facts at random positions, run segment by
segment with the memory carried; then a segment holding only the questions and answers, which only
the memory can answer. The loss is the language-model loss on every noise segment (contiguous Brown
text, so the memory also learns to carry what helps prediction, over as many segments as the stage
has) plus the answer loss. A smaller in-context batch keeps stage 0's skill. A stage is passed when
the first-answer-token accuracy at its full length stays above --advance-acc; its checkpoint is kept.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import arch
from .config import RMTConfig, config_from_dict, load_config
from .data import RecallBuilder, RecallTask, TokenStream, load_split
from .tokenizer import load_tokenizer
from .two_fact import make_builder, task_from_dict


def question_batch(samples: list[dict], pad_id: int, with_answer: bool, in_context: bool = False):
    """Right-padded [question (+ answer)] rows, their mask, and the index of the last question token.

    in_context: the sample's context is put in the same row, before the question (no memory needed)."""
    rows, q_last = [], []
    for s in samples:
        head = np.concatenate([s["context"], s["question"]]) if in_context else s["question"]
        rows.append(np.concatenate([head, s["answer"]]) if with_answer else head)
        q_last.append(len(head) - 1)
    return _pad(rows, pad_id) + (np.asarray(q_last, dtype=np.int64),)


def _pad(rows, pad_id: int):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def qa_batch(samples: list[dict], pad_id: int, in_context: bool):
    """Rows [context?; q1 a1; q2 a2; ...] (every fact asked), and targets aligned with ids[:, 1:]:
    the answer tokens, -100 elsewhere. first: (row, position) of each answer's first-token logit."""
    rows, targets, first = [], [], []
    for i, s in enumerate(samples):
        parts = [s["context"]] if in_context else []
        tgt = [np.full(len(s["context"]), -100)] if in_context else []
        for q, a in s["qa"]:
            parts += [q, a]
            tgt += [np.full(len(q), -100), a]
        row = np.concatenate(parts)
        t = np.concatenate(tgt)
        pos = len(parts[0]) if in_context else 0
        for q, a in s["qa"]:
            first.append((i, pos + len(q) - 1))
            pos += len(q) + len(a)
        rows.append(row)
        targets.append(t[1:])  # target for the logit at t predicts row[t + 1]
    ids, mask = _pad(rows, pad_id)
    tgt = np.full((len(rows), ids.shape[1] - 1), -100, dtype=np.int64)
    for i, t in enumerate(targets):
        tgt[i, :len(t)] = t
    return ids, mask, tgt, np.asarray(first, dtype=np.int64).reshape(-1, 2)


def answer_loss(model, samples, state: dict, pad_id: int, in_context: bool = False):
    """Cross-entropy on every answer token; first-answer-token accuracy."""
    dev = next(iter(state.values())).device
    ids, mask, tgt, first = qa_batch(samples, pad_id, in_context)
    ids, mask, tgt = (torch.from_numpy(a).to(dev) for a in (ids, mask, tgt))
    h_tok, _ = arch.forward(model, ids, mask, state)
    logits = model.lm_logits(h_tok[:, :-1]).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        r, p = torch.from_numpy(first[:, 0]).to(dev), torch.from_numpy(first[:, 1]).to(dev)
        acc = (logits[r, p].argmax(-1) == tgt[r, p]).float().mean().item()
    return loss, acc


def run_context(model, ctx: torch.Tensor, S: int, reset: bool = False, lm_loss: bool = False):
    """Feed [B, n*S] tokens segment by segment; returns the final state (a dict, any architecture) and
    the mean LM loss. The state is not detached: the recall curriculum backpropagates through it over
    the whole sample (for Transformer-XL too, which the LM training detaches per segment)."""
    B = ctx.shape[0]
    n = ctx.shape[1] // S
    init = arch.initial_state(model, B, ctx.device)
    state = init
    ones = torch.ones(B, S, dtype=torch.long, device=ctx.device)
    losses = []
    for i in range(n):
        seg = ctx[:, i * S:(i + 1) * S]
        h_tok, state = arch.forward(model, seg, ones, init if reset else state)
        if lm_loss:
            logits = model.lm_logits(h_tok[:, :-1])
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), seg[:, 1:].reshape(-1)))
    if reset:
        state = init
    return state, (torch.stack(losses).mean() if losses else None)


def in_context_samples(builder: RecallBuilder, rng, count: int, max_facts: int) -> list[dict]:
    """Facts in 0..(room) tokens of noise, all their questions after them, one segment in all."""
    out = []
    for _ in range(count):
        k = int(rng.integers(1, max_facts + 1))
        room = builder.S - k * (builder.max_qa + builder.max_fact)
        if room < 0:
            raise SystemExit(f"{k} facts and their questions do not fit in one {builder.S}-token segment: lower --ic-max-facts")
        out.append(builder.sample(rng, 0, total=k * builder.max_fact + int(rng.integers(0, room + 1)), k=k))
    return out


def save(model, cfg, task: RecallTask, training: dict, path: str) -> None:
    ck = {"config": cfg.to_dict(), "state_dict": {k: v.detach().float().cpu() for k, v in model.state_dict().items()},
          "task": task.to_dict(), "training": training}
    torch.save(ck, path + ".tmp")
    os.replace(path + ".tmp", path)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resumed = torch.load(args.resume, map_location="cpu") if args.resume else None
    cfg = config_from_dict(resumed["config"]) if resumed else (load_config(args.config) if args.config else RMTConfig())
    cfg.dropout = args.dropout
    tok = load_tokenizer(args.tokenizer)
    if tok.get_vocab_size() != cfg.vocab_size:
        raise SystemExit(f"config vocab_size {cfg.vocab_size} != tokenizer vocabulary {tok.get_vocab_size()}")
    # --task (default: the resumed checkpoint's kind, else recall); facts per sample default to the task's.
    old_task = (resumed or {}).get("task") or {}
    task = task_from_dict(old_task if args.task in (None, old_task.get("kind", "recall")) else None, args.task)
    args.train_max_facts = args.train_max_facts or task.max_facts
    args.ic_max_facts = args.ic_max_facts or task.max_facts
    task.max_facts = args.train_max_facts  # what evaluation samples (evaluate --facts fixes a count)
    stream = TokenStream(tok, load_split(args.data, "train"))
    builder = make_builder(tok, task, stream, cfg.segment_length)
    model = arch.build_model(cfg).to(dev).train()
    if resumed:
        model.load_state_dict(resumed["state_dict"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01,
                            **({"fused": True} if dev.type == "cuda" else {}))  # torch 1.13 has no `fused`
    stages = [int(s) for s in args.stages.split(",")]
    prev = resumed.get("training", {}) if resumed else {}
    # A resumed run continues the curriculum where the checkpoint left it.
    stage = stages.index(prev["reached_stage"]) if prev.get("reached_stage") in stages and not args.restart_curriculum else 0
    S = cfg.segment_length
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
    budget = args.minutes * 60.0
    t0 = last_save = time.time()
    stage_steps, step, recent = 0, 0, []
    log, passed = [], ([] if args.restart_curriculum else list(prev.get("passed", [])))  # passes of this curriculum
    os.makedirs(args.out, exist_ok=True)

    def training_record() -> dict:
        return {"data": {"train_files": len(load_split(args.data, "train")), "train_tokens": int(len(stream.ids)),
                         "note": "Brown corpus training files (number not divisible by 5); recall samples built on the fly"},
                "steps": prev.get("steps", 0) + step, "wall_time_s": round(prev.get("wall_time_s", 0) + time.time() - t0, 1),
                "batch": args.batch, "stages": stages, "reached_stage": stages[stage], "passed": passed,
                "lr": args.lr, "answer_weight": args.answer_weight, "lm_weight": args.lm_weight,
                "in_context_batch": args.in_context_batch, "train_max_facts": args.train_max_facts,
                "ic_max_facts": args.ic_max_facts, "task": getattr(task, "kind", "recall"),
                "architecture": arch.architecture_of(cfg), "dropout": cfg.dropout, "hardware": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                "precision": "bf16 autocast" if amp else "fp32", "seed": args.seed,
                "runs": prev.get("runs", 0) + 1}

    while True:
        elapsed = time.time() - t0
        if elapsed > budget or (args.max_steps and step >= args.max_steps):
            break
        n_max = stages[stage]
        frac = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / 100)
        if args.decay and frac > 1 - args.decay:  # cosine to 10% over the last part of the final run
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (frac - 1 + args.decay) / args.decay))
        for g in opt.param_groups:
            g["lr"] = lr
        row = {}
        with torch.autocast(**amp) if amp else torch.enable_grad():
            if n_max == 0:
                n = 0
                ic = in_context_samples(builder, rng, args.batch, args.ic_max_facts)
                ans, acc = answer_loss(model, ic, arch.initial_state(model, len(ic), dev), cfg.pad_id, in_context=True)
                # Two segments of plain text keep the language model and the memory's LM use going.
                lm_ctx = np.stack([builder.sample(rng, 2)["context"] for _ in range(args.lm_batch)])
                _, lm = run_context(model, torch.from_numpy(lm_ctx).to(dev), S, lm_loss=True)
                loss = args.answer_weight * ans + args.lm_weight * lm
                row["ic_acc"] = round(acc, 3)
            else:
                n = n_max if rng.random() < 0.5 else int(rng.integers(1, n_max + 1))
                samples = [builder.sample(rng, n, k=int(rng.integers(1, args.train_max_facts + 1)))
                           for _ in range(args.batch)]
                ctx = torch.from_numpy(np.stack([s["context"] for s in samples])).to(dev)
                memory, lm = run_context(model, ctx, S, lm_loss=True)
                ans, acc = answer_loss(model, samples, memory, cfg.pad_id)
                loss = args.lm_weight * lm + args.answer_weight * ans
                if args.in_context_batch:
                    ic = in_context_samples(builder, rng, args.in_context_batch, args.ic_max_facts)
                    ic_loss, ic_acc = answer_loss(model, ic, arch.initial_state(model, len(ic), dev), cfg.pad_id,
                                                  in_context=True)
                    loss = loss + args.answer_weight * ic_loss
                    row["ic_acc"] = round(ic_acc, 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if n == n_max:
            recent = (recent + [acc])[-args.window:]
        step += 1
        stage_steps += 1
        if step % 25 == 0:
            row = {"step": step, "stage": n_max, "n": n, "lm": round(lm.item(), 4), "answer": round(ans.item(), 4),
                   "acc": round(acc, 3), **row, "acc_recent": round(float(np.mean(recent)), 3) if recent else None,
                   "lr": round(lr, 6), "sec": round(time.time() - t0, 1)}
            log.append(row)
            print(json.dumps(row), flush=True)
        if len(recent) >= args.window and stage_steps >= args.min_stage_steps and np.mean(recent) >= args.advance_acc:
            if n_max not in [p["stage"] for p in passed]:
                passed.append({"stage": n_max, "step": prev.get("steps", 0) + step,
                               "acc_recent": round(float(np.mean(recent)), 4)})
                if n_max:  # each passed memory stage keeps its checkpoint
                    save(model, cfg, task, training_record(), os.path.join(args.out, f"passed-{n_max}.pt"))
            if stage == len(stages) - 1:
                recent = []  # last stage: keep training at it
            else:
                print(json.dumps({"advance": stages[stage + 1], "step": step, "sec": round(time.time() - t0, 1)}), flush=True)
                stage, stage_steps, recent = stage + 1, 0, []
        if time.time() - last_save > args.save_every:
            save(model, cfg, task, training_record(), os.path.join(args.out, "model.pt"))
            last_save = time.time()
    training = training_record()
    if resumed:
        training["resumed_from"] = os.path.basename(args.resume)
    save(model, cfg, task, training, os.path.join(args.out, "model.pt"))
    with open(os.path.join(args.out, "train-log.json"), "w") as fh:
        json.dump({"training": training, "log": log}, fh, indent=1)
    return training


# ---- language model ---------------------------------------------------------------------------------

def is_validation(file_id: str) -> bool:
    """Training files set aside to pick the LM checkpoint (early stopping): number % 20 == 1."""
    return int(file_id[2:]) % 20 == 1


@torch.no_grad()
def lm_perplexity(model, docs_ids: list[np.ndarray], S: int, dev, reset: bool) -> float:
    """Perplexity over whole documents (each starts from the initial state), t >= 1 of each segment."""
    model.eval()
    total, count = 0.0, 0
    if not arch.is_rmt(model):
        from .evaluate import batched_perplexity

        total, count = batched_perplexity(model, docs_ids, S, dev, reset)
        docs_ids = []
    for ids in docs_ids:
        state = arch.initial_state(model, 1, dev)
        for i in range(0, len(ids), S):
            seg = torch.from_numpy(ids[i:i + S]).unsqueeze(0).to(dev)
            nxt, _, lp = arch.segment(model, seg, torch.ones_like(seg), arch.initial_state(model, 1, dev) if reset else state)
            total -= lp[0, 1:].double().sum().item()
            count += seg.shape[1] - 1
            state = nxt
    model.train()
    return math.exp(total / count)


def window_loss(model, ctx: torch.Tensor, S: int, amp) -> float:
    """A state-conditioned model over a window of segments: the LM loss (t >= 1 of each segment) of
    each segment, its state carried to the next. The state is detached between segments, as
    Transformer-XL caches its mems (and LaMemo its memory) without gradient, so each segment's loss
    is backpropagated at once (the same gradient as the window's mean, in one segment's memory)."""
    B = ctx.shape[0]
    n = ctx.shape[1] // S
    state = model.initial_state(B, ctx.device)
    ones = torch.ones(B, S, dtype=torch.long, device=ctx.device)
    total = 0.0
    for i in range(n):
        seg = ctx[:, i * S:(i + 1) * S]
        with torch.autocast(**amp) if amp else torch.enable_grad():
            h, nxt = model.forward_segment(seg, ones, state)
            logits = model.lm_logits(h[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), seg[:, 1:].reshape(-1)) / n
        loss.backward()
        total += loss.item()
        state = {k: v.detach() for k, v in nxt.items()}
    return total


def train_lm(args) -> dict:
    """Language model: windows of --segments consecutive segments of training text, the state carried
    over the window (the RMT's memory with full backpropagation through it; the other architectures'
    state detached between segments, window_loss), dropout and weight decay; the checkpoint kept is the
    one with the lowest perplexity (state carried) on validation files taken from the training split."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config) if args.config else RMTConfig()
    cfg.dropout = args.dropout
    tok = load_tokenizer(args.tokenizer)
    if tok.get_vocab_size() != cfg.vocab_size:
        raise SystemExit(f"config vocab_size {cfg.vocab_size} != tokenizer vocabulary {tok.get_vocab_size()}")
    docs = load_split(args.data, "train")
    train_docs = [d for d in docs if not is_validation(d["id"])]
    val_docs = [d for d in docs if is_validation(d["id"])][:args.val_docs or None]  # --val-docs: CPU smoke runs
    val_ids = [np.asarray(tok.encode(" " + d["text"]).ids, dtype=np.int64) for d in val_docs]
    stream = TokenStream(tok, train_docs)
    S, n = cfg.segment_length, args.segments
    model = arch.build_model(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay,
                            **({"fused": True} if dev.type == "cuda" else {}))  # torch 1.13 has no `fused`
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
    budget = args.minutes * 60.0
    t0 = time.time()
    best, best_step, step, log = float("inf"), 0, 0, []
    os.makedirs(args.out, exist_ok=True)
    task = RecallTask()

    def evaluate_and_keep(lm: float, lr: float) -> bool:
        """Validation perplexity; saves the checkpoint when it is the best so far. True: stop early."""
        nonlocal best, best_step
        ppl = lm_perplexity(model, val_ids, S, dev, reset=False)
        row = {"step": step, "train_loss": round(lm, 4), "val_ppl_carried": round(ppl, 3), "lr": round(lr, 6),
               "sec": round(time.time() - t0, 1)}
        if ppl < best:
            best, best_step = ppl, step
            row["best"] = True
            training = {"objective": "language model only (no recall task)", "architecture": arch.architecture_of(cfg),
                        "state_across_segments": "backpropagated through the window" if arch.is_rmt(model) else
                        "detached between segments (as Transformer-XL's mems)",
                        "data": {"train_files": len(train_docs), "train_tokens": int(len(stream.ids)),
                                 "validation_files": len(val_ids),
                                 "note": "Brown training files (number not divisible by 5); validation = training "
                                         "files with number % 20 == 1, used only to pick the checkpoint"},
                        "steps": step, "batch": args.batch, "segments_per_window": n, "lr": args.lr,
                        "dropout": cfg.dropout, "weight_decay": args.weight_decay,
                        "validation_perplexity_carried": round(ppl, 3),
                        "hardware": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                        "precision": "bf16 autocast" if amp else "fp32", "seed": args.seed,
                        "wall_time_s": round(time.time() - t0, 1)}
            save(model, cfg, task, training, os.path.join(args.out, "model.pt"))
        log.append(row)
        print(json.dumps(row), flush=True)
        if step - best_step >= args.patience * args.eval_every:
            print(json.dumps({"early_stop": step, "best_step": best_step, "best_val_ppl": round(best, 3)}), flush=True)
            return True
        return False

    lm, lr = float("nan"), args.lr
    while time.time() - t0 < budget and (not args.max_steps or step < args.max_steps):
        frac = (time.time() - t0) / budget
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, len(stream.ids) - n * S, args.batch)
        ctx = torch.from_numpy(np.stack([stream.ids[s:s + n * S] for s in starts])).to(dev)
        opt.zero_grad(set_to_none=True)
        if arch.is_rmt(model):
            with torch.autocast(**amp) if amp else torch.enable_grad():
                _, lm = run_context(model, ctx, S, lm_loss=True)
            lm.backward()
            lm = lm.item()
        else:
            lm = window_loss(model, ctx, S, amp)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0 and evaluate_and_keep(lm, lr):
            break
    if best == float("inf"):  # the budget ended before the first evaluation: keep what there is
        evaluate_and_keep(lm, lr)
    val_reset = None
    ck = torch.load(os.path.join(args.out, "model.pt"), map_location=dev)
    model.load_state_dict(ck["state_dict"])
    val_reset = lm_perplexity(model, val_ids, S, dev, reset=True)
    ck["training"]["validation_perplexity_reset"] = round(val_reset, 3)
    ck["training"]["total_wall_time_s"] = round(time.time() - t0, 1)
    ck.pop("task", None)  # not trained on the recall task
    torch.save(ck, os.path.join(args.out, "model.pt"))
    with open(os.path.join(args.out, "train-log.json"), "w") as fh:
        json.dump({"training": ck["training"], "log": log}, fh, indent=1)
    return ck["training"]
