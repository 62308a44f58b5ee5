"""The README's GPU plot and table from ``bench_gpu pipeline`` JSON lines: windows/s by process count,
N independent processes vs N processes feeding one inference server, against the model alone.

    python -m benchmarks.plot_server benchmarks/results/gpu_server_h100.jsonl --png benchmarks/results/gpu_server_h100.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_gpu import pipeline_table  # noqa: E402


def load(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot(rows: Sequence[Dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for mode, style, label in (("server", "o-", "N processes, one inference server"),
                               ("independent", "s--", "N independent processes (a model each)")):
        points = sorted((r["procs"], r["steady_windows_per_s"]) for r in rows if r["mode"] == mode)
        if points:
            ax.plot([p for p, _ in points], [w for _, w in points], style, label=label)
    model = [r["model_only_sorted_windows_per_s"] for r in rows if r.get("model_only_sorted_windows_per_s")]
    if model:
        ax.axhline(sum(model) / len(model), color="gray", linestyle=":",
                   label="model alone (sorted, padded to longest x8, batch 64)")
        ax.axhline(0.9 * sum(model) / len(model), color="lightgray", linestyle=":", label="0.9 x model alone")
    procs = sorted({r["procs"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(procs, [str(p) for p in procs])
    ax.set_xlabel("pipeline processes on the worker (N)")
    ax.set_ylabel("windows/s, steady state")
    ax.set_ylim(bottom=0)
    ax.set_title(f"BERT-large shape, PyTorch fp16 — {rows[0]['device']}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl", type=Path)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [r for r in load(args.jsonl) if r.get("figure") == "pipeline_steady_windows_per_s"]
    table = pipeline_table(rows)
    print(table)
    if args.md:
        args.md.write_text(table + "\n", encoding="utf-8")
    if args.png:
        plot(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
