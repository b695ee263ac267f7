"""Convert an authors'-layout RMT checkpoint (booydar/recurrent-memory-transformer) into a toolkit checkpoint.

That layout is RecurrentWrapper(memory_cell=MemoryCell(GPT2LMHeadModel)), so its state dict holds
    memory_cell.memory                                   [M, D] (or [1, M, D]) learned initial memory
    memory_cell.model.transformer.{wte,wpe,h.N.*,ln_f}.* the GPT-2 decoder (Conv1D weights [in, out])
    memory_cell.model.lm_head.weight                     tied to wte
Our parameter names are GPT-2's, so conversion renames keys and checks every shape.
"""
from __future__ import annotations

import json
import os

import torch

from .config import ConfigError, RMTConfig
from .model import RMT


def _load_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu")
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd.state_dict()


def convert(checkpoint: str, hf_config: str, memory_tokens: int, segment_length: int, out: str) -> None:
    hf = json.load(open(hf_config))
    if hf.get("model_type") not in (None, "gpt2"):
        raise ConfigError(f"{hf_config}: model_type {hf.get('model_type')!r} is not gpt2")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"{hf_config}: activation_function {act!r} unsupported (the toolkit uses gelu_new)")
    d = hf["n_embd"]
    cfg = RMTConfig(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"],
                    d_ff=hf.get("n_inner") or 4 * d, segment_length=segment_length, memory_tokens=memory_tokens,
                    n_positions=hf["n_positions"], layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                    eos_id=hf.get("eos_token_id", 50256), pad_id=hf.get("pad_token_id") or hf.get("eos_token_id", 50256)
                    ).validate()
    sd = _load_state(checkpoint)
    mem_keys = [k for k in sd if k.split(".")[-1] == "memory"]
    if len(mem_keys) != 1:
        raise ConfigError(f"{checkpoint}: expected one '*.memory' parameter (MemoryCell.memory), found {mem_keys}")
    memory = sd[mem_keys[0]].reshape(-1, d) if sd[mem_keys[0]].shape[-1] == d else None
    if memory is None or memory.shape[0] != memory_tokens:
        raise ConfigError(f"{mem_keys[0]} has shape {tuple(sd[mem_keys[0]].shape)}; expected [{memory_tokens}, {d}]")
    prefix = next((p for p in ("memory_cell.model.transformer.", "model.transformer.", "transformer.")
                   if f"{p}wte.weight" in sd), None)
    if prefix is None:
        raise ConfigError(f"{checkpoint}: no GPT-2 transformer weights (looked for *transformer.wte.weight)")
    model = RMT(cfg)
    new = {"memory": memory}
    for name, p in model.state_dict().items():
        if name == "memory":
            continue
        src = sd.get(prefix + name)
        if src is None:
            raise ConfigError(f"{checkpoint}: missing {prefix + name}")
        if tuple(src.shape) != tuple(p.shape):
            raise ConfigError(f"{prefix + name}: shape {tuple(src.shape)}, expected {tuple(p.shape)}")
        new[name] = src
    head = next((sd[k] for k in sd if k.endswith("lm_head.weight")), None)
    if head is not None and not torch.equal(head, new["wte.weight"]):
        raise ConfigError("lm_head.weight differs from wte.weight: untied output heads are not supported")
    model.load_state_dict({k: v.float() for k, v in new.items()})
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict(),
                "training": {"converted_from": os.path.basename(checkpoint)}}, out)
    print(f"converted {checkpoint} -> {out} ({sum(p.numel() for p in model.parameters())} parameters)")


def as_armt(ck: dict, d_mem: int = 32) -> dict:
    """An RMT checkpoint as an ARMT one (arch/armt.py): the same weights, the associative memory new with
    W_v = 0, so it computes exactly the RMT until trained (check_models.py checks this)."""
    from .arch import build_model
    from .config import ARMTConfig

    cfg = ARMTConfig(**{**ck["config"], "architecture": "armt", "d_mem": d_mem}).validate()
    torch.manual_seed(0)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(ck["state_dict"], strict=False)
    if unexpected or any(not k.startswith("assoc.") for k in missing):
        raise ConfigError(f"not an RMT checkpoint: unexpected {unexpected}, missing {missing}")
    return dict(ck, config=cfg.to_dict(), state_dict=model.state_dict(),
                training=dict(ck.get("training", {}), armt_from=ck.get("training", {}).get("imported_from", "rmt")))


def from_package(package: str, out: str, architecture: str = "rmt") -> None:
    """A shipped RMT package (ONNX weights only) back into a checkpoint, so training can continue from it.

    The fp32 segment graph's initializers carry the parameter names (prefixed "rmt."); the learned initial
    memory is the package's state init file. Every parameter must be found with its exact shape.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    meta = json.load(open(os.path.join(package, "model.json")))
    if meta.get("architecture", "rmt") != "rmt":
        raise ConfigError(f"{package}: architecture {meta.get('architecture')!r}; only rmt packages can be imported")
    from .config import config_from_dict

    cfg = config_from_dict(meta["config"])
    graph = os.path.join(package, meta["graphs"]["fp32"]["segment"])
    inits = {i.name: i for i in onnx.load(graph, load_external_data=False).graph.initializer}
    model = RMT(cfg)
    new = {}
    for name, p in model.state_dict().items():
        if name == "memory":
            arr = np.fromfile(os.path.join(package, meta["state"][0]["init"]), dtype="<f4").reshape(tuple(p.shape))
        else:
            init = inits.get("rmt." + name)
            if init is None:
                raise ConfigError(f"{graph}: no initializer rmt.{name}")
            arr = numpy_helper.to_array(init, base_dir=package)  # weights.bin beside the graph
        if tuple(arr.shape) != tuple(p.shape):
            raise ConfigError(f"{name}: shape {tuple(arr.shape)} in the package, expected {tuple(p.shape)}")
        new[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
    model.load_state_dict(new)
    replay = _replay_golden(model.eval(), package)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    ck = {"config": cfg.to_dict(), "state_dict": model.state_dict(),
          "training": dict(meta.get("training", {}), imported_from=meta["name"])}
    if meta.get("task"):
        ck["task"] = meta["task"]
    if architecture == "armt":
        ck = as_armt(ck)
    torch.save(ck, out)
    print(f"imported {package} -> {out} ({architecture}; {replay})")


def _replay_golden(model, package: str) -> str:
    """The package's golden sequence (PyTorch fp32 at export) replayed by the imported model: same states."""
    import base64

    import numpy as np

    from .verify import TorchRunner

    path = os.path.join(package, "golden.json")
    if not os.path.exists(path):
        return "no golden.json to replay"
    golden = json.load(open(path))
    tol = golden["tolerance"]["state"]
    runner = TorchRunner(model)
    state, worst = runner.init_state(1), 0.0
    for i, seg in enumerate(golden["sequence"]["segments"]):
        ids = np.asarray([seg["input_ids"]], dtype=np.int64)
        state, _, _ = runner.segment(ids, np.ones_like(ids), state)
        want = np.frombuffer(base64.b64decode(seg["state_after"]), dtype="<f4")
        worst = max(worst, float(np.max(np.abs(np.asarray(state, np.float64).ravel() - want))))
        if worst > tol:
            raise ConfigError(f"{package}: golden segment {i} state differs by {worst:.3g} (> {tol:g}) after import")
    return f"golden.json replayed, {len(golden['sequence']['segments'])} segments, max state diff {worst:.2g}"
