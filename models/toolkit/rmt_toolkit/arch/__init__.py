"""Architecture registry: the config's `architecture` picks the model class.

"rmt" is model.RMT (its own contract: state `memory`, decode conditioned by a read-memory input at
prefill). Every other architecture has arch.common.StateModel's contract (state-conditioned decode);
armt (arch/armt.py) implements it on the RMT's GPT-2 blocks. The
helpers below give both one interface for training and evaluation, without changing the RMT.
"""
from __future__ import annotations

from ..config import architecture_of


def model_class(arch: str):
    if arch == "rmt":
        from ..model import RMT
        return RMT
    if arch == "transformer-xl":
        from .transformer_xl import TransformerXL
        return TransformerXL
    if arch == "lamemo":
        from .lamemo import LaMemo
        return LaMemo
    if arch == "armt":
        from .armt import ARMT
        return ARMT
    if arch in ("memtransformer", "memctrl", "membottleneck"):
        from .memtransformer import MemoryTransformer
        return MemoryTransformer
    raise ValueError(f"unknown architecture {arch!r}")


def build_model(cfg):
    return model_class(architecture_of(cfg))(cfg)


def is_rmt(model) -> bool:
    return architecture_of(model.cfg) == "rmt"


def initial_state(model, batch: int, device=None) -> dict:
    if is_rmt(model):
        mem = model.initial_memory(batch)
        return {"memory": mem.to(device) if device is not None else mem}
    return model.initial_state(batch, device)


def forward(model, input_ids, attention_mask, state: dict):
    """Training's step for any architecture: (final hidden states at the tokens [B,T,D], next state
    dict), with the graph kept (the recall curriculum backpropagates through the state)."""
    if is_rmt(model):
        h_tok, h_write = model.encode_segment(input_ids, attention_mask, state["memory"])
        return h_tok, {"memory": h_write.float()}
    return model.forward_segment(input_ids, attention_mask, state)


def segment(model, input_ids, attention_mask, state: dict):
    """The contract's segment step for any architecture: (next state dict, last logits, token_logprobs)."""
    if is_rmt(model):
        mem, logits, lp = model.segment(input_ids, attention_mask, state["memory"])
        return {"memory": mem}, logits, lp
    return model.segment(input_ids, attention_mask, state)


def state_spec(model) -> list[tuple[str, tuple]]:
    if is_rmt(model):
        c = model.cfg
        return [("memory", (c.memory_tokens, c.d_model))]
    return model.state_spec()


def state_bytes(model) -> int:
    import math

    return sum(4 * math.prod(s) for _, s in state_spec(model))


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
