"""ONNX Runtime (CPU) throughput of the shared model through the real handler: windows/second,
bucketing on and off, by batch size.

    python -m benchmarks.bench_onnx --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2 --cache-dir cache [--windows 256] [--threads 1]

The model is resolved to an ONNX bundle (``export.resolve_model_bundle``, cached in
``--cache-dir``) and run by ``OnnxRuntimeQAHandler.run_inference`` (the RunInference code path:
group by bucket, pad, run, cut). ``--windows`` windows are taken in file order. For each batch
size:

- off (padded): handler buckets (384,), batches of consecutive windows: every window costs 384;
- on (bucketed): handler buckets 128/256/384 and batches formed per bucket
  (``LengthBucketBatcher``), as a bucketing pipeline forms them;
- on, fine buckets (``--fine``): the same with the finer buckets (default: 6 buckets derived from
  the data by ``batching.suggest_buckets``).

ONNX Runtime gets ``--threads`` intra-op threads (default 1, and the process is pinned to as many
cores), so the figures are per core and comparable on a shared machine. All configurations run
in ``--repeat`` interleaved rounds (a warm-up call each time) and the best round is reported, so a
change of machine load does not masquerade as a batch-size effect; the line gives windows/s,
tokens/s, engine tokens, every round's seconds and the load average of each round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.common import emit


def pin(cores: int) -> List[int]:
    usable = sorted(os.sched_getaffinity(0))
    chosen = usable[:max(1, cores)]
    os.sched_setaffinity(0, set(chosen))
    return chosen


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="checkpoint folder, hub id or ONNX bundle")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--windows", type=int, default=96, help="windows per configuration (file order)")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (and cores pinned)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds over all configurations (best reported)")
    parser.add_argument("--fine", default="suggest",
                        help="fine buckets: 'suggest' (6 derived from the data), comma-separated lengths, or 'none'")
    args = parser.parse_args(argv)
    cores = pin(args.threads)

    from benchmarks.bench_inflation import bucketed_batches, windows_of
    from trt_handler.qa.batching import suggest_buckets, validate_buckets
    from trt_handler.engines.export import resolve_model_bundle
    from trt_handler.backends.handlers import OnnxRuntimeQAHandler, plan_model_calls

    bundle = resolve_model_bundle(args.model, args.cache_dir)
    all_windows = windows_of(args.data, str(bundle))
    windows = all_windows[: args.windows]
    modes: Dict[str, Any] = {"off": (384,), "on": (128, 256, 384)}
    if args.fine == "suggest":
        modes["on_fine"] = suggest_buckets([w.length for w in all_windows], 6, 384, 32)
    elif args.fine != "none":
        modes["on_fine"] = validate_buckets([int(x) for x in args.fine.split(",")])
    real_tokens = sum(w.length for w in windows)
    configs = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        for mode, buckets in modes.items():
            handler = OnnxRuntimeQAHandler(str(bundle), buckets=buckets, max_batch_size=bs,
                                           intra_op_threads=args.threads)
            if mode == "off":
                batches = [windows[i:i + bs] for i in range(0, len(windows), bs)]
            else:
                batches = bucketed_batches(windows, buckets, bs, 0)
            engine_tokens = sum(c.rows * c.seq_len for b in batches for c in plan_model_calls(b, buckets, bs))
            configs.append({"mode": mode, "bs": bs, "buckets": buckets, "handler": handler, "batches": batches,
                            "engine_tokens": engine_tokens, "walls": [], "cpus": [], "loads": []})
    session = configs[0]["handler"].load_model()  # one ONNX Runtime session: the handlers differ in batching only
    session_threads = args.threads
    # Rounds over all configurations (interleaved, so a change of machine load hits them alike);
    # the best round of each is reported.
    for _ in range(max(1, args.repeat)):
        for c in configs:
            c["handler"].run_inference(c["batches"][0][:1], session)  # warm-up of this shape
            w0, c0 = time.perf_counter(), time.process_time()
            for b in c["batches"]:
                c["handler"].run_inference(b, session)
            c["walls"].append(time.perf_counter() - w0)
            c["cpus"].append(time.process_time() - c0)
            c["loads"].append(round(os.getloadavg()[0], 2))
    for c in configs:
        wall = min(c["walls"])
        emit(f"onnx_windows_per_s_{c['mode']}_b{c['bs']}", len(windows) / wall, "windows/s",
             bucketing=c["mode"] != "off", buckets=list(c["buckets"]), batch_size=c["bs"], windows=len(windows),
             real_tokens_per_s=round(real_tokens / wall, 1), engine_tokens=c["engine_tokens"],
             real_tokens=real_tokens, runs_s=[round(x, 2) for x in c["walls"]],
             cpu_s=[round(x, 2) for x in c["cpus"]], intra_op_threads=session_threads, cores_pinned=cores,
             data=os.path.basename(args.data), model=os.path.basename(os.path.normpath(args.model)),
             round_loads=c["loads"], loadavg=[max(c["loads"]), *[round(x, 2) for x in os.getloadavg()[1:]]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
