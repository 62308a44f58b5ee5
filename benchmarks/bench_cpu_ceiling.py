"""CPU ceiling of the whole local Beam pipeline: questions/second per core with a model that costs nothing.

    python -m benchmarks.bench_cpu_ceiling --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2 --cache-dir cache [--questions 20000] [--profile DIR]

The batch pipeline of ``pipelines.qa_batch`` (read SQuAD JSON -> parse -> dedupe -> windows ->
RunInference -> regroup -> answers -> write JSONL) runs on Beam's DirectRunner with
:class:`FreeQAHandler` in place of the engine: a ``WindowQAHandler`` (the base class of both real
handlers, so batching, bucket grouping, padding, logit cutting and metrics are the real code)
whose model returns seeded random logits sliced from a precomputed pool, so the model itself costs
~nothing. What is left is the CPU cost of everything around the engine: the most questions per
second one core of a worker can feed to a GPU.

Figures (one JSON line each):

- ``cpu_ceiling_q_per_s_per_core``: the pipeline as it is (``pipelines.qa_batch``).
- ``cpu_ceiling_per_question_elements_q_per_s_per_core``: a prototype of the same trip where
  a question's windows travel together through RunInference (:class:`QuestionBatchHandler`
  wraps the same FreeQAHandler; answers are extracted in the same call with the batched
  ``squad_answers.extract_answers``), so there are no per-window elements and no regroup
  shuffle. Same input, same dedupe, same output files.
- ``cpu_ceiling_stages_us_per_q``: the same work without Beam, stage by stage on the same core
  (parse, features, inference plumbing, answers, output), so the remainder of the pipeline's
  per-question cost is Beam's (DirectRunner element handling, coders, shuffles).

The input is ``--data`` replicated (every article repeated, question ids suffixed ``-<copy>``)
to at least ``--questions`` questions. The process pins itself to one core (tokenizer and BLAS
pools to one thread) and reports questions per wall second on that core and per process
CPU-second. ``--profile DIR`` also writes cProfile stats of one more run of each pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from trt_handler.backends.handlers import WindowQAHandler

REPO = Path(__file__).resolve().parents[1]


def pin_to_one_core() -> int:
    """Restrict this process (and the thread pools it starts from now on) to its first usable core."""
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    return core


def replicate_squad(src: str, min_questions: int, out: Path) -> Tuple[int, int]:
    """Write ``src`` (SQuAD JSON) with its articles repeated until it has >= ``min_questions``
    questions, ids suffixed ``-<copy>`` so they stay unique; returns (questions, copies).
    Fewer questions than the file has: its first articles that hold that many."""
    doc = json.loads(Path(src).read_text(encoding="utf-8"))
    count = lambda articles: sum(len(p["qas"]) for a in articles for p in a["paragraphs"])  # noqa: E731
    articles = doc["data"]
    while len(articles) > 1 and count(articles[:-1]) >= min_questions:
        articles = articles[:-1]
    per_copy = count(articles)
    copies = max(1, math.ceil(min_questions / per_copy))
    data = []
    for c in range(copies):
        for article in articles:
            paragraphs = [{**p, "qas": [{**qa, "id": f"{qa['id']}-{c}"} for qa in p["qas"]]}
                          for p in article["paragraphs"]]
            data.append({**article, "paragraphs": paragraphs})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"version": doc.get("version", "v2.0"), "data": data}), encoding="utf-8")
    return per_copy * copies, copies


# --------------------------------------------------------------------------------------------
# the free model


class _FreeSession:
    """A model that costs nothing: start/end logits sliced from a seeded random pool."""

    def __init__(self, rows: int, seq: int, seed: int = 0) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self._start = rng.normal(size=(rows, seq)).astype(np.float32)
        self._end = rng.normal(size=(rows, seq)).astype(np.float32)

    def run(self, batch: Any) -> Tuple[Any, Any]:
        b, s = batch.shape
        return self._start[:b, :s], self._end[:b, :s]


class FreeQAHandler(WindowQAHandler[Any]):
    """The real handler code path (``WindowQAHandler.run_inference``) over a model that costs nothing."""

    def load_model(self) -> Any:
        return _FreeSession(self._max_batch_size, max(self.buckets))

    def get_metrics_namespace(self) -> str:
        return "FreeQA"


def free_handler(buckets: Sequence[int] = (128, 256, 384), max_batch_size: int = 64,
                 min_batch_size: int = 1, max_batch_duration_secs: Optional[float] = None) -> FreeQAHandler:
    return FreeQAHandler(buckets=tuple(buckets), min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs, large_model=False)


# --------------------------------------------------------------------------------------------
# prototype: per-question elements


class QuestionBatchHandler(ModelHandler[Any, PredictionResult, Any]):
    """RunInference over questions, not windows: an element is ``(raw, QAExample, [Window])``.

    ``run_inference`` runs all windows of the batch through the wrapped window handler (its
    bucket grouping and padding included) and answers every question of the batch with one
    ``extract_answers`` call; ``PredictionResult.inference`` is the Answer (or the ValueError).
    A question's windows never leave its element, so nothing needs regrouping afterwards.
    """

    def __init__(self, inner: WindowQAHandler[Any], answer_config: Any, max_questions: int = 64):
        super().__init__()
        self._inner = inner
        self._answer_config = answer_config
        self._max_questions = max_questions

    def load_model(self) -> Any:
        return self._inner.load_model()

    def batch_elements_kwargs(self) -> Dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._max_questions}

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[PredictionResult]:
        from trt_handler.qa.answers import extract_answers

        windows = [w for _, _, ws in batch for w in ws]
        logits = [r.inference for r in self._inner.run_inference(windows, model)]
        items = []
        at = 0
        for _, example, ws in batch:
            items.append((example, ws, logits[at:at + len(ws)]))
            at += len(ws)
        answers = extract_answers(items, self._answer_config)
        return [PredictionResult(element, answer) for element, answer in zip(batch, answers)]

    def get_metrics_namespace(self) -> str:
        return "QuestionBatchQA"


class _ParseQuestion(beam.DoFn):
    def process(self, raw: Any) -> Iterator[Any]:
        from trt_handler.qa.types import Rejection
        from pipelines.records import parse_record, raw_text

        if isinstance(raw, Rejection):
            return
        result = parse_record(raw)
        if not isinstance(result, Rejection):
            yield result.id, (raw_text(raw), result)


class _QuestionWindows(beam.DoFn):
    """Batches of (id, (raw, example)) -> (id, (raw, example, windows)), one tokenizer call a batch."""

    def __init__(self, model_dir: str):
        self._model_dir = model_dir
        self._maker: Any = None

    def setup(self) -> None:
        from trt_handler.qa.windows import WindowMaker, load_tokenizer

        self._maker = WindowMaker(load_tokenizer(self._model_dir))

    def process(self, batch: List[Any]) -> Iterator[Any]:
        results = self._maker.windows_many([ex for _, (_, ex) in batch])
        for (key, (raw, ex)), windows in zip(batch, results):
            if not isinstance(windows, Exception):
                yield key, (raw, ex, windows)


def _first_of_group(element: Tuple[str, Iterable[Any]]) -> Iterator[Any]:
    key, pairs = element
    yield key, sorted(pairs, key=lambda p: p[0])[0]  # duplicate ids: one answered (as the pipeline's dedupe)


def _answer_line(element: Tuple[str, PredictionResult]) -> Iterator[str]:
    from pipelines.records import answer_row

    answer = element[1].inference
    if not isinstance(answer, Exception):
        yield json.dumps(answer_row(answer), ensure_ascii=False)


def run_per_question_pipeline(data: Path, model_dir: str, out_dir: Path, handler: FreeQAHandler) -> Dict[str, Any]:
    """The prototype: read -> parse -> dedupe -> windows per question -> RunInference(questions) -> write."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.transforms import ReadRecords
    from trt_handler.qa.answers import AnswerConfig

    w0, c0 = time.perf_counter(), time.process_time()
    with beam.Pipeline(options=PipelineOptions([])) as p:
        _ = (
            p
            | "Read" >> ReadRecords(str(data))
            | "Parse" >> beam.ParDo(_ParseQuestion())
            | "GroupById" >> beam.GroupByKey()
            | "Dedupe" >> beam.FlatMap(_first_of_group)
            | "BatchQuestions" >> beam.BatchElements(min_batch_size=1, max_batch_size=64)
            | "Windows" >> beam.ParDo(_QuestionWindows(model_dir))
            | "RunInference" >> RunInference(KeyedModelHandler(QuestionBatchHandler(handler, AnswerConfig())))
            | "AnswerLines" >> beam.FlatMap(_answer_line)
            | "Write" >> beam.io.WriteToText(str(out_dir / "answers"), file_name_suffix=".jsonl")
        )
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
            "answered": _count_lines(out_dir, "answers-")}


