"""Checks the recall tasks' sample builders (CPU, seconds): PYTHONPATH=models/toolkit python3 models/toolkit/check_tasks.py
[--data var/brown-data] [--tokenizer models/rmt-brown-small/tokenizer.json] [--samples 200]

qa2: the answer is the holder's LAST location (recomputed by replaying the facts), holders and objects
distinct, every fact inside the noise at a sentence start, the context exactly as long as asked, stage 0
rows fit one segment, and k holders fit one segment (the service bench's fact segment, then D segments
of noise). recall: shipped packages' kind-less task still builds the recall task, unchanged.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from rmt_toolkit.data import RecallTask, TokenStream, load_split
from rmt_toolkit.tokenizer import load_tokenizer
from rmt_toolkit.train import in_context_samples, qa_batch
from rmt_toolkit.two_fact import TwoFactBuilder, TwoFactTask, make_builder, task_from_dict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def text(tok, ids) -> str:
    """Byte-level BPE pieces -> text (enough for ASCII checks; the pure-Python tokenizer has no decode)."""
    return "".join(tok.id_to_token(int(i)) for i in ids).replace("\u0120", " ").replace("\u010a", "\n")


def replay(facts) -> dict:
    """object -> place, by walking the facts in context order (who carries what, where each name is)."""
    where, carrier = {}, {}
    for kind, name, _, what in facts:
        if kind == "pickup":
            carrier[what] = name
        else:
            where[name] = what
    return {o: where[n] for o, n in carrier.items()}


def check_qa2(tok, stream, S: int, n: int, rng) -> list[dict]:
    b = TwoFactBuilder(tok, TwoFactTask(max_facts=5), stream, S)
    shown = []
    for i in range(n):
        k = int(rng.integers(1, 6))
        segs = int(rng.integers(1, 4))
        s = b.sample(rng, segs, k=k)
        ctx = s["context"]
        assert len(ctx) == segs * S, (len(ctx), segs * S)
        names = [h[0] for h in s["holders"]]
        objs = [h[1] for h in s["holders"]]
        assert len(set(names)) == k and len(set(objs)) == k, s["holders"]
        truth = replay(s["facts"])
        assert truth[s["object"]] == s["place"], (s["facts"], s["object"], s["place"])
        for name, obj, place in s["holders"]:
            assert truth[obj] == place
        assert text(tok, s["answer"]) == f" {s['place']}."
        for (a, z), f in zip(s["spans"], s["facts"]):
            assert list(ctx[a:z]) == list(b.ids_of(f)), f
            # a sentence start: the context's start, or right after a token ending in "."
            assert a == 0 or tok.id_to_token(int(ctx[a - 1])).endswith("."), (f, a, tok.id_to_token(int(ctx[a - 1])), s["spans"])
        assert len(s["qa"]) == k
        if i < 3:
            shown.append({"k": k, "segments": segs, "facts": [text(tok, ctx[a:z]) for a, z in s["spans"]],
                          "question": text(tok, s["question"]), "answer": text(tok, s["answer"])})
    return shown


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.path.join(REPO, "var/brown-data"))
    p.add_argument("--tokenizer", default=os.path.join(REPO, "models/rmt-brown-small/tokenizer.json"))
    p.add_argument("--samples", type=int, default=200)
    a = p.parse_args()
    tok = load_tokenizer(a.tokenizer)
    stream = TokenStream(tok, load_split(a.data, "heldout")[:20])
    S = 128  # the shipped models' segment length
    rng = np.random.default_rng(0)

    # recall: kind-less dicts (the shipped packages' model.json) build the recall task unchanged
    shipped = json.load(open(os.path.join(REPO, "models/rmt-brown-small/model.json")))["task"]
    assert "kind" not in RecallTask().to_dict()
    assert task_from_dict(shipped) == RecallTask() and task_from_dict(None) == RecallTask()
    assert task_from_dict(TwoFactTask().to_dict()) == TwoFactTask()
    rb = make_builder(tok, RecallTask(max_facts=5), stream, S)
    for k in range(1, 6):
        assert len(rb.sample(rng, 2, k=k)["qa"]) == k
    # stage 0 holds k * (max_qa + max_fact) tokens: the most --ic-max-facts allows at this segment length
    ic_max = S // (rb.max_qa + rb.max_fact)
    assert len(in_context_samples(rb, rng, 16, ic_max)) == 16
    print(json.dumps({"recall_max_fact": rb.max_fact, "recall_max_qa": rb.max_qa, "recall_ic_max_facts_fit": ic_max}))

    shown = check_qa2(tok, stream, S, a.samples, rng)
    qb = make_builder(tok, TwoFactTask(), stream, S)
    assert S // (qb.max_qa + qb.max_fact) >= qb.task.max_facts  # the default --ic-max-facts fits
    ic = in_context_samples(qb, rng, 64, qb.task.max_facts)  # stage 0: facts and every question in one segment
    ids, _, _, _ = qa_batch(ic, 1, in_context=True)
    assert ids.shape[1] <= S, ids.shape
    # The service bench's layout: all facts in the first segment, then D segments of noise.
    fits = {}
    for k in range(1, 6):
        worst = k * qb.max_fact
        try:
            s = qb.sample(rng, 1, k=k)
            fits[k] = {"tokens": sum(z - a for a, z in s["spans"]), "worst_case": worst, "always_fits": worst <= S}
        except ValueError:
            fits[k] = {"worst_case": worst, "always_fits": False}
    print(json.dumps({"qa2_samples_checked": a.samples, "max_fact_per_holder": qb.max_fact, "max_qa": qb.max_qa,
                      "stage0_row_tokens_max": int(ids.shape[1]), "one_segment_fact_tokens": fits}))
    for s in shown:
        print(json.dumps(s))
    print("check_tasks OK")


if __name__ == "__main__":
    main()
