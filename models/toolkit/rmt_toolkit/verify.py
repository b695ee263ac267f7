"""PyTorch vs onnxruntime over consecutive segments, padded and unpadded; writes golden.json.

Fails (SystemExit) above tolerance. The greedy generation loop here is the reference the engine
follows: full segments go through segment.onnx; the tail (< segment_length tokens) is prefilled into
decode.onnx with the read memory; each new token is one decode step; when the tail reaches
segment_length it is committed through segment.onnx and the next token starts a new tail.
"""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import torch

from .export import load_checkpoint

TOL = {"state": 1e-4, "logits": 1e-3, "token_logprobs": 1e-3}


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


class TorchRunner:
    def __init__(self, model):
        self.m = model

    def init_state(self, batch):
        return self.m.initial_memory(batch).detach().numpy()

    @torch.no_grad()
    def segment(self, ids, mask, state):
        out = self.m.segment(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(state))
        return [o.numpy() for o in out]

    @torch.no_grad()
    def decode(self, ids, mask, memory, past):
        if past is None:
            past = self.m.empty_past(ids.shape[0]).numpy()
        out = self.m.decode(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(memory), torch.from_numpy(past))
        return [o.numpy() for o in out]


class OrtRunner:
    def __init__(self, package_dir, graphs, cfg, init_state, providers=("CPUExecutionProvider",)):
        import onnxruntime as ort

        so = ort.SessionOptions()
        self.seg = ort.InferenceSession(os.path.join(package_dir, graphs["segment"]), so, providers=list(providers))
        self.dec = ort.InferenceSession(os.path.join(package_dir, graphs["decode"]), so, providers=list(providers))
        self.cfg, self._init = cfg, init_state
        past_type = [i for i in self.dec.get_inputs() if i.name == "past_key_values"][0].type
        self.past_dtype = np.float16 if "float16" in past_type else np.float32

    def init_state(self, batch):
        return np.repeat(self._init[None], batch, axis=0)

    def segment(self, ids, mask, state):
        return self.seg.run(None, {"input_ids": ids, "attention_mask": mask, "state.memory": state.astype(np.float32)})

    def decode(self, ids, mask, memory, past):
        c = self.cfg
        if past is None:
            past = np.zeros((c.n_layers, 2, ids.shape[0], c.n_heads, 0, c.head_dim), dtype=self.past_dtype)
        return self.dec.run(None, {"input_ids": ids, "attention_mask": mask, "memory": memory.astype(np.float32),
                                   "past_key_values": past})


def greedy(runner, prompt: list[int], max_new: int, S: int, M: int):
    """Returns generated ids, the logits seen at every step, and how many segments were committed."""
    state = runner.init_state(1)
    logits = None
    full = len(prompt) // S * S
    for i in range(0, full, S):
        ids = np.asarray([prompt[i:i + S]], dtype=np.int64)
        state, logits, _ = runner.segment(ids, np.ones_like(ids), state)
    tail = list(prompt[full:])
    kv = None
    if tail:
        ids = np.asarray([tail], dtype=np.int64)
        logits, kv = runner.decode(ids, np.ones((1, M + len(tail)), dtype=np.int64), state, None)
    out, seen, commits = [], [], 0
    empty = np.zeros((1, 0, state.shape[2]), dtype=np.float32)
    while len(out) < max_new:
        seen.append(logits[0].copy())
        tok = int(np.argmax(logits[0]))
        out.append(tok)
        tail.append(tok)
        if len(tail) == S:
            ids = np.asarray([tail], dtype=np.int64)
            state, logits, _ = runner.segment(ids, np.ones_like(ids), state)
            tail, kv, commits = [], None, commits + 1
        elif kv is None:
            ids = np.asarray([tail], dtype=np.int64)
            logits, kv = runner.decode(ids, np.ones((1, M + len(tail)), dtype=np.int64), state, None)
        else:
            total = kv.shape[4] + 1
            logits, kv = runner.decode(np.asarray([[tok]], dtype=np.int64), np.ones((1, total), dtype=np.int64), empty, kv)
    return out, seen, commits


def top_k(logits: np.ndarray, k: int = 5) -> dict:
    idx = np.argsort(-logits)[:k]
    return {"ids": idx.tolist(), "values": [float(logits[i]) for i in idx]}


