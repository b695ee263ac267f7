"""Renders a package's README.md (model card) from its model.json, so the card's figures are the measured ones."""
from __future__ import annotations

import json
import os


def render(package_dir: str, notes: str = "") -> str:
    m = json.load(open(os.path.join(package_dir, "model.json")))
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
    rec = ev.get("recall")
    if rec:
        lengths = [k for k in rec["carried"]]
        out += ["## Recall (held-out noise)", "",
                f"{rec['samples_per_length']} samples per length; correct = greedy decoding reproduces the whole answer. "
                f"Chance (guessing a place) = {rec['chance']}.", "",
                "| segments of noise | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 1) + "|",
                "| memory carried | " + " | ".join(str(rec["carried"][k]) for k in lengths) + " |",
                "| memory reset every segment | " + " | ".join(str(rec["reset"][k]) for k in lengths) + " |", ""]
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
