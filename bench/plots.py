"""PNG plots for BENCHMARKS.md from the JSON the GPU benches write (bench/gpu-suite.sh plots).

  python3 bench/plots.py bench/out/gpu     (needs matplotlib)
"""
from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(d, name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None


def engine_plot(d, lims, tag):
    """lims: [(limit json, label)] drawn on one figure (e.g. masked and fused attention)."""
    lim = lims[0][0]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for one, label in lims:
        for prec in ("fp32", "fp16"):
            p = [x for x in one["points"] if x["precision"] == prec]
            if not p:
                continue
            b = [x["batch"] for x in p]
            name = f"{prec}, {label}" if label else prec
            a1.plot(b, [x["tokPerS"] / 1e3 for x in p], "o-", label=name)
            a2.plot(b, [x["mfu"] * 100 for x in p], "o-", label=name)
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xlabel("batch (sessions per onnxruntime run)")
        a.grid(alpha=0.3)
        a.legend()
    a1.set_ylabel("k tokens/s")
    a2.set_ylabel(f"MFU % of {lim['peakTflops']} TFLOP/s")
    a2.axhline(40, color="grey", ls="--", lw=1)
    fig.suptitle(f"engine limit: {' vs '.join(o['model'] for o, _ in lims)} segment steps, onnxruntime {lim['provider']}")
    fig.tight_layout()
    fig.savefig(os.path.join(d, f"engine-limit-{tag}.png"), dpi=110)


def service_plot(d, svcs, lim, ref):
    svc = svcs[0]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    n = sorted({x["sessions"] for s in svcs for x in s["levels"]})
    for s in svcs:
        lv = s["levels"]
        # Settings that differ between the runs drawn: the batch window and whether engine threads take turns.
        extra = "" if len(svcs) == 1 else f", RMT_BATCH_WAIT_MS {s.get('batchWaitMs', 0)}, RMT_ENGINE_TURNS {int(s.get('engineTurns', 1))}"
        ax.plot([x["sessions"] for x in lv], [x["tokPerS"] / 1e3 for x in lv], "o-",
                label=f"service, {s.get('workerProcesses', 1)} worker process(es){extra}")
        steady = [x for x in lv if x.get("steadyTokPerS") == x.get("steadyTokPerS") and x.get("steadyTokPerS")]
        if steady and len(svcs) == 1:
            ax.plot([x["sessions"] for x in steady], [x["steadyTokPerS"] / 1e3 for x in steady], "o:",
                    label=f"service while all sessions stream, {s.get('workerProcesses', 1)} process(es)")
    if lim:
        e = {x["batch"]: x["tokPerS"] for x in lim["points"] if x["precision"] == svc["precision"]}
        ax.plot([k for k in n if k in e], [e[k] / 1e3 for k in n if k in e], "s--", label=f"engine limit ({svc['precision']}, same batch)")
    import glob as _glob

    et = next(iter(sorted(_glob.glob(os.path.join(d, "engine-thread*.txt")))), "")
    if et:
        import re
        pts = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"sessions\s+(\d+) \| (\d+) tok/s", open(et).read())]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] / 1e3 for p in pts], "d-.", label="engine thread alone, dependent sessions")
    if ref:
        for loop, mk in (("authors", "^:"), ("lean", "v:")):
            r = {x["docs"]: x["tokPerS"] for x in ref["results"] if x["loop"] == loop and x["mode"] == "batched"}
            ax.plot([k for k in n if k in r], [r[k] / 1e3 for k in n if k in r], mk, label=f"PyTorch reference, batched ({loop})")
            one = [x["tokPerS"] for x in ref["results"] if x["loop"] == loop and x["mode"] == "one at a time"]
            if one:
                ax.axhline(one[0] / 1e3, ls=":", lw=1, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("k tokens/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{svc['model']} ({svc['precision']}) end to end")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "service.png"), dpi=110)


def main():
    d = sys.argv[1]
    lg = load(d, "limit-gpt2.json")
    lf = load(d, "limit-fused.json")
    ls = load(d, "limit-small.json")
    gpt2 = [(x, label) for x, label in ((lg, "masked attention"), (lf, "fused attention")) if x]
    if gpt2:
        engine_plot(d, gpt2, "gpt2-small")
    if ls:
        engine_plot(d, [(ls, "")], "rmt-brown-small")
    import glob

    svcs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, "service-w*.json")))]
    if svcs:
        lim = next((x for x in (lf, lg) if x and x["model"] == svcs[0]["model"]), None)
        service_plot(d, svcs, lim, load(d, "reference.json"))
    print("plots written to", d)


if __name__ == "__main__":
    main()