def _count_lines(out_dir: Path, prefix: str) -> int:
    return sum(sum(1 for _ in open(f, encoding="utf-8")) for f in out_dir.glob(f"{prefix}*.jsonl"))


# --------------------------------------------------------------------------------------------
# the pipeline as it is


def run_pipeline(data: Path, model: str, cache_dir: str, out_dir: Path, handler: Any) -> Dict[str, Any]:
    """One run of pipelines.qa_batch; wall and CPU seconds and its counters."""
    from pipelines import qa_batch

    argv = ["--input", str(data), "--output", str(out_dir / "answers"), "--model", model,
            "--backend", "onnx", "--cache-dir", cache_dir]
    w0, c0 = time.perf_counter(), time.process_time()
    outcome = qa_batch.run(argv, handler=handler)
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
            "counters": outcome["counters"]}


# --------------------------------------------------------------------------------------------
# the stages without Beam


def stage_costs(data: Path, model_dir: str, handler: FreeQAHandler, limit: int = 8000, repeat: int = 3) -> Dict[str, Any]:
    """Microseconds of CPU per question of each stage, run in a plain loop on this core (no Beam):
    the least of ``repeat`` runs per stage (this machine's run-to-run spread is large)."""
    runs = [_stage_costs_once(data, model_dir, handler, limit) for _ in range(max(1, repeat))]
    best: Dict[str, Any] = {k: min(r[k] for r in runs) for k in runs[0] if k not in ("questions", "shuffle_bytes_per_q")}
    best["questions"] = runs[0]["questions"]
    best["shuffle_bytes_per_q"] = runs[0]["shuffle_bytes_per_q"]
    best["runs"] = len(runs)
    return best


