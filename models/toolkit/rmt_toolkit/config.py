"""Model configuration, validated before anything is built or exported."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


class ConfigError(ValueError):
    """A model configuration that cannot describe a working model."""


# The model families the toolkit builds (config key `architecture`; model.json `architecture`).
# "rmt" is RMTConfig (its config dicts carry no `architecture` key, as before); "armt" is ARMTConfig (the
# RMT's with the associative memory's sizes); the others are XLConfig: a Transformer-XL backbone whose
# session state is a list of fixed-shape tensors.
ARCHITECTURES = ("rmt", "transformer-xl", "lamemo", "memtransformer", "memctrl", "membottleneck", "armt")
MEMORY_FAMILY = ("memtransformer", "memctrl", "membottleneck")


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


@dataclass
class ARMTConfig(RMTConfig):
    """The RMT plus a per-layer associative memory (arch/armt.py): d_mem key features before DPFP
    (2 nu d_mem after), assoc_heads heads; carry_memory keeps the RMT's recurrent memory tokens."""
    architecture: str = "armt"
    d_mem: int = 32
    nu: int = 3
    assoc_heads: int = 1
    carry_memory: bool = True

    def validate(self) -> "ARMTConfig":
        problems = []
        if self.architecture != "armt":
            problems.append(f"architecture must be 'armt', got {self.architecture!r}")
        for name in ("d_mem", "nu", "assoc_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not problems:
            if self.d_mem % self.assoc_heads or self.d_model % self.assoc_heads:
                problems.append(f"d_mem ({self.d_mem}) and d_model ({self.d_model}) must be divisible by assoc_heads ({self.assoc_heads})")
            if self.nu >= 2 * self.d_mem // self.assoc_heads:
                problems.append(f"nu ({self.nu}) must be below 2 * d_mem / assoc_heads (DPFP rolls a head's 2 d_mem features)")
        if problems:
            raise ConfigError("inconsistent ARMT config:\n  - " + "\n  - ".join(problems))
        super().validate()
        return self


@dataclass
class XLConfig:
    """Transformer-XL-style models (relative positions, post-LayerNorm, ReLU feed-forward as in
    kimiyoung/transformer-xl) whose state crosses segments as fixed-shape tensors.

    mem_len: cached positions per layer (Transformer-XL mems, LaMemo memory); memory_tokens: the
    Memory Transformer family's trainable [mem] tokens (0 for transformer-xl and lamemo)."""
    architecture: str = "transformer-xl"
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 1024
    segment_length: int = 128
    mem_len: int = 128
    memory_tokens: int = 0
    # memtransformer / memctrl: whether the [mem] tokens attend to the cache (causal either way).
    mem_reads_cache: bool = True
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    dropatt: float = 0.0
    eos_id: int = 0
    pad_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> "XLConfig":
        problems = []
        if self.architecture not in ARCHITECTURES or self.architecture in ("rmt", "armt"):
            problems.append(f"architecture {self.architecture!r} is not one of {[a for a in ARCHITECTURES if a not in ('rmt', 'armt')]}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "segment_length", "mem_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.memory_tokens, int) or self.memory_tokens < 0:
            problems.append(f"memory_tokens must be a non-negative integer, got {self.memory_tokens!r}")
        if not problems:
            if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
                problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) into even head sizes")
            if self.d_model % 2:
                problems.append("d_model must be even (sinusoidal relative positions)")
            fam = self.architecture in MEMORY_FAMILY
            if fam and self.memory_tokens < 1:
                problems.append(f"{self.architecture} needs memory_tokens >= 1")
            if not fam and self.memory_tokens:
                problems.append(f"{self.architecture} has no [mem] tokens: memory_tokens must be 0")
            if self.architecture == "lamemo" and self.mem_len > self.segment_length:
                problems.append(f"lamemo: mem_len ({self.mem_len}) must be <= segment_length ({self.segment_length}): "
                                "each memory position is looked ahead from once, by the segment after it")
            for tok in ("eos_id", "pad_id"):
                v = getattr(self, tok)
                if not (0 <= v < self.vocab_size):
                    problems.append(f"{tok} ({v}) must be in [0, vocab_size={self.vocab_size})")
        if problems:
            raise ConfigError(f"inconsistent {self.architecture} config:\n  - " + "\n  - ".join(problems))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "XLConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {d.get('architecture')} config keys: {unknown}; known keys: {sorted(known)}")
        return cls(**d).validate()


def config_from_dict(d: dict):
    """RMTConfig or XLConfig by the dict's `architecture` (absent = rmt, the toolkit's first format)."""
    arch = d.get("architecture", "rmt")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; known: {list(ARCHITECTURES)}")
    if arch == "rmt":
        return RMTConfig.from_dict({k: v for k, v in d.items() if k != "architecture"})
    if arch == "armt":
        return ARMTConfig.from_dict(d)
    return XLConfig.from_dict(d)


def load_config(path: str):
    with open(path) as f:
        return config_from_dict(json.load(f))


def architecture_of(cfg) -> str:
    return getattr(cfg, "architecture", "rmt")


def tiny_config(arch: str, vocab_size: int = 4096):
    """Test-fixture size (2 layers, d=64, 32-token segments) of any architecture, random weights."""
    if arch == "rmt":
        return tiny(vocab_size)
    if arch == "armt":
        return ARMTConfig(**{**tiny(vocab_size).to_dict(), "d_mem": 8}).validate()
    return XLConfig(architecture=arch, vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, d_ff=256,
                    segment_length=32, mem_len=32, memory_tokens=4 if arch in MEMORY_FAMILY else 0).validate()
