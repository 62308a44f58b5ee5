"""Compute inflation: tokens the engine processes / real tokens, with and without length buckets.

    python -m benchmarks.bench_inflation --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2 [--holdout ../shared/data/squad/squad_B1.json]

Every question of ``--data`` is cut into windows (``WindowMaker``, 384/128/64), in file order.
Batches are formed the two ways a pipeline can form them, ``--batch`` windows at most:

- arrival: consecutive windows, as Beam's default BatchElements path does (it ignores
  ``length_fn`` outside its stateful path);
- bucketed: one batch per length bucket (``batching.LengthBucketBatcher``, flushed every
  ``--bundle`` windows like a DoFn at the end of a bundle), as the stateful path or a bucketing
  DoFn does.

Each batch is planned with the handlers' own ``handlers.plan_model_calls`` (group by bucket, pad
to the bucket, or to the engine profile's opt length with ``--profiles``, split to the max batch)
and the engine tokens are the sum of rows x padded length of its calls. Real tokens are the sum
of window lengths. ``compute_inflation_padded`` pads every window to 384 (one bucket: bucketing
off); ``compute_inflation_bucketed`` uses 128/256/384; finer sets are reported too, including the
``--suggest`` buckets that ``batching.suggest_buckets`` derives from ``--data`` (checked on the
held-out ``--holdout`` data when given). Padded tokens do not depend on batch formation (each
window is padded to its own bucket); the number and fullness of model calls do, and they are in
each line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.common import emit


def windows_of(path: str, model: str) -> List[Any]:
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import FeatureError, WindowMaker, load_tokenizer

    examples = load_examples(path)
    maker = WindowMaker(load_tokenizer(model))
    out: List[Any] = []
    for i in range(0, len(examples), 64):  # the pipeline's feature batches, in file order
        for result in maker.windows_many(examples[i:i + 64]):
            if not isinstance(result, FeatureError):
                out.extend(result)
    return out


def arrival_batches(windows: Sequence[Any], batch: int) -> List[List[Any]]:
    return [list(windows[i:i + batch]) for i in range(0, len(windows), batch)]


def bucketed_batches(windows: Sequence[Any], buckets: Sequence[int], batch: int, bundle: int) -> List[List[Any]]:
    from trt_handler.qa.batching import LengthBucketBatcher

    batcher = LengthBucketBatcher(buckets, batch)
    out: List[List[Any]] = []
    for i, w in enumerate(windows):
        full = batcher.add(w)
        if full:
            out.append(full)
        if bundle and (i + 1) % bundle == 0:
            out.extend(batcher.flush())
    out.extend(batcher.flush())
    return out


def account(batches: Sequence[Sequence[Any]], buckets: Sequence[int], max_batch: int,
            with_profiles: bool) -> Dict[str, Any]:
    """Engine tokens, real tokens and model calls of these batches under the handlers' plan."""
    from trt_handler.backends.handlers import plan_model_calls
    from trt_handler.engines.profiles import profiles_for_buckets

    profiles = profiles_for_buckets(buckets, 1, min(16, max_batch), max_batch) if with_profiles else None
    engine = real = calls = rows = 0
    for b in batches:
        for call in plan_model_calls(b, buckets, max_batch, profiles):
            engine += call.rows * call.seq_len
            rows += call.rows
            calls += 1
        real += sum(w.length for w in b)
    return {"engine_tokens": engine, "real_tokens": real, "model_calls": calls,
            "mean_rows_per_call": round(rows / max(calls, 1), 2), "inflation": engine / real}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_inflation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SQuAD JSON/JSONL (windows in file order)")
    parser.add_argument("--model", required=True, help="model folder or bundle (tokenizer)")
    parser.add_argument("--holdout", default=None, help="second data set to check the suggested buckets on")
    parser.add_argument("--batch", type=int, default=64, help="max windows per batch (default 64)")
    parser.add_argument("--bundle", type=int, default=1000, help="bucketed batcher flushes every N windows (0: never)")
    parser.add_argument("--suggest", type=int, default=6, help="number of data-derived buckets (default 6)")
    parser.add_argument("--multiple", type=int, default=32, help="suggested buckets are multiples of this (default 32)")
    parser.add_argument("--profiles", action="store_true", help="plan with engine profiles (pad to opt_seq) instead of buckets")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N windows (0: all)")
    args = parser.parse_args(argv)

    from trt_handler.qa.batching import suggest_buckets, uniform_buckets

    windows = windows_of(args.data, args.model)
    if args.limit:
        windows = windows[: args.limit]
    max_len = 384
    suggested = suggest_buckets([w.length for w in windows], args.suggest, max_len, args.multiple)
    sets = {
        "padded": (max_len,),
        "bucketed": (128, 256, 384),
        "bucketed_64": uniform_buckets(64, max_len),
        "bucketed_32": uniform_buckets(32, max_len),
        "bucketed_suggested": suggested,
    }
    holdout = windows_of(args.holdout, args.model) if args.holdout else None
    common = {"data": os.path.basename(args.data), "windows": len(windows), "batch": args.batch,
              "bundle": args.bundle, "plan": "engine profiles (opt_seq)" if args.profiles else "handler buckets",
              "loadavg": [round(x, 2) for x in os.getloadavg()]}
    for name, buckets in sets.items():
        arrival = account(arrival_batches(windows, args.batch), buckets, args.batch, args.profiles)
        bucketed = account(bucketed_batches(windows, buckets, args.batch, args.bundle), buckets, args.batch,
                           args.profiles)
        extra: Dict[str, Any] = {}
        if holdout is not None:
            held = account(bucketed_batches(holdout, buckets, args.batch, args.bundle), buckets, args.batch,
                           args.profiles)
            extra = {"holdout": os.path.basename(args.holdout), "holdout_inflation": round(held["inflation"], 4)}
        if name == "bucketed_suggested":
            extra["suggested_from"] = os.path.basename(args.data)
        emit(f"compute_inflation_{name}", bucketed["inflation"], "engine tokens / real tokens",
             buckets=list(buckets), profiles=len(buckets),
             engine_tokens=bucketed["engine_tokens"], real_tokens=bucketed["real_tokens"],
             calls_bucketed_formation=bucketed["model_calls"],
             rows_per_call_bucketed_formation=bucketed["mean_rows_per_call"],
             calls_arrival_formation=arrival["model_calls"],
             rows_per_call_arrival_formation=arrival["mean_rows_per_call"],
             inflation_arrival_formation=round(arrival["inflation"], 4),
             acceptance_le_1_15=bool(bucketed["inflation"] <= 1.15), **extra, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
