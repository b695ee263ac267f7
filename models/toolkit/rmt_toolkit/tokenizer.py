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
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)
