"""Questions per second per CPU core of the QA core: windows (features) and answer extraction.

    python -m benchmarks.bench_qa_core --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2

Pins itself to one core (and the tokenizer's thread pool to one thread) so the figures are per
core. Features: ``WindowMaker.windows_many`` over every question of the file. Answers:
``extract_answer`` for every question with seeded random logits of the windows' shapes. Each is
run ``--repeat`` times after a warm-up and the best run is reported (the other runs are in the
JSON line): on a shared machine the best run is the one least disturbed by other work. The
line also gives questions per CPU-second of this process (``q_per_cpu_s``), which other
processes on the core disturb less than the wall clock.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from benchmarks.common import emit


def pin_to_one_core() -> int:
    """Restrict this process to its first usable core; returns that core's number."""
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    os.environ["RAYON_NUM_THREADS"] = "1"  # the Rust tokenizer's pool, sized when first used
    return core


def timed_runs(fn: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each of ``repeat`` calls of fn."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def emit_rate(figure: str, n: int, runs: tuple[list[float], list[float]], **extra: object) -> None:
    """Emit n / best wall time, with the CPU-time rate and every run alongside."""
    wall, cpu = runs
    emit(figure, n / min(wall), "questions/s", q_per_cpu_s=round(n / min(cpu), 1),
         runs_s=[round(r, 4) for r in wall], **extra)


def random_logits(windows: Sequence[Sequence], seed: int) -> list:
    """Seeded float32 normal logits, one WindowLogits per window, per question."""
    from trt_handler.qa_types import WindowLogits

    rng = np.random.default_rng(seed)
    return [[WindowLogits(rng.normal(size=w.length).astype(np.float32),
                          rng.normal(size=w.length).astype(np.float32)) for w in ws] for ws in windows]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="SQuAD JSON or JSONL file")
    parser.add_argument("--model", required=True, help="model folder (for its tokenizer)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random logits")
    args = parser.parse_args(argv)
    core = pin_to_one_core()

    from trt_handler.squad_answers import extract_answer
    from trt_handler.squad_data import load_examples
    from trt_handler.squad_features import FeatureError, WindowMaker, load_tokenizer

    examples = load_examples(args.data)
    maker = WindowMaker(load_tokenizer(args.model))
    maker.windows_many(examples[:200])  # warm-up
    runs = timed_runs(lambda: maker.windows_many(examples), args.repeat)
    results = maker.windows_many(examples)
    failed = sum(isinstance(r, FeatureError) for r in results)
    pairs = [(ex, ws) for ex, ws in zip(examples, results) if not isinstance(ws, FeatureError)]
    n_windows = sum(len(ws) for _, ws in pairs)
    common = {"core": core, "data": os.path.basename(args.data), "questions": len(examples)}
    emit_rate("features_q_per_s_per_core", len(examples), runs, **common, windows=n_windows,
              feature_errors=failed)

    logits = random_logits([ws for _, ws in pairs], args.seed)
    answer_all = lambda: [extract_answer(ex, ws, lg) for (ex, ws), lg in zip(pairs, logits)]
    answer_all()  # warm-up
    runs = timed_runs(answer_all, args.repeat)
    emit_rate("answers_q_per_s_per_core", len(pairs), runs, **common, windows=n_windows)


if __name__ == "__main__":
    main()
