"""PNG of bench/gpu-paired.sh results: each service level beside the limit readings just before and after it.

  /usr/bin/python3 bench/plot-paired.py bench/results/gpu-15     (reads <dir>/paired*/summary.txt; needs matplotlib)

One group per level: the service's tok/s, the one-segment graph's limit before and after (median run)
and, where read, the steps graph's limit before and after. Writes <dir>/paired.png.
"""
from __future__ import annotations

import glob
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LIMIT = re.compile(r"limit-(\d+): fp16 (steps\d+ )?batch\s+(\d+) \|.*\| (\d+) tok/s")
SERVICE = re.compile(r"svc-(\d+): N=\s*(\d+) \| (\d+) tok/s")


def levels(d: str):
    out = []
    for f in sorted(glob.glob(os.path.join(d, "paired*", "summary.txt"))):
        name = os.path.basename(os.path.dirname(f))
        lim: dict[int, dict[str, int]] = {}
        svc: dict[int, tuple[int, int]] = {}
        for line in open(f):
            m = LIMIT.match(line)
            if m:
                lim.setdefault(int(m.group(1)), {})["steps" if m.group(2) else "one"] = int(m.group(4))
            m = SERVICE.match(line)
            if m:
                svc[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
        for i, (n, tok) in sorted(svc.items()):
            # paired8-off: the same level with one segment per run (RMT_SEGMENT_STEPS=0).
            label = f"{n} session{'s' if n > 1 else ''}\n{'one segment per run, ' if name.endswith('-off') else ''}level {i}"
            out.append((n, label, tok, lim.get(i - 1, {}), lim.get(i, {})))
    return sorted(out, key=lambda x: x[0])


def main(d: str) -> None:
    rows = levels(d)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(rows)), 4.5))
    w = 0.16
    for k, (_, label, tok, before, after) in enumerate(rows):
        bars = [(tok, "service", "tab:blue"), (before.get("one"), "one-segment limit, before", "tab:gray"),
                (after.get("one"), "one-segment limit, after", "silver"), (before.get("steps"), "steps limit, before", "tab:orange"),
                (after.get("steps"), "steps limit, after", "navajowhite")]
        for j, (v, name, color) in enumerate(bars):
            if v:
                ax.bar(k + (j - 2) * w, v / 1e3, w, color=color, label=name if k == 0 else None)
        ax.text(k - 2 * w, tok / 1e3, f"{tok / 1e3:.0f}k", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [r[1] for r in rows], fontsize=8)
    ax.set_ylabel("k tokens/s")
    ax.set_title("service levels between engine-limit readings (H200, GPT-2-small RMT, fp16)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = os.path.join(d, "paired.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
