"""The two-supporting-facts task (bAbI qa2 style) and the task registry (kind -> task, builder).

" Mary picked up the football. ... Mary went to the garden." -> "Where is the football?" " garden."
Per sample k holders (distinct names), each with a distinct object: a pickup fact and a final move,
in either order (the holder carries the object to wherever it last went). Distractors: a move by the
holder BEFORE its final one (so the answer is the LAST location, not any), or a move by a non-holder.
The builder has RecallBuilder's interface (S, max_fact, max_qa, sample) so train's curriculum and
evaluate's recall_table use it unchanged; here max_fact is one holder's worst-case fact tokens, so
in_context_samples' room arithmetic (k * (max_qa + max_fact)) stays an upper bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .data import RecallBuilder, RecallTask


@dataclass
class TwoFactTask:
    kind: str = "qa2"
    names: list = field(default_factory=lambda: ["Mary", "John", "Sandra", "Daniel", "Bill", "Fred", "Julie", "Jeff"])
    objects: list = field(default_factory=lambda: ["football", "apple", "milk", "key", "book", "ball", "bag", "box"])
    places: list = field(default_factory=lambda: ["bathroom", "hallway", "garden", "office", "bedroom", "kitchen",
                                                  "cinema", "park"])
    pickup_verbs: list = field(default_factory=lambda: ["picked up", "grabbed", "took"])
    verbs: list = field(default_factory=lambda: ["went to", "journeyed to", "travelled to", "moved to", "went back to"])
    pickup_template: str = " {name} {verb} the {object}."
    fact_template: str = " {name} {verb} the {place}."
    question_template: str = "\nQuestion: Where is the {object}?\nAnswer: The {object} is in the"
    answer_template: str = " {place}."
    min_facts: int = 1  # holders (each = a pickup and a move, 2 supporting facts)
    max_facts: int = 2
    distractors: int = 1  # up to this many extra moves per holder (its own earlier move, or another name's)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        out = [self.question_template.format(object=o) for o in self.objects]
        for n in self.names:
            out += [self.pickup_template.format(name=n, verb=v, object=o) for v in self.pickup_verbs for o in self.objects]
            out += [self.fact_template.format(name=n, verb=v, place=p) for v in self.verbs for p in self.places]
        return out + [self.answer_template.format(place=p) for p in self.places]


def task_from_dict(d: dict | None, kind: str | None = None):
    """A checkpoint's / model.json's task; a missing kind is the recall task (shipped packages have none)."""
    d = dict(d or {})
    kind = kind or d.get("kind", "recall")
    cls = {"recall": RecallTask, "qa2": TwoFactTask}.get(kind)
    if cls is None:
        raise SystemExit(f"unknown task kind {kind!r} (recall, qa2)")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def make_builder(tok, task, stream, segment_length: int):
    return (TwoFactBuilder if isinstance(task, TwoFactTask) else RecallBuilder)(tok, task, stream, segment_length)


class TwoFactBuilder:
    def __init__(self, tokenizer, task: TwoFactTask, stream, segment_length: int):
        self.task, self.stream, self.S = task, stream, segment_length
        t = task
        if len(t.objects) < t.max_facts or len(t.names) < t.max_facts + (1 if t.distractors else 0):
            raise SystemExit(f"{t.max_facts} holders need as many objects and names (and a spare name for distractors)")
        enc = lambda s: np.asarray(tokenizer.encode(s).ids, dtype=np.int64)  # noqa: E731
        self.pickups = {(n, v, o): enc(t.pickup_template.format(name=n, verb=v, object=o))
                        for n in t.names for v in t.pickup_verbs for o in t.objects}
        self.moves = {(n, v, p): enc(t.fact_template.format(name=n, verb=v, place=p))
                      for n in t.names for v in t.verbs for p in t.places}
        self.questions = {o: enc(t.question_template.format(object=o)) for o in t.objects}
        self.answers = {p: enc(t.answer_template.format(place=p)) for p in t.places}
        self.max_qa = max(map(len, self.questions.values())) + max(map(len, self.answers.values()))
        self.max_fact = max(map(len, self.pickups.values())) + (1 + t.distractors) * max(map(len, self.moves.values()))

    def _facts(self, rng, k: int) -> tuple[list, list]:
        """(facts in context order, holders): facts are ("pickup"|"move", name, verb, object|place)."""
        t = self.task
        people = [t.names[i] for i in rng.choice(len(t.names), size=k, replace=False)]
        objs = [t.objects[i] for i in rng.choice(len(t.objects), size=k, replace=False)]
        others = [n for n in t.names if n not in people]
        move = lambda n: ("move", n, t.verbs[rng.integers(len(t.verbs))], t.places[rng.integers(len(t.places))])  # noqa: E731
        seq, holders = [], []
        for name, obj in zip(people, objs):
            last = move(name)
            group = [("pickup", name, t.pickup_verbs[rng.integers(len(t.pickup_verbs))], obj), last]
            for _ in range(int(rng.integers(0, t.distractors + 1))):
                own = not others or rng.random() < 0.5
                group.append(("early", *move(name)[1:]) if own else move(others[rng.integers(len(others))]))
            holders.append((name, obj, last[3]))
            seq += group
        seq = [seq[i] for i in rng.permutation(len(seq))]
        # A holder's earlier move must come before its final move: swap where it does not.
        for name, _, _ in holders:
            fin = next(i for i, f in enumerate(seq) if f[0] == "move" and f[1] == name)
            for i, f in enumerate(seq):
                if f[0] == "early" and f[1] == name and i > fin:
                    seq[i], seq[fin], fin = seq[fin], seq[i], i
        return [("move", *f[1:]) if f[0] == "early" else f for f in seq], holders

    def ids_of(self, fact) -> np.ndarray:
        return (self.pickups if fact[0] == "pickup" else self.moves)[fact[1:]]

    def sample(self, rng: np.random.Generator, n_segments: int, total: int | None = None,
               k: int | None = None) -> dict:
        """As RecallBuilder.sample: k holders' facts in n_segments of noise (or `total` tokens), at sentence
        starts, in their sequence order; "qa" asks every holder's object; "spans" are the facts' [from, to)."""
        t = self.task
        k = int(rng.integers(t.min_facts, t.max_facts + 1)) if k is None else k
        if not 1 <= k <= min(len(t.names), len(t.objects)):
            raise ValueError(f"{k} holders: each needs its own name and object")
        facts, holders = self._facts(rng, k)
        fact_ids = [self.ids_of(f) for f in facts]
        total = n_segments * self.S if total is None else total
        noise_len = total - sum(map(len, fact_ids))
        if noise_len < 0:
            raise ValueError(f"{k} holders' facts ({total - noise_len} tokens) do not fit in {total} tokens")
        start = int(rng.integers(0, len(self.stream.ids) - noise_len))
        noise = self.stream.ids[start:start + noise_len]
        st = self.stream.starts
        cand = st[np.searchsorted(st, start):np.searchsorted(st, start + noise_len)] - start
        # No sentence start in a short crop: the facts open the context (still a sentence start).
        offs = sorted(int(cand[rng.integers(len(cand))]) if len(cand) else 0 for _ in fact_ids)
        pieces, spans, prev, pos = [], [], 0, 0
        for off, ids in zip(offs, fact_ids):
            pieces += [noise[prev:off], ids]
            pos += off - prev
            spans.append((pos, pos + len(ids)))
            pos += len(ids)
            prev = off
        pieces.append(noise[prev:])
        context = np.concatenate(pieces)
        assert len(context) == total
        name, obj, place = holders[int(rng.integers(k))]
        qa = [(self.questions[holders[i][1]], self.answers[holders[i][2]]) for i in rng.permutation(k)]
        return {"context": context, "question": self.questions[obj], "answer": self.answers[place], "name": name,
                "object": obj, "place": place, "facts": facts, "holders": holders, "qa": qa, "spans": spans}
