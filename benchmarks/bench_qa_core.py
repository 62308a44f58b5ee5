"""Questions per second per CPU core of the QA core: windows (features) and answer extraction.

    python -m benchmarks.bench_qa_core --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2

Pins itself to one core (and the tokenizer's thread pool to one thread) so the figures are per
core. Features: ``WindowMaker.windows_many`` over the file's questions in batches of 64, in file
order (as the pipeline's feature step: questions of one paragraph share a batch, so their context
is tokenized once), with the rate for shuffled questions (one context tokenization per question,
what a lost order costs) and for one call over the whole file alongside. Answers:
``extract_answer`` for every question with seeded random logits of the windows' shapes
(``answers_q_per_s_per_core``) and ``extract_answers`` over batches of 64 questions
(``answers_batched_q_per_s_per_core``, same answers), and ``answer_batch`` (the handlers' whole
path after the model: plan the calls, pad, run, cut the logits, answer) over Beam batches of up to
256 windows with the default plan and a model that returns precomputed random logits
(``answer_batch_q_per_s_per_core``). Each is
run ``--repeat`` times after a warm-up and the best run is reported (the other runs are in the
JSON line): on a shared machine the best run is the one least disturbed by other work. The
line also gives questions per CPU-second of this process (``q_per_cpu_s``), which other
processes on the core disturb less than the wall clock.
"""

from __future__ import annotations

import argparse
import os
import random
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
    from trt_handler.qa.types import WindowLogits

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

    from trt_handler.qa.answers import extract_answer, extract_answers
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import FeatureError, WindowMaker, load_tokenizer

    examples = load_examples(args.data)
    maker = WindowMaker(load_tokenizer(args.model))
    maker.windows_many(examples[:200])  # warm-up

    def in_batches(items: Sequence) -> list:
        return [r for i in range(0, len(items), 64) for r in maker.windows_many(items[i:i + 64])]

    shuffled = list(examples)
    random.Random(args.seed).shuffle(shuffled)
    runs = timed_runs(lambda: in_batches(examples), args.repeat)
    whole = timed_runs(lambda: maker.windows_many(examples), 1)
    mixed = timed_runs(lambda: in_batches(shuffled), 1)
    results = in_batches(examples)
    failed = sum(isinstance(r, FeatureError) for r in results)
    pairs = [(ex, ws) for ex, ws in zip(examples, results) if not isinstance(ws, FeatureError)]
    n_windows = sum(len(ws) for _, ws in pairs)
    contexts = [len({ex.context for ex in examples[i:i + 64]}) for i in range(0, len(examples), 64)]
    common = {"core": core, "data": os.path.basename(args.data), "questions": len(examples),
              "loadavg": [round(x, 2) for x in os.getloadavg()]}
    emit_rate("features_q_per_s_per_core", len(examples), runs, **common, windows=n_windows,
              feature_errors=failed, batch=64, order="file order",
              distinct_contexts_per_64=round(sum(contexts) / len(contexts), 1),
              shuffled_q_per_s=round(len(examples) / min(mixed[0]), 1),
              whole_file_one_call_q_per_s=round(len(examples) / min(whole[0]), 1))

    logits = random_logits([ws for _, ws in pairs], args.seed)
    answer_all = lambda: [extract_answer(ex, ws, lg) for (ex, ws), lg in zip(pairs, logits)]  # noqa: E731
    answer_all()  # warm-up
    runs = timed_runs(answer_all, args.repeat)
    emit_rate("answers_q_per_s_per_core", len(pairs), runs, **common, windows=n_windows, api="extract_answer")
    items = [(ex, ws, lg) for (ex, ws), lg in zip(pairs, logits)]
    batched = lambda: [a for i in range(0, len(items), 64) for a in extract_answers(items[i:i + 64])]  # noqa: E731
    if [a.text for a in batched()] != [a.text for a in answer_all()]:
        raise SystemExit("extract_answers and extract_answer disagree: a bug, not a benchmark result")
    runs = timed_runs(batched, args.repeat)
    emit_rate("answers_batched_q_per_s_per_core", len(pairs), runs, **common, windows=n_windows,
              api="extract_answers, 64 questions a call")

    from benchmarks.bench_inflation import beam_batches
    from trt_handler.answer_batch import PlannedRunner, answer_batch
    from trt_handler.planning import BatchPlan
    from trt_handler.qa.types import QuestionWindows

    plan = BatchPlan.for_buckets()
    planned = PlannedRunner(FreeRunner(plan.max_batch, plan.max_seq, args.seed), plan)
    qws = [QuestionWindows(ex, tuple(ws)) for ex, ws in pairs]
    sizes = [len(b) for b in beam_batches([q.windows for q in qws], 256)]
    groups, at = [], 0
    for n in sizes:  # the same Beam batches, as questions
        take, got = [], 0
        while at < len(qws) and got < n:
            take.append(qws[at])
            got += len(qws[at].windows)
            at += 1
        groups.append(take)
    run_all = lambda: [a for g in groups for a in answer_batch(g, planned)]  # noqa: E731
    failed_q = sum(isinstance(a, Exception) for a in run_all())  # warm-up
    runs = timed_runs(run_all, args.repeat)
    emit_rate("answer_batch_q_per_s_per_core", len(qws), runs, **common, windows=n_windows,
              api="answer_batch (plan, pad, run, cut, extract_answers), default plan, free model",
              beam_batches=len(groups), batch_windows=256, failed=failed_q)


class FreeRunner:
    """A model that costs ~nothing: logits sliced from a seeded random pool."""

    def __init__(self, rows: int, seq: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._start = rng.normal(size=(rows, seq)).astype(np.float32)
        self._end = rng.normal(size=(rows, seq)).astype(np.float32)

    def run(self, batch, profile: int = 0):  # type: ignore[no-untyped-def]
        b, s = batch.shape
        return self._start[:b, :s], self._end[:b, :s]


if __name__ == "__main__":
    main()
