"""`random-gpt2-small`: a random-weight package (test fixtures, throughput benchmarks) of any architecture."""
from __future__ import annotations

import os


def random_package(a):
    import torch

    from .arch import build_model
    from .config import gpt2_small, tiny
    from .export import export_graphs

    torch.manual_seed(a.seed)
    if a.architecture != "rmt":
        from .state_export import random_state_package

        return random_state_package(a)
    cfg = tiny() if a.size == "tiny" else gpt2_small()
    model = build_model(cfg).eval()
    os.makedirs(a.out, exist_ok=True)
    ck = os.path.join(a.out, "model.pt")
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict(), "training": {"note": "random init"}}, ck)
    from .package import write_package

    fused = a.attention == "fused"
    graphs = {p: {k: v for k, v in export_graphs(model, a.out, p, a.exporter, fused, a.state_graph).items()
                  if k != "exporter"} for p in a.precisions.split(",")}
    shape = "tiny RMT (2 layers, d=64), random weights, a test fixture" if a.size == "tiny" else \
        "GPT-2-small-shaped RMT, random weights, for throughput benchmarks only (not committed)"
    write_package(ck, a.out, a.name, f"{shape}; segment graphs with {a.attention} attention", a.tokenizer, graphs,
                  {"export": {"segment_attention": a.attention, "state_graph": a.state_graph if fused else "pruned"}})
    if a.size == "tiny":
        os.remove(ck)  # the package does not need it, and fixtures stay small
    print(f"wrote {a.out}")
