"""Renders a package's README.md (model card) from its model.json, so the card's figures are the measured ones."""
from __future__ import annotations

import json
import os


# What each state-conditioned architecture is, what its state holds and why (models/README.md has the contract).
ARCH_NOTES = {
    "transformer-xl": (
        "Transformer-XL (Dai et al. 2019; kimiyoung/transformer-xl, attn_type 0): relative positions, post-LayerNorm, "
        "segment-level recurrence through a cache of hidden states.",
        {"mems": "layer l's input hidden states (l = 0: the scaled word embeddings) at the last mem_len real positions: "
                 "what layer l attends to before the segment. The reference also caches the last layer's output, which "
                 "no layer reads, so it is not kept.",
         "mem_mask": "1 where a cache slot holds a position (slots fill from the right); an empty history is a shorter "
                     "cache, not zeros attended to."},
        "The cache is detached between segments in training, as in the reference (its mems are cached under no_grad)."),
    "lamemo": (
        "LaMemo (Ji et al. 2022; thu-coai/LaMemo, attn_type 3): a Transformer-XL whose memory looks ahead: each layer's "
        "memory positions attend to the keys on their right (the later memory positions and the segment's first token) "
        "and interpolate that with the attention they had when written, weighted by the two softmax normalisers; the "
        "refreshed memory is the next layer's memory.",
        {"mem_emb": "the scaled word embeddings of the last mem_len real positions: the only hidden states kept, since "
                    "every layer's memory is recomputed from them",
         "recur": "per layer, those positions' attention vectors (heads concatenated, before the output projection): "
                  "the old attention the look-ahead is interpolated with",
         "denom": "per layer and head, the log normaliser of each stored attention vector, which sets the interpolation "
                  "weight",
         "mem_mask": "1 where a slot holds a position (slots fill from the right)"},
        "The memory is detached between segments in training, as in the reference. The look-ahead window is the "
        "reference's for full segments; for a partial segment it is kept at the full-segment window (the reference "
        "narrows it), so a token's logits never depend on later tokens and decode's KV cache stays valid."),
    "memtransformer": (
        "Memory Transformer (Burtsev et al. 2020): trainable [mem] tokens prepended to every segment, on the "
        "Transformer-XL backbone as in the RMT paper's language-model baselines. The [mem] tokens read the cache and "
        "each other (causally they cannot read the segment after them); the tokens read the cache, the [mem] tokens and "
        "the tokens before them.",
        {"mems": "the Transformer-XL cache: layer l's input hidden states of the last mem_len real tokens ([mem] tokens "
                 "are not cached: they restart from their trained embeddings every segment)",
         "mem_mask": "1 where a cache slot holds a position"},
        "What crosses segments is the Transformer-XL cache, detached between segments in training as in Transformer-XL; "
        "the memory is not recurrent."),
    "memctrl": (
        "MemCtrl Transformer (Burtsev et al. 2020): as memtransformer, but the [mem] positions are updated by a dedicated "
        "sub-network (their own attention and feed-forward weights per layer), on the Transformer-XL backbone.",
        {"mems": "the Transformer-XL cache of the tokens' layer inputs (last mem_len real tokens)",
         "mem_mask": "1 where a cache slot holds a position"},
        "What crosses segments is the Transformer-XL cache, detached between segments in training; the memory "
        "controller doubles the layers' parameters."),
    "membottleneck": (
        "MemBottleneck Transformer (Burtsev et al. 2020): the tokens attend only to memory; the memory (its own weights) "
        "attends to itself, the cache and the tokens. To stay causal, token t reads a view of the memory that has "
        "attended to tokens <= t only: one view per position, the view's [mem] tokens at t's position (relative "
        "distance 0), so no token sees a later one through the memory (a test changes later tokens and compares).",
        {"mems": "the Transformer-XL cache of the tokens' layer inputs (last mem_len real tokens), read by the memory only",
         "mem_mask": "1 where a cache slot holds a position"},
        "What crosses segments is the Transformer-XL cache, detached between segments in training; the per-position "
        "memory views cost memory_tokens x the tokens' feed-forward work."),
    "armt": (
        "The RMT (GPT-2 blocks, [read memory; tokens; write memory], causal attention) with an ARMT-style associative "
        "memory in every layer (Rodkin et al. 2024; RodkinIvan/associative-recurrent-memory-transformer): before each "
        "block every position adds what the layer's matrix answers to its DPFP key; after it the write memory's outputs "
        "are stored as key -> value pairs by the delta rule (only the part of a key not yet stored counts).",
        {"memory": "the RMT's recurrent memory tokens: the last layer's outputs at the write positions (with "
                   "carry_memory off, the learned initial memory every segment)",
         "assoc": "per layer and head, the associative matrix: DPFP key features x value dimensions, the sum of the "
                  "stored key -> value updates",
         "assoc_z": "per layer and head, the sum of the stored keys (the normaliser of a read)"},
        "The state is backpropagated through in training, as the RMT's memory is."),
}