def verify(ckpt: str, package_dir: str, doc_ids: list[int], graphs: dict, n_segments: int = 10,
           gen_tokens: int = 40, write_golden: bool = True, fp16_graphs: dict | None = None) -> dict:
    model, ck = load_checkpoint(ckpt)
    cfg = model.cfg
    S, M = cfg.segment_length, cfg.memory_tokens
    need = n_segments * S
    if len(doc_ids) < need + 3 * S:
        raise SystemExit(f"verify needs a document of at least {need + 3 * S} tokens, got {len(doc_ids)}")
    init = model.initial_memory(1)[0].detach().numpy()
    ref, ort_ = TorchRunner(model), OrtRunner(package_dir, graphs, cfg, init)
    report, golden_segments, failures = {"segments": []}, [], []

    def check(what, a, b, tol):
        d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
        if d > tol:
            failures.append(f"{what}: max-abs-diff {d:.3g} > {tol:g}")
        return d

    # 1. consecutive full segments, memory carried
    s_ref, s_ort = ref.init_state(1), ort_.init_state(1)
    check("initial state", s_ref, s_ort, TOL["state"])
    for i in range(n_segments):
        ids = np.asarray([doc_ids[i * S:(i + 1) * S]], dtype=np.int64)
        mask = np.ones_like(ids)
        s_ref, l_ref, lp_ref = ref.segment(ids, mask, s_ref)
        s_ort, l_ort, lp_ort = ort_.segment(ids, mask, s_ort)
        report["segments"].append({
            "state": check(f"segment {i} state", s_ref, s_ort, TOL["state"]),
            "logits": check(f"segment {i} logits", l_ref, l_ort, TOL["logits"]),
            "token_logprobs": check(f"segment {i} token_logprobs", lp_ref, lp_ort, TOL["token_logprobs"])})
        golden_segments.append({"input_ids": ids[0].tolist(), "state_after": b64(s_ref[0]),
                                "top_logits": top_k(l_ref[0]), "token_logprobs": [float(x) for x in lp_ref[0]]})

    # 2. a padded batch: rows of different lengths, each must equal its unpadded run
    lens = [S, S // 2 + 3, 7]
    base = need
    pids = np.full((3, S), cfg.pad_id, dtype=np.int64)
    pmask = np.zeros((3, S), dtype=np.int64)
    for r, n in enumerate(lens):
        pids[r, :n] = doc_ids[base + r * S: base + r * S + n]
        pmask[r, :n] = 1
    st = ort_.init_state(3)
    ps, pl, plp = ort_.segment(pids, pmask, st)
    rs, rl, rlp = ref.segment(pids, pmask, ref.init_state(3))
    check("padded batch state (ort vs torch)", rs, ps, TOL["state"])
    for r, n in enumerate(lens):
        us, ul, ulp = ort_.segment(pids[r:r + 1, :n], pmask[r:r + 1, :n], ort_.init_state(1))
        check(f"padded row {r} state vs unpadded", ps[r], us[0], TOL["state"])
        check(f"padded row {r} logits vs unpadded", pl[r], ul[0], TOL["logits"])
        check(f"padded row {r} token_logprobs vs unpadded", plp[r, :n], ulp[0], TOL["token_logprobs"])
        check(f"padded row {r} token_logprobs at padding", plp[r, n:], np.zeros(S - n), 0.0)

    # 3. greedy continuation that crosses a segment boundary (decode graph, KV cache)
    prompt = doc_ids[base + 3 * S - (2 * S + S - 10): base + 3 * S]  # 2 full segments + S-10 tail tokens
    g_ref, seen_ref, commits = greedy(ref, prompt, gen_tokens, S, M)
    g_ort, seen_ort, _ = greedy(ort_, prompt, gen_tokens, S, M)
    if g_ref != g_ort:
        failures.append(f"greedy continuation differs: torch {g_ref} vs onnxruntime {g_ort}")
    report["greedy_logits"] = check("greedy step logits", np.stack(seen_ref[:len(seen_ort)]), np.stack(seen_ort[:len(seen_ref)]), TOL["logits"])
    if commits < 1:
        failures.append("greedy continuation did not cross a segment boundary")

    # 4. fp16 graphs (optional): looser agreement with the fp32 reference
    if fp16_graphs:
        import onnxruntime as ort
        prov = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["CPUExecutionProvider"]
        h = OrtRunner(package_dir, fp16_graphs, cfg, init, providers=prov)
        s16, s32, agree = h.init_state(1), ref.init_state(1), 0
        worst = 0.0
        for i in range(n_segments):
            ids = np.asarray([doc_ids[i * S:(i + 1) * S]], dtype=np.int64)
            s16, l16, _ = h.segment(ids, np.ones_like(ids), s16)
            s32, l32, _ = ref.segment(ids, np.ones_like(ids), s32)
            worst = max(worst, float(np.max(np.abs(s16 - s32))))
            agree += int(np.argmax(l16[0]) == np.argmax(l32[0]))
        g16, _, _ = greedy(h, prompt, gen_tokens, S, M)
        same = sum(a == b for a, b in zip(g16, g_ref))
        report["fp16"] = {"provider": prov[0], "state_max_abs_diff": worst, "top1_agree_segments": f"{agree}/{n_segments}",
                          "greedy_same_tokens": f"{same}/{len(g_ref)}"}
        if worst > 0.25 or agree < n_segments - 1:
            failures.append(f"fp16 graphs drift from fp32: {report['fp16']}")

    report["failures"] = failures
    print(json.dumps({k: v for k, v in report.items() if k != "segments"}, indent=1), flush=True)
    print("segment diffs (state, logits, token_logprobs): " + ", ".join(
        f"{r['state']:.1e}/{r['logits']:.1e}/{r['token_logprobs']:.1e}" for r in report["segments"]), flush=True)
    if failures:
        raise SystemExit("verify FAILED:\n  " + "\n  ".join(failures))
    if write_golden:
        golden = {
            "format": "rmt-serve/golden@1",
            "reference": "PyTorch fp32 (rmt_toolkit), checked against onnxruntime CPU",
            "graphs": graphs,
            "tolerance": TOL,
            "state_encoding": "base64 of float32 little-endian, row-major [memory_tokens, d_model]",
            "sequence": {"note": "consecutive full segments of a held-out Brown document, memory carried from the initial state",
                         "segments": golden_segments},
            "padded_batch": {"note": "one call, initial state in every row; each row equals its unpadded run",
                             "input_ids": pids.tolist(), "attention_mask": pmask.tolist(),
                             "next_state": [b64(x) for x in rs], "top_logits": [top_k(x) for x in rl],
                             "token_logprobs": [[float(v) for v in row] for row in rlp]},
            "greedy": {"note": "prompt = 2 full segments + a tail; greedy decoding with the KV cache, committing the "
                               "segment when it fills", "prompt_ids": list(map(int, prompt)), "max_new_tokens": gen_tokens,
                       "expected_ids": g_ref, "segments_committed_during_generation": commits},
        }
        with open(os.path.join(package_dir, "golden.json"), "w") as fh:
            json.dump(golden, fh)
    return report