def _stage_costs_once(data: Path, model_dir: str, handler: FreeQAHandler, limit: int) -> Dict[str, Any]:
    from trt_handler.qa.types import Rejection
    from pipelines.records import answer_row, assemble_answer, parse_record, split_squad_document
    from trt_handler.qa.answers import AnswerConfig, extract_answers
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    config = AnswerConfig()
    doc = data.read_bytes()
    t: Dict[str, float] = {}

    t0 = time.process_time()
    raws = [r for r in split_squad_document(doc) if not isinstance(r, Rejection)][:limit]
    n = len(raws)
    examples = [parse_record(r) for r in raws]
    t["parse"] = time.process_time() - t0

    maker = WindowMaker(load_tokenizer(model_dir))
    maker.windows_many(examples[:64])
    t0 = time.process_time()
    windows = [ws for i in range(0, n, 64) for ws in maker.windows_many(examples[i:i + 64])]
    t["features"] = time.process_time() - t0

    model = handler.load_model()
    flat = [w for ws in windows for w in ws]
    t0 = time.process_time()
    results = [r for i in range(0, len(flat), 64) for r in handler.run_inference(flat[i:i + 64], model)]
    t["inference_plumbing"] = time.process_time() - t0
    logits, at = [], 0
    for ws in windows:
        logits.append([(r.example, r.inference) for r in results[at:at + len(ws)]])
        at += len(ws)

    t0 = time.process_time()
    answers = [assemble_answer(ex, raw, len(ws), lg, [], config) for ex, raw, ws, lg in zip(examples, raws, windows, logits)]
    t["answers_per_question"] = time.process_time() - t0
    items = [(ex, ws, [lg for _, lg in pairs]) for ex, ws, pairs in zip(examples, windows, logits)]
    t0 = time.process_time()
    for i in range(0, n, 64):
        extract_answers(items[i:i + 64], config)
    t["answers_batched"] = time.process_time() - t0

    t0 = time.process_time()
    for a in answers:
        json.dumps(answer_row(a), ensure_ascii=False)
    t["output"] = time.process_time() - t0

    # What the pipeline's shuffles serialize per question (Beam pickles our dataclasses): the
    # GroupById value, the regroup's meta and every (Window, WindowLogits) result; not part of
    # "our code" above, an estimate of one piece of Beam's share.
    t0 = time.process_time()
    size = 0
    for ex, raw, pairs in zip(examples, raws, logits):
        for value in ((raw, ex), (raw, ex, len(pairs)), *pairs):
            data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            size += len(data)
            pickle.loads(data)
    t["shuffle_pickling_estimate"] = time.process_time() - t0
    return {k: round(v / n * 1e6, 1) for k, v in t.items()} | {"questions": n, "shuffle_bytes_per_q": round(size / n)}


# --------------------------------------------------------------------------------------------