def render(package_dir: str, notes: str = "") -> str:
    m = json.load(open(os.path.join(package_dir, "model.json")))
    if m.get("architecture", "rmt") != "rmt":
        return render_state(m, notes)
    c, t, ev = m["config"], m.get("training", {}), m.get("eval", {})
    out = [f"# {m['name']}", "", m.get("description", ""), ""]
    if notes:
        out += [notes.strip(), ""]
    out += ["## Shape", "",
            f"| layers | d_model | heads | d_ff | vocab | segment_length | memory_tokens | state bytes / session |",
            "|---|---|---|---|---|---|---|---|",
            f"| {c['n_layers']} | {c['d_model']} | {c['n_heads']} | {c['d_ff']} | {c['vocab_size']} | {c['segment_length']} | "
            f"{c['memory_tokens']} | {c['memory_tokens'] * c['d_model'] * 4} |", ""]
    if t:
        out += ["## Training", "", "```json", json.dumps(t, indent=1), "```", ""]
    out += recall_section(ev.get("recall"), "memory", (m.get("task") or {}).get("kind", "recall"))
    ppl = ev.get("perplexity")
    if ppl:
        out += ["## Perplexity (held-out documents)", "",
                f"{ppl['documents']} documents, {ppl['tokens_scored']} tokens scored (t >= 1 of each segment).", "",
                "| memory carried | memory reset every segment |", "|---|---|",
                f"| {ppl['carried']} | {ppl['reset']} |", ""]
    if ev.get("command"):
        out += ["Measured by:", "", "```", ev["command"], "```", "", ev.get("heldout", ""), ""]
    out += ["## Files", "", "See models/README.md for the package contract. Graphs: `" + json.dumps(m["graphs"]) + "`.", ""]
    return "\n".join(out)


def recall_section(rec: dict | None, what: str, kind: str = "recall") -> list[str]:
    """The recall table (evaluate's recall_table), for a package trained on the recall task (or qa2)."""
    if not rec:
        return []
    lengths = [k for k in rec["carried"]]
    task = ("Task qa2 (two supporting facts): each holder picks up an object and moves; the question asks where "
            "an object is, the answer is its holder's last place. " if kind == "qa2" else "")
    if rec.get("facts"):
        task += f"{rec['facts']} {'holders' if kind == 'qa2' else 'facts'} in every sample. "
    return ["## Recall (held-out noise)", "", task +
            f"{rec['samples_per_length']} samples per length; correct = greedy decoding reproduces the whole answer. "
            f"Chance (guessing a place) = {rec['chance']}. A sample is n segments of noise with its facts at random "
            "sentence starts anywhere in them, then the question, so a column averages fact-to-question distances "
            "of 0 to n - 1 full segments (bench/recall-service.ts measures fixed distances).", "",
            "| n segments of noise (facts anywhere in them) | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 1) + "|",
            f"| {what} carried | " + " | ".join(str(rec["carried"][k]) for k in lengths) + " |",
            f"| {what} reset every segment | " + " | ".join(str(rec["reset"][k]) for k in lengths) + " |", ""]


def render_state(m: dict, notes: str = "") -> str:
    """The card of a state-conditioned package: the architecture, its state entries and their bytes."""
    c, t, ev = m["config"], m.get("training", {}), m.get("eval", {})
    what, entries, why = ARCH_NOTES[m["architecture"]]
    total = sum(4 * _prod(e["shape"]) for e in m["state"])
    out = [f"# {m['name']}", "", m.get("description", ""), ""]
    if notes:
        out += [notes.strip(), ""]
    out += ["## Architecture", "", what, "", "## Shape", "",
            "| architecture | layers | d_model | heads | d_ff | vocab | segment_length | mem_len | memory_tokens | parameters | state bytes / session |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {m['architecture']} | {c['n_layers']} | {c['d_model']} | {c['n_heads']} | {c['d_ff']} | {c['vocab_size']} | "
            f"{c['segment_length']} | {c.get('mem_len', '—')} | {c['memory_tokens']} | {m.get('parameters', 0):,} | {total:,} |", "",
            "## State (per session, float32, constant in the input length)", "",
            "| entry | shape | bytes | what |", "|---|---|---|---|"]
    out += [f"| `{e['name']}` | {e['shape']} | {4 * _prod(e['shape']):,} | {entries[e['name']]} |" for e in m["state"]]
    if m.get("task"):  # the recall curriculum (train) backpropagates through the state, whatever the architecture
        why = ("Trained on the recall task (`train`): the state is backpropagated through over each whole sample, "
               "as the RMT's memory is, not detached between segments as in language-model training (`train-lm`).")
    out += ["", why, ""]
    if t:
        out += ["## Training", "", "```json", json.dumps(t, indent=1), "```", ""]
    out += recall_section(ev.get("recall"), "state")
    ppl = ev.get("perplexity")
    if ppl:
        out += ["## Perplexity (held-out documents)", "",
                f"{ppl['documents']} documents, {ppl['tokens_scored']} tokens scored (t >= 1 of each segment).", "",
                "| state carried | state reset every segment |", "|---|---|", f"| {ppl['carried']} | {ppl['reset']} |", ""]
    if ev.get("command"):
        out += ["Measured by:", "", "```", ev["command"], "```", "", ev.get("heldout", ""), ""]
    out += ["## Files", "", "See models/README.md (state-conditioned packages) for the contract. Graphs: `" +
            json.dumps(m["graphs"]) + "`.", ""]
    return "\n".join(out)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
