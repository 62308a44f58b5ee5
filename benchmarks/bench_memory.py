"""Peak memory (RSS) of cutting one 1 MB context into windows, with every limit off.

    python -m benchmarks.bench_memory --model ../shared/models/minilm-l6-squad2 [--mb 1] [--script latin|cjk]

The measurement runs in a fresh child process (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` there
is its own peak), so nothing this process imported or freed counts. The child loads the tokenizer,
generates a context of ``--mb`` MB of UTF-8 text (seeded random words of a small vocabulary, or
CJK characters: one token a character, the worst case per byte), then makes its windows with
``FeatureConfig(max_windows_per_question=None)`` (the record-level character limits are not in
play: WindowMaker is called directly). Prints one JSON line per run:

    {"figure": "peak_rss_mib_1mb_context", "value": ..., "unit": "MiB", "baseline_mib": ...,
     "context_tokens": ..., "windows": ..., "seconds": ..., ...}

``baseline_mib`` is the child's peak RSS after loading the tokenizer and generating the text, before
windows are made; ``value`` is the peak over the whole run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

_CHILD = r"""
import json, resource, sys, time
import numpy as np
model, mb, script = sys.argv[1], float(sys.argv[2]), sys.argv[3]
from trt_handler.qa.types import QAExample
from trt_handler.qa.windows import FeatureConfig, WindowMaker, load_tokenizer

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

maker = WindowMaker(load_tokenizer(model), FeatureConfig(max_windows_per_question=None))
rng = np.random.default_rng(0)
target = int(mb * 1_000_000)
if script == "cjk":
    context = "".join(chr(0x4E00 + int(i)) for i in rng.integers(0, 3000, target // 3))
else:
    words = ["river", "castle", "seven", "north", "music", "green", "table", "silver", "of", "the"]
    parts, size = [], 0
    for i in rng.integers(0, len(words), target // 3):
        parts.append(words[i]); size += len(words[i]) + 1
        if size >= target:
            break
    context = " ".join(parts)[:target]
example = QAExample("big", "Which castle is by the river?", context)
baseline = rss_mib()
t0 = time.perf_counter()
windows = maker.windows(example)
seconds = time.perf_counter() - t0
print(json.dumps({"baseline_mib": round(baseline, 1), "value": round(rss_mib(), 1),
                  "context_bytes": len(context.encode("utf-8")), "context_chars": len(context),
                  "context_tokens": int(sum(int(w.max_context.sum()) for w in windows)),
                  "windows": len(windows), "seconds": round(seconds, 2)}))
"""


def measure(model: str, mb: float, script: str) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, model, str(mb), script],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the measuring child failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    child = json.loads(out.stdout.strip().splitlines()[-1])
    figure = "peak_rss_mib_1mb_context" if mb == 1 else f"peak_rss_mib_{mb:g}mb_context"
    return {"figure": figure, "value": child.pop("value"), "unit": "MiB", "script": script,
            "limits": "off (max_windows_per_question=None)", **child}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="../shared/models/minilm-l6-squad2", help="folder with the tokenizer")
    parser.add_argument("--mb", type=float, default=1.0, help="context size in MB of UTF-8 text")
    parser.add_argument("--script", choices=("latin", "cjk"), action="append",
                        help="kind of text (repeatable; default latin)")
    args = parser.parse_args(argv)
    rows: List[Dict[str, Any]] = [measure(args.model, args.mb, s) for s in (args.script or ["latin"])]
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
