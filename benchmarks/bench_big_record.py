"""Seconds ``parse_record`` takes to reject a 50 MB JSONL line, for several shapes of line.

    python -m benchmarks.bench_big_record [--mb 50]

Prints one JSON line per shape: {"figure": "parse_record_seconds_50mb_line", "shape": ..., "value": ...,
"unit": "s", "code": <reason code>}. Shapes: a plain-text context, a context of \\u escapes, a
list of 12 M gold answers, a list of 25 M numbers in an ignored key; each as str and as bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Dict, Optional, Sequence


def shapes(n: int) -> Dict[str, str]:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta"]
    head = '{"id": "big", "question": "What?", "context": '
    return {
        "text_context": head + json.dumps(" ".join(rng.choice(words) for _ in range(n // 6)), ensure_ascii=False) + "}",
        "escaped_context": head + '"' + "\\u00e9" * (n // 6) + '"}',
        "answers_list": head + '"c", "answers": [' + ",".join(['"a"'] * (n // 4)) + "]}",
        "numbers_list": head + '"c", "extra": [' + ",".join(["1"] * (n // 2)) + "]}",
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipelines.records import parse_record, reason_code
    from trt_handler.qa.types import Rejection

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50.0)
    args = parser.parse_args(argv)
    for shape, line in shapes(int(args.mb * 1_000_000)).items():
        for kind, raw in (("str", line), ("bytes", line.encode())):
            t0 = time.perf_counter()
            out = parse_record(raw)
            seconds = time.perf_counter() - t0
            print(json.dumps({"figure": f"parse_record_seconds_{args.mb:g}mb_line", "shape": shape, "type": kind,
                              "chars": len(raw), "value": round(seconds, 5), "unit": "s",
                              "code": reason_code(out) if isinstance(out, Rejection) else "accepted"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
