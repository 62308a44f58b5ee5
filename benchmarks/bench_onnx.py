"""ONNX Runtime (CPU) throughput of the shared model through the production planner: windows/second
for three plans, by the cap on rows per model call.

    python -m benchmarks.bench_onnx --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2 --cache-dir cache [--windows 96] [--threads 1]

The model is resolved to an ONNX bundle (``export.resolve_model_bundle``, cached in
``--cache-dir``) and loaded by ``OnnxRuntimeQAHandler(bundle, intra_op_threads=--threads)``. The
first ``--windows`` windows of the file (whole questions, in file order) are one Beam batch; it is
planned by :func:`trt_handler.answer_batch.plan_model_calls` and run by
:func:`trt_handler.answer_batch.run_model_calls` (pad each call, run it, cut the logits back to each
window's length: what ``answer_batch`` does before the answers). Plans:

- ``padded``: one bucket 384, ``pad_to="bucket"``: every window costs 384 tokens (bucketing off);
- ``128_256_384``: buckets 128/256/384 padded to the bucket (the old default);
- ``default``: ``BatchPlan.for_buckets()`` (buckets 128,160,192,224,288,384, token budget 64 x 384
  per profile, calls sorted and padded to their longest window rounded up to 8).

Each plan runs with rows per call capped at each of ``--batch-sizes`` (``for_buckets(max_batch=)``;
the token budget caps them further). ONNX Runtime gets ``--threads`` intra-op threads (default 1,
and the process is pinned to as many cores), so the figures are per core. All configurations run
in ``--repeat`` interleaved rounds (a warm-up call of the first call's shape each time) and the best
round is reported; the line gives windows/s, real tokens/s, engine tokens, calls, every round's
seconds and the load average of each round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.common import emit

PLANS = ("padded", "128_256_384", "default")


def pin(cores: int) -> List[int]:
    usable = sorted(os.sched_getaffinity(0))
    chosen = usable[:max(1, cores)]
    os.sched_setaffinity(0, set(chosen))
    return chosen


def make_plan(name: str, max_batch: Optional[int]) -> Any:
    from trt_handler.planning import BatchPlan

    if name == "padded":
        return BatchPlan.for_buckets((384,), max_batch, pad_to="bucket")
    if name == "128_256_384":
        return BatchPlan.for_buckets((128, 256, 384), max_batch, pad_to="bucket")
    if name == "default":
        return BatchPlan.for_buckets(max_batch=max_batch)
    raise ValueError(f"unknown plan {name!r}; one of {PLANS}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="checkpoint folder, hub id or ONNX bundle")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--windows", type=int, default=96, help="windows of whole questions, in file order")
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="caps on rows per model call")
    parser.add_argument("--plans", default=",".join(PLANS), help=f"subset of {','.join(PLANS)}")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (and cores pinned)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds over all configurations (best reported)")
    args = parser.parse_args(argv)
    cores = pin(args.threads)

    from benchmarks.bench_inflation import question_windows
    from trt_handler.answer_batch import run_model_calls
    from trt_handler.backends.handlers import OnnxRuntimeQAHandler
    from trt_handler.engines.export import resolve_model_bundle
    from trt_handler.planning import plan_model_calls

    bundle = resolve_model_bundle(args.model, args.cache_dir)
    windows: List[Any] = []
    for ws in question_windows(args.data, str(bundle)):
        if len(windows) + len(ws) > args.windows:
            break
        windows.extend(ws)
    lengths = [w.length for w in windows]
    real_tokens = sum(lengths)
    runner = OnnxRuntimeQAHandler(str(bundle), intra_op_threads=args.threads).load_model()
    configs: List[Dict[str, Any]] = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        for name in [p.strip() for p in args.plans.split(",") if p.strip()]:
            plan = make_plan(name, bs)
            calls = plan_model_calls(lengths, plan)
            configs.append({"plan": name, "bs": bs, "buckets": plan.buckets, "pad_to": plan.pad_to, "calls": calls,
                            "engine_tokens": sum(c.rows * c.seq_len for c in calls), "walls": [], "cpus": [],
                            "loads": []})
    for _ in range(max(1, args.repeat)):  # interleaved, so a change of load hits every configuration alike
        for c in configs:
            first = c["calls"][0]
            run_model_calls(windows, [type(first)(first.indices[:1], first.seq_len, 1, first.profile)], runner)
            w0, c0 = time.perf_counter(), time.process_time()
            out = run_model_calls(windows, c["calls"], runner)
            c["walls"].append(time.perf_counter() - w0)
            c["cpus"].append(time.process_time() - c0)
            c["loads"].append(round(os.getloadavg()[0], 2))
            if len(out) != len(windows):
                raise SystemExit(f"run_model_calls returned {len(out)} logits for {len(windows)} windows: a bug")
    for c in configs:
        wall = min(c["walls"])
        emit(f"onnx_windows_per_s_{c['plan']}_b{c['bs']}", len(windows) / wall, "windows/s",
             plan=c["plan"], buckets=list(c["buckets"]), pad_to=c["pad_to"], batch_size=c["bs"],
             model_calls=len(c["calls"]), call_shapes=sorted({cl.shape for cl in c["calls"]}),
             windows=len(windows), real_tokens_per_s=round(real_tokens / wall, 1),
             engine_tokens=c["engine_tokens"], real_tokens=real_tokens,
             inflation=round(c["engine_tokens"] / real_tokens, 4), runs_s=[round(x, 2) for x in c["walls"]],
             cpu_s=[round(x, 2) for x in c["cpus"]], intra_op_threads=args.threads, cores_pinned=cores,
             data=os.path.basename(args.data), model=os.path.basename(os.path.normpath(args.model)),
             api="answer_batch.plan_model_calls + run_model_calls, OnnxRuntimeQAHandler.load_model()",
             round_loads=c["loads"], loadavg=[max(c["loads"]), *[round(x, 2) for x in os.getloadavg()[1:]]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
