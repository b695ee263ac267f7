"""verify for the state-conditioned architectures: PyTorch vs onnxruntime, golden.json.

The same checks as verify.py (10 carried segments, a padded batch against each row alone, a greedy
continuation with the KV cache crossing a segment boundary) over every state entry, plus, in PyTorch
alone, that decode computes what segment computes: each greedy step's decode logits against a
segment call over the whole tail from the same state.

Generation loop (the reference for the engine; the RMT's, with the state passed to every decode call):
full segments go through segment.onnx (state <- next_state); the tail is prefilled through decode.onnx
with the state and an empty past; each new token is one decode step (same state, past = present);
when the tail reaches segment_length it is committed through segment.onnx and the next token starts
a new tail. Without onnxruntime for Python (this project's CPU machine) verify runs the PyTorch checks,
writes golden.json and says the graphs were NOT checked: models/toolkit/ort-check.ts checks them
there with onnxruntime-node. On a CUDA machine a missing onnxruntime is an error.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from .verify import TOL, b64, top_k


class TorchRunner:
    def __init__(self, model):
        self.m = model

    def init_state(self, batch):
        return {k: v.detach().numpy() for k, v in self.m.initial_state(batch, "cpu").items()}

    @torch.no_grad()
    def segment(self, ids, mask, state):
        nxt, logits, lp = self.m.segment(torch.from_numpy(ids), torch.from_numpy(mask),
                                         {k: torch.from_numpy(v) for k, v in state.items()})
        return {k: v.numpy() for k, v in nxt.items()}, logits.numpy(), lp.numpy()

    @torch.no_grad()
    def decode(self, ids, mask, state, past):
        past = self.m.empty_past(ids.shape[0]).numpy() if past is None else past
        logits, present = self.m.decode(torch.from_numpy(ids), torch.from_numpy(mask),
                                        {k: torch.from_numpy(v) for k, v in state.items()}, torch.from_numpy(past))
        return logits.numpy(), present.numpy()


class OrtRunner:
    def __init__(self, package_dir, graphs, meta, providers=("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.seg = ort.InferenceSession(os.path.join(package_dir, graphs["segment"]), providers=list(providers))
        self.dec = ort.InferenceSession(os.path.join(package_dir, graphs["decode"]), providers=list(providers))
        self.names = [e["name"] for e in meta["state"]]
        self.init = {e["name"]: np.fromfile(os.path.join(package_dir, e["init"]), dtype="<f4").reshape(e["shape"])
                     for e in meta["state"]}
        kv = meta["decode"]["past_key_values"]
        self.kv = (kv["layers"], kv["heads"], kv["head_dim"])
        past_type = [i for i in self.dec.get_inputs() if i.name == "past_key_values"][0].type
        self.past_dtype = np.float16 if "float16" in past_type else np.float32

    def init_state(self, batch):
        return {k: np.repeat(v[None], batch, axis=0) for k, v in self.init.items()}

    def _state_feeds(self, state):
        return {f"state.{n}": np.ascontiguousarray(state[n], dtype=np.float32) for n in self.names}

    def segment(self, ids, mask, state):
        out = self.seg.run(None, {"input_ids": ids, "attention_mask": mask, **self._state_feeds(state)})
        return dict(zip(self.names, out[:len(self.names)])), out[-2], out[-1]

    def decode(self, ids, mask, state, past):
        L, H, Dh = self.kv
        if past is None:
            past = np.zeros((L, 2, ids.shape[0], H, 0, Dh), dtype=self.past_dtype)
        return self.dec.run(None, {"input_ids": ids, "attention_mask": mask, **self._state_feeds(state),
                                   "past_key_values": past})


def greedy(runner, prompt: list[int], max_new: int, S: int, check_decode=None):
    """Generated ids, the logits seen at every step, segments committed. check_decode(tail, state,
    logits) is called after every decode call (PyTorch: decode vs a segment over the whole tail)."""
    state = runner.init_state(1)
    logits = None
    full = len(prompt) // S * S
    for i in range(0, full, S):
        ids = np.asarray([prompt[i:i + S]], dtype=np.int64)
        state, logits, _ = runner.segment(ids, np.ones_like(ids), state)
    tail, kv = list(prompt[full:]), None
    if tail:
        ids = np.asarray([tail], dtype=np.int64)
        logits, kv = runner.decode(ids, np.ones_like(ids), state, None)
        check_decode and check_decode(tail, state, logits)
    out, seen, commits = [], [], 0
    while len(out) < max_new:
        seen.append(logits[0].copy())
        tok = int(np.argmax(logits[0]))
        out.append(tok)
        tail.append(tok)
        if len(tail) == S:
            ids = np.asarray([tail], dtype=np.int64)
            state, logits, _ = runner.segment(ids, np.ones_like(ids), state)
            tail, kv, commits = [], None, commits + 1
            continue
        if kv is None:
            ids = np.asarray([tail], dtype=np.int64)
            logits, kv = runner.decode(ids, np.ones_like(ids), state, None)
        else:
            logits, kv = runner.decode(np.asarray([[tok]], dtype=np.int64), np.ones((1, kv.shape[4] + 1), dtype=np.int64), state, kv)
        check_decode and check_decode(tail, state, logits)
    return out, seen, commits


def ort_available(allow_missing: bool) -> bool:
    try:
        import onnxruntime  # noqa: F401
        return True
    except ImportError:
        if not allow_missing:
            raise SystemExit("verify needs onnxruntime for Python (pip install onnxruntime); on a CPU machine "
                             "without it pass --allow-missing-onnxruntime and check the graphs with "
                             "models/toolkit/ort-check.ts")
        if torch.cuda.is_available():
            raise SystemExit("onnxruntime is missing on a CUDA machine: the graphs must be checked here")
        print("\n*** onnxruntime for Python is not installed: the ONNX graphs were NOT checked by verify; "
              "golden.json is PyTorch's. Check them with: node --import tsx models/toolkit/ort-check.ts <package> ***\n",
              flush=True)
        return False


def verify_state(model, package_dir: str, doc_ids: list[int], meta: dict, n_segments: int = 10, gen_tokens: int = 40,
                 write_golden: bool = True, allow_missing_ort: bool = False) -> dict:
    cfg = model.cfg
    S = cfg.segment_length
    graphs, fp16_graphs = meta["graphs"]["fp32"], meta["graphs"].get("fp16")
    need = n_segments * S
    if len(doc_ids) < need + 3 * S:
        raise SystemExit(f"verify needs a document of at least {need + 3 * S} tokens, got {len(doc_ids)}")
    ref = TorchRunner(model.eval())
    ort_ = OrtRunner(package_dir, graphs, meta) if ort_available(allow_missing_ort) else None
    report, golden_segments, failures = {"segments": [], "onnxruntime": ort_ is not None}, [], []

    def check(what, a, b, tol):
        d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
        if d > tol:
            failures.append(f"{what}: max-abs-diff {d:.3g} > {tol:g}")
        return d

    # ARMT's associative matrices are sums over segments (values of 10+ after a few): float32 summation
    # order alone moves them by about 1e-5 of that, so their absolute tolerance is 10x the others'.
    tol = dict(TOL, state=TOL["state"] * (10 if cfg.architecture == "armt" else 1))

    def check_state(what, a, b):
        return max(check(f"{what} {n}", a[n], b[n], tol["state"]) for n in a)

    # 1. consecutive full segments, state carried
    s_ref = ref.init_state(1)
    s_ort = ort_.init_state(1) if ort_ else None
    if ort_:
        check_state("initial state", s_ref, s_ort)
    for i in range(n_segments):
        ids = np.asarray([doc_ids[i * S:(i + 1) * S]], dtype=np.int64)
        mask = np.ones_like(ids)
        s_ref, l_ref, lp_ref = ref.segment(ids, mask, s_ref)
        row = {}
        if ort_:
            s_ort, l_ort, lp_ort = ort_.segment(ids, mask, s_ort)
            row = {"state": check_state(f"segment {i} state", s_ref, s_ort), "logits": check(f"segment {i} logits", l_ref, l_ort, TOL["logits"]),
                   "token_logprobs": check(f"segment {i} token_logprobs", lp_ref, lp_ort, TOL["token_logprobs"])}
        report["segments"].append(row)
        golden_segments.append({"input_ids": ids[0].tolist(), "state_after": {n: b64(v[0]) for n, v in s_ref.items()},
                                "top_logits": top_k(l_ref[0]), "token_logprobs": [float(x) for x in lp_ref[0]]})

    # 2. a padded batch: rows of different lengths, each must equal its unpadded run
    lens, base = [S, S // 2 + 3, 7], need
    pids = np.full((3, S), cfg.pad_id, dtype=np.int64)
    pmask = np.zeros((3, S), dtype=np.int64)
    for r, n in enumerate(lens):
        pids[r, :n] = doc_ids[base + r * S: base + r * S + n]
        pmask[r, :n] = 1
    rs, rl, rlp = ref.segment(pids, pmask, ref.init_state(3))
    for name, run in (("torch", ref), ("onnxruntime", ort_)):
        if run is None:
            continue
        ps, pl, plp = run.segment(pids, pmask, run.init_state(3))
        if run is ort_:
            check_state("padded batch state (ort vs torch)", {k: v for k, v in rs.items()}, ps)
        for r, n in enumerate(lens):
            us, ul, ulp = run.segment(pids[r:r + 1, :n], pmask[r:r + 1, :n], run.init_state(1))
            check_state(f"{name}: padded row {r} state vs unpadded", {k: v[r] for k, v in ps.items()}, {k: v[0] for k, v in us.items()})
            check(f"{name}: padded row {r} logits vs unpadded", pl[r], ul[0], TOL["logits"])
            check(f"{name}: padded row {r} token_logprobs vs unpadded", plp[r, :n], ulp[0], TOL["token_logprobs"])
            check(f"{name}: padded row {r} token_logprobs at padding", plp[r, n:], np.zeros(S - n), 0.0)

    # 3. greedy continuation across a segment boundary; in PyTorch every decode call against segment
    prompt = doc_ids[base + 3 * S - (3 * S - 10): base + 3 * S]  # 2 full segments + S-10 tail tokens
    worst = [0.0]

    def decode_vs_segment(tail, state, logits):
        ids = np.asarray([tail], dtype=np.int64)
        _, seg_logits, _ = ref.segment(ids, np.ones_like(ids), state)
        worst[0] = max(worst[0], check(f"torch decode vs segment at tail length {len(tail)}", logits, seg_logits, TOL["logits"]))

    g_ref, seen_ref, commits = greedy(ref, prompt, gen_tokens, S, decode_vs_segment)
    report["torch_decode_vs_segment_logits"] = worst[0]
    if commits < 1:
        failures.append("greedy continuation did not cross a segment boundary")
    if ort_:
        g_ort, seen_ort, _ = greedy(ort_, prompt, gen_tokens, S)
        if g_ref != g_ort:
            failures.append(f"greedy continuation differs: torch {g_ref} vs onnxruntime {g_ort}")
        k = min(len(seen_ref), len(seen_ort))
        report["greedy_logits"] = check("greedy step logits", np.stack(seen_ref[:k]), np.stack(seen_ort[:k]), TOL["logits"])

    # 4. fp16 graphs (optional): looser agreement with the fp32 reference
    if fp16_graphs and ort_:
        import onnxruntime as ort
        prov = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["CPUExecutionProvider"]
        h = OrtRunner(package_dir, fp16_graphs, meta, providers=prov)
        s16, s32, agree, worst16 = h.init_state(1), ref.init_state(1), 0, 0.0
        for i in range(n_segments):
            ids = np.asarray([doc_ids[i * S:(i + 1) * S]], dtype=np.int64)
            s16, l16, _ = h.segment(ids, np.ones_like(ids), s16)
            s32, l32, _ = ref.segment(ids, np.ones_like(ids), s32)
            worst16 = max([worst16] + [float(np.max(np.abs(s16[n] - s32[n]))) for n in s32 if n != "denom"])
            agree += int(np.argmax(l16[0]) == np.argmax(l32[0]))
        g16, _, _ = greedy(h, prompt, gen_tokens, S)
        report["fp16"] = {"provider": prov[0], "state_max_abs_diff": worst16, "top1_agree_segments": f"{agree}/{n_segments}",
                          "greedy_same_tokens": f"{sum(a == b for a, b in zip(g16, g_ref))}/{len(g_ref)}"}
        if worst16 > 0.25 or agree < n_segments - 1:
            failures.append(f"fp16 graphs drift from fp32: {report['fp16']}")

    report["failures"] = failures
    print(json.dumps({k: v for k, v in report.items() if k != "segments"}, indent=1), flush=True)
    if ort_:
        print("segment diffs (state, logits, token_logprobs): " + ", ".join(
            f"{r['state']:.1e}/{r['logits']:.1e}/{r['token_logprobs']:.1e}" for r in report["segments"]), flush=True)
    if failures:
        raise SystemExit("verify FAILED:\n  " + "\n  ".join(failures))
    if write_golden:
        golden = {
            "format": "rmt-serve/golden@1",
            "architecture": cfg.architecture,
            "reference": "PyTorch fp32 (rmt_toolkit), " + ("checked against onnxruntime CPU" if ort_ else
                                                           "NOT checked against onnxruntime by verify (see ort-check.ts)"),
            "graphs": graphs,
            "tolerance": tol,
            "state_encoding": "per state entry: {name: base64 of float32 little-endian, row-major, shape = model.json state[].shape}",
            "sequence": {"note": "consecutive full segments of a held-out Brown document, state carried from the initial state",
                         "segments": golden_segments},
            "padded_batch": {"note": "one call, initial state in every row; each row equals its unpadded run",
                             "input_ids": pids.tolist(), "attention_mask": pmask.tolist(),
                             "next_state": [{n: b64(v[r]) for n, v in rs.items()} for r in range(3)],
                             "top_logits": [top_k(x) for x in rl], "token_logprobs": [[float(v) for v in row] for row in rlp]},
            "greedy": {"note": "prompt = 2 full segments + a tail; greedy decoding with the KV cache and the state on every "
                               "decode call, committing the segment when it fills", "prompt_ids": list(map(int, prompt)),
                       "max_new_tokens": gen_tokens, "expected_ids": g_ref, "segments_committed_during_generation": commits},
        }
        with open(os.path.join(package_dir, "golden.json"), "w") as fh:
            json.dump(golden, fh)
    return report
