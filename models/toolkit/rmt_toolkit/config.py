"""Model configuration, validated before anything is built or exported."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


class ConfigError(ValueError):
    """An RMT configuration that cannot describe a working model."""


@dataclass
class RMTConfig:
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    segment_length: int = 128
    memory_tokens: int = 16
    # Learned absolute positions cover [read memory; segment; write memory].
    n_positions: int = 160
    layer_norm_eps: float = 1e-5
    # Training only: exported graphs run in eval mode, without dropout.
    dropout: float = 0.0
    eos_id: int = 0
    pad_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> "RMTConfig":
        problems = []
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "segment_length", "memory_tokens", "n_positions"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not problems:
            if self.d_model % self.n_heads:
                problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
            need = 2 * self.memory_tokens + self.segment_length
            if self.n_positions < need:
                problems.append(
                    f"n_positions ({self.n_positions}) must be >= 2*memory_tokens + segment_length = {need}: "
                    "a segment is laid out as [read memory; tokens; write memory]")
            for tok in ("eos_id", "pad_id"):
                v = getattr(self, tok)
                if not (0 <= v < self.vocab_size):
                    problems.append(f"{tok} ({v}) must be in [0, vocab_size={self.vocab_size})")
        if problems:
            raise ConfigError("inconsistent RMT config:\n  - " + "\n  - ".join(problems))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RMTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown RMT config keys: {unknown}; known keys: {sorted(known)}")
        return cls(**d).validate()

    @classmethod
    def load(cls, path: str) -> "RMTConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def tiny(vocab_size: int = 4096) -> RMTConfig:
    """A tiny RMT (2 layers, d=64, 32-token segments) for test fixtures (random weights)."""
    return RMTConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, d_ff=256,
                     segment_length=32, memory_tokens=4, n_positions=64, eos_id=0, pad_id=1).validate()


def gpt2_small(vocab_size: int = 50257) -> RMTConfig:
    """GPT-2-small-shaped RMT used for throughput benchmarks (random weights)."""
    return RMTConfig(vocab_size=vocab_size, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                     segment_length=512, memory_tokens=16, n_positions=1024,
                     eos_id=50256, pad_id=50256).validate()
