"""Byte-level BPE tokenizer trained on the Brown training files (Hugging Face `tokenizers`)."""
from __future__ import annotations

import json
import os

EOS, PAD = "<|endoftext|>", "<|pad|>"


def train_tokenizer(texts, vocab_size: int, out_path: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(EOS) == 0 and tok.token_to_id(PAD) == 1
    tok.save(out_path)
    # tokenizers.js reads this beside tokenizer.json.
    with open(os.path.join(os.path.dirname(out_path), "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": PAD,
                   "bos_token": EOS, "unk_token": None, "add_prefix_space": False,
                   "model_max_length": 1000000000, "clean_up_tokenization_spaces": False}, fh, indent=2)
    return tok


def load_tokenizer(path: str):
    """Hugging Face `tokenizers`; without it (this project's CPU machines) the byte-level BPE below,
    which encodes what the library does for this toolkit's tokenizers. Refused on a CUDA machine,
    where the library is expected."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        import sys

        import torch

        if torch.cuda.is_available():
            raise SystemExit("the `tokenizers` package is missing on a CUDA machine: pip install tokenizers")
        print("note: `tokenizers` is not installed: encoding with the toolkit's pure-Python byte-level BPE",
              file=sys.stderr, flush=True)
        return ByteLevelBPE(path)
    return Tokenizer.from_file(path)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class ByteLevelBPE:
    """encode().ids, get_vocab_size(), id_to_token(), token_to_id() of a tokenizer.json with a
    ByteLevel pre-tokenizer (GPT-2 split, no prefix space), a BPE model and no normalizer: the
    toolkit's own tokenizers. Python's `re` has no \\p{L}: letters are [^\\W\\d_] and numbers \\d,
    the same classes for the text this toolkit reads (models/toolkit/tokenizer-check.ts compares)."""

    SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

    def __init__(self, path: str):
        import re

        t = json.load(open(path, encoding="utf-8"))
        pre, model = t.get("pre_tokenizer") or {}, t["model"]
        if t.get("normalizer") or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or model["type"] != "BPE":
            raise SystemExit(f"{path}: the pure-Python tokenizer handles ByteLevel BPE without normalizer or prefix "
                             "space only; install `tokenizers`")
        self.vocab = dict(model["vocab"])
        for a in t.get("added_tokens", []):
            self.vocab[a["content"]] = a["id"]
        self.inv = {i: s for s, i in self.vocab.items()}
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.specials = [a["content"] for a in t.get("added_tokens", [])]
        self.split = re.compile(self.SPLIT, re.UNICODE)
        self.alpha = _byte_alphabet()
        self.cache: dict[str, list[int]] = {}

    def _bpe(self, piece: str) -> list[int]:
        if piece in self.cache:
            return self.cache[piece]
        parts = [self.alpha[b] for b in piece.encode("utf-8")]
        while len(parts) > 1:
            best = min(((self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))))
            if best[0] == 1 << 30:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.vocab[p] for p in parts]
        if len(self.cache) < 200_000:
            self.cache[piece] = ids
        return ids

    def encode(self, text: str):
        from types import SimpleNamespace

        ids: list[int] = []
        chunks = [text]
        for sp in self.specials:  # added tokens match literally, before the split
            chunks = [c for part in chunks for c in _keep_split(part, sp)]
        for c in chunks:
            if c in self.specials:
                ids.append(self.vocab[c])
            else:
                for piece in self.split.findall(c):
                    ids.extend(self._bpe(piece))
        return SimpleNamespace(ids=ids)

    def get_vocab_size(self) -> int:
        return len(self.vocab)

    def id_to_token(self, i: int):
        return self.inv.get(i)

    def token_to_id(self, s: str):
        return self.vocab.get(s)


def _keep_split(text: str, sep: str) -> list[str]:
    out = []
    for i, part in enumerate(text.split(sep)):
        if i:
            out.append(sep)
        if part:
            out.append(part)
    return out


def encode_dump(tokenizer: str, data: str | None, split: str, out: str) -> int:
    """[{text, ids}] for tokenizer-check.ts: every document of the split, plus strings with digits,
    underscores, non-ASCII letters, spacing and the special tokens."""
    from .data import load_split

    tok = load_tokenizer(tokenizer)
    texts = [" " + d["text"] for d in load_split(data, split)] if data else []
    texts += ["snake_case __init__ 3.14159 1,000,000 x2 \u00b2", "\u00dcn\u00efc\u00f6d\u00e9 fa\u00e7ade \u2014 na\u00efve "
              "\u201cquotes\u201d \u6771\u4eac", "tabs\tand  double  spaces\n\nnew lines   ",
              "<|endoftext|>one<|pad|> two <|endoftext|>"]
    with open(out, "w") as fh:
        json.dump([{"text": t, "ids": tok.encode(t).ids} for t in texts], fh)
    return len(texts)
