"""What the inference server's transport costs: a Beam batch of real SQuAD windows answered by a model
that costs nothing (logits = token ids), in process and through a server (shared memory + socket),
and what pickling the same arrays both ways would cost (what Beam's MultiProcessShared does).

    python -m benchmarks.bench_transport --squad ../shared/data/squad/squad_A.json --model models/minilm-l6-squad2

Prints one JSON line per figure (microseconds per Beam batch of ``--batch-windows`` windows, and per window).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import emit  # noqa: E402


def _median_us(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv: Optional[Sequence[str]] = None) -> int:
    import numpy as np

    from benchmarks.bench_gpu import squad_examples
    from tests.serving_helpers import EchoRunner
    from trt_handler.answer_batch import PlannedRunner, batches_of
    from trt_handler.planning import BatchPlan
    from trt_handler.qa.types import QuestionWindows, WindowLogits
    from trt_handler.qa.windows import WindowMaker, load_tokenizer
    from trt_handler.serving import ServerOptions
    from trt_handler.serving.client import InferenceClient

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--squad", required=True)
    p.add_argument("--model", required=True, help="a folder with the tokenizer")
    p.add_argument("--batch-windows", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)

    examples = squad_examples(Path(args.squad))[:3000]
    maker = WindowMaker(load_tokenizer(args.model))
    questions = [QuestionWindows(ex, tuple(ws)) for ex, ws in zip(examples, maker.windows_many(examples))]
    batch = batches_of(questions, args.batch_windows)[0]
    windows = [w for q in batch for w in q.windows]
    tokens = sum(w.length for w in windows)
    local = PlannedRunner(EchoRunner(), BatchPlan.for_buckets())
    base = {"windows": len(windows), "tokens": tokens, "repeats": args.repeats}
    rows = [emit("in_process_us_per_batch", _median_us(lambda: local.window_logits(windows), args.repeats), "us",
                 **base, what="plan, pad, model (free), cut: PlannedRunner in this process")]
    with tempfile.TemporaryDirectory(prefix="qa-transport-") as folder:
        client = InferenceClient(_FullPlanEcho(), ServerOptions(directory=folder, max_wait_ms=0, linger_s=1))
        rows.append(emit("server_us_per_batch", _median_us(lambda: client.window_logits(windows), args.repeats), "us",
                         **base, what="the same through a server process: shared memory in, plan, pad, model (free), "
                                      "logits written in place, a message back"))
        client.close()
    fake = [WindowLogits(w.input_ids.astype(np.float32), -w.input_ids.astype(np.float32)) for w in windows]
    rows.append(emit("pickle_us_per_batch", _median_us(
        lambda: pickle.loads(pickle.dumps(windows, 5)) and pickle.loads(pickle.dumps(fake, 5)), args.repeats), "us",
        **base, what="pickling the windows there and their logits back (no model, no planning)"))
    transport = rows[1]["value"] - rows[0]["value"]
    rows.append(emit("transport_us_per_batch", transport, "us", **base, per_window_us=transport / len(windows),
                     what="server minus in process"))
    for r in rows:
        print(f"{r['figure']}: {r['value']:.0f} us per batch of {len(windows)} windows "
              f"({r['value'] / len(windows):.1f} us a window)", file=sys.stderr)
    return 0


class _FullPlanEcho:
    """A server model: the echo runner with the handlers' default plan (picklable by module name)."""

    def __call__(self) -> Any:
        from types import SimpleNamespace

        from tests.serving_helpers import EchoRunner
        from trt_handler.planning import BatchPlan

        return SimpleNamespace(runner=EchoRunner(), plan=BatchPlan.for_buckets())


if __name__ == "__main__":
    from benchmarks import bench_transport

    sys.exit(bench_transport.main())
