"""Draw docs/benchmarks.png from the JSON the bench scripts wrote (bench/results/*.json).

    python bench/exec_latency.py && python bench/event_throughput.py \\
        && python bench/concurrency.py && python bench/chart.py

Left: latency p50 (and p95 whiskers) of each path beside the raw exec floor, a dashed line.
Right: one stream's MB/s beside the raw aiodocker read of the same program, per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "benchmarks.png"
LATENCY = (
    "raw exec (floor)",
    "exec",
    "exec back to back",
    "create, warm (claim)",
    "create + first output, warm",
    "create, cold",
    "create + first output, cold",
    "naive run per exec",
)


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    latency, throughput = load("exec_latency"), load("event_throughput")
    if latency is None and throughput is None:
        print("no results in bench/results/: run the bench scripts first", file=sys.stderr)
        return 1
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]}
    )
    if latency is not None:
        names = [n for n in LATENCY if n in latency]
        p50 = [latency[n]["p50_ms"] for n in names]
        p95 = [latency[n]["p95_ms"] for n in names]
        floor = latency["raw exec (floor)"]["p50_ms"]
        colors = ["#888888" if n.startswith(("raw", "naive")) else "#2b6cb0" for n in names]
        ypos = range(len(names))
        left.barh(ypos, p50, color=colors)
        above = [b - a for a, b in zip(p50, p95, strict=True)]
        left.errorbar(p50, ypos, xerr=[[0] * len(p50), above], fmt="none", ecolor="#333333",
                      capsize=3, lw=1)
        left.axvline(floor, ls="--", color="#c53030", lw=1, label=f"raw exec floor {floor:.0f} ms")
        for y, value in zip(ypos, p50, strict=True):
            note = f" {value:.0f} ms ({value / floor:.2f}x)"
            left.text(max(value, p95[y]), y, note, va="center", fontsize=8)
        left.set_yticks(list(ypos), names, fontsize=9)
        left.invert_yaxis()
        left.set_xlabel("ms, p50 (whisker: p95)")
        left.set_title(f"Latency (load average {latency['load_average']:.1f})", fontsize=10)
        left.legend(loc="lower right", fontsize=8)
    if throughput is not None:
        runs = throughput["runs"]
        labels = [f"{r['mode']} #{i + 1}" for i, r in enumerate(runs)]
        x = range(len(runs))
        right.bar([i - 0.2 for i in x], [r["floor_mb_per_s"] for r in runs], width=0.4,
                  color="#888888", label="raw aiodocker read (floor)")
        right.bar([i + 0.2 for i in x], [r["mb_per_s"] for r in runs], width=0.4,
                  color="#2b6cb0", label="gateway, one SSE stream")
        right.set_xticks(list(x), labels, fontsize=8, rotation=20)
        right.set_ylabel("MB/s")
        right.set_title(
            f"{throughput['mb']} MiB through one stream (load {throughput['load_average']:.1f})",
            fontsize=10,
        )
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"written: {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