def write_profile(prof: Any, path: Path, top: int = 45) -> None:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.strip_dirs()
    buf.write("==== by own time (tottime)\n")
    stats.sort_stats("tottime").print_stats(top)
    buf.write("\n==== by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu_ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SQuAD JSON file")
    parser.add_argument("--model", required=True, help="model folder or bundle (for its tokenizer)")
    parser.add_argument("--cache-dir", default="cache", help="ONNX bundle cache (the pipeline resolves the model)")
    parser.add_argument("--questions", type=int, default=20_000, help="replicate the data to at least this many")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each pipeline (best reported)")
    parser.add_argument("--variants", default="pipeline,per_question,stages",
                        help="comma-separated: pipeline, per_question, stages")
    parser.add_argument("--work-dir", default=None, help="input/output files (default: a temp dir)")
    parser.add_argument("--profile", default=None, help="also write cProfile stats of one run of each pipeline to DIR")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    args = parser.parse_args(argv)

    core = None if args.no_pin else pin_to_one_core()
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    from benchmarks.common import emit
    from pipelines.qa_batch import resolve_model

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    data = work / "input.json"
    questions, copies = replicate_squad(args.data, args.questions, data)
    handler = free_handler()
    model_dir = resolve_model(args.model, args.cache_dir, "onnx")
    common = {"core": core, "pinned": core is not None, "questions": questions, "copies": copies,
              "data": os.path.basename(args.data), "runner": "DirectRunner (FnApiRunner, in-process)",
              "model": "free stand-in (WindowQAHandler over random logits)"}

    def profiled(name: str, fn: Any) -> None:
        if not args.profile:
            return
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        write_profile(prof, Path(args.profile) / f"profile_{name}.txt")
        print(f"profile written to {Path(args.profile) / f'profile_{name}.txt'}", file=sys.stderr)

    per_q: Dict[str, float] = {}
    # The stages first: after a pipeline run the process holds more objects, and the cyclic
    # garbage collector's passes (which scale with them) would be charged to the stages.
    stages = stage_costs(data, model_dir, handler) if "stages" in variants else None
    if "pipeline" in variants:
        runs = []
        for i in range(max(1, args.repeat)):
            runs.append(run_pipeline(data, model_dir, args.cache_dir, work / f"run{i}", handler))
            shutil.rmtree(work / f"run{i}", ignore_errors=True)
        best = min(runs, key=lambda r: r["wall_s"])
        counters = best["counters"]
        if counters.get("answered", 0) + counters.get("rejected", 0) != questions:
            print(f"error: {questions} questions in, counters {counters}", file=sys.stderr)
            return 1
        per_q["pipeline"] = best["cpu_s"] / questions * 1e6
        emit("cpu_ceiling_q_per_s_per_core", questions / best["wall_s"], "questions/s",
             q_per_cpu_s=round(questions / best["cpu_s"], 1), us_cpu_per_q=round(per_q["pipeline"], 1),
             answered=counters.get("answered"), windows=counters.get("windows"),
             pipeline="pipelines.qa_batch (per-window elements, CoGroupByKey regroup)",
             runs_s=[round(r["wall_s"], 2) for r in runs], cpu_s=[round(r["cpu_s"], 2) for r in runs],
             loadavg=[round(x, 2) for x in os.getloadavg()], **common)
        profiled("pipeline", lambda: run_pipeline(data, model_dir, args.cache_dir, work / "profiled", handler))
    if "per_question" in variants:
        runs = []
        for i in range(max(1, args.repeat)):
            runs.append(run_per_question_pipeline(data, model_dir, work / f"pq{i}", handler))
            shutil.rmtree(work / f"pq{i}", ignore_errors=True)
        best = min(runs, key=lambda r: r["wall_s"])
        if best["answered"] != questions:
            print(f"error: {questions} questions in, {best['answered']} answered", file=sys.stderr)
            return 1
        per_q["per_question"] = best["cpu_s"] / questions * 1e6
        emit("cpu_ceiling_per_question_elements_q_per_s_per_core", questions / best["wall_s"], "questions/s",
             q_per_cpu_s=round(questions / best["cpu_s"], 1), us_cpu_per_q=round(per_q["per_question"], 1),
             answered=best["answered"],
             pipeline="prototype: per-question elements through RunInference, batched answers, no regroup",
             runs_s=[round(r["wall_s"], 2) for r in runs], cpu_s=[round(r["cpu_s"], 2) for r in runs],
             loadavg=[round(x, 2) for x in os.getloadavg()], **common)
        profiled("per_question", lambda: run_per_question_pipeline(data, model_dir, work / "pq-profiled", handler))
    if stages is not None:
        ours = sum(stages[k] for k in ("parse", "features", "inference_plumbing", "answers_per_question", "output"))
        extra: Dict[str, Any] = {}
        if "pipeline" in per_q:
            extra["pipeline_us_per_q"] = round(per_q["pipeline"], 1)
            extra["beam_and_rest_us_per_q"] = round(per_q["pipeline"] - ours, 1)
        if "per_question" in per_q:
            extra["per_question_pipeline_us_per_q"] = round(per_q["per_question"], 1)
        emit("cpu_ceiling_stages_us_per_q", ours, "CPU us/question (our code, no Beam)", stages=stages,
             q_per_s_without_beam=round(1e6 / ours, 1), loadavg=[round(x, 2) for x in os.getloadavg()],
             **extra, **common)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
