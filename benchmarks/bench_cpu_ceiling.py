"""CPU ceiling of the whole local Beam pipeline: questions/second per core with a model that costs nothing.

    python -m benchmarks.bench_cpu_ceiling --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2 --cache-dir cache [--questions 20000] [--profile DIR]

The batch pipeline of ``pipelines.qa_batch`` (read -> parse -> duplicate-id check -> windows ->
RunInference over questions -> answers -> write JSONL) runs on Beam's DirectRunner with
:class:`FreeQAHandler` in place of the engine: a ``QAHandler`` (the base class of every real
handler, so planning, padding, logit cutting, answers and metrics are the real code) whose model
returns seeded random logits sliced from a precomputed pool, so the model itself costs ~nothing.
What is left is the CPU cost of everything around the engine: the most questions per second one
core of a worker can feed to a GPU.

Figures (one JSON line each):

- ``cpu_ceiling_q_per_s_per_core``: the pipeline as it is, SQuAD JSON input (one document, split
  and spread with a Reshuffle), duplicate ids checked (an id count).
- ``cpu_ceiling_jsonl_q_per_s_per_core``: the same questions as JSONL (the big-data format: read
  in parallel, no Reshuffle).
- ``cpu_ceiling_no_dedupe_q_per_s_per_core``: JSONL with ``--allow-duplicate-ids``: what the
  duplicate-id policy costs.
- ``seed_cpu_work_q_per_s_per_core``: the CPU work of the sample this project replaces (pure-Python
  tokenizer, first window only, its own answer search with n-best texts; :mod:`benchmarks.seed_cpu_work`)
  on the same questions and core, and ``<figure>_vs_seed``: each pipeline figure divided by it;
  ``seed_light_...`` / ``_vs_seed_light``: the same against a lighter lower bound of that work.
- ``cpu_ceiling_stages_us_per_q``: the same work without Beam, stage by stage on the same core
  (parse, features, answer_batch, output), so the rest of the pipeline's cost is Beam's.

The input is ``--data`` replicated (every article repeated, question ids suffixed ``-<copy>``)
to at least ``--questions`` questions. The process pins itself to one core (tokenizer and BLAS
pools to one thread) and reports questions per wall second on that core and per process
CPU-second. ``--profile DIR`` also writes cProfile stats of one more run of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from trt_handler.backends.handlers import QAHandler

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
    Fewer questions than the file has: its first articles that hold that many. An ``out`` ending
    in ``.jsonl`` gets one {id, question, context, answers, is_impossible} record a line."""
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
    if out.suffix == ".jsonl":
        with out.open("w", encoding="utf-8") as f:
            for article in data:
                for p in article["paragraphs"]:
                    for qa in p["qas"]:
                        f.write(json.dumps({"id": qa["id"], "question": qa["question"], "context": p["context"],
                                            "answers": [a["text"] for a in qa.get("answers", [])],
                                            "is_impossible": qa.get("is_impossible", False)}) + "\n")
    else:
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

    def run(self, batch: Any, profile: int = 0) -> Tuple[Any, Any]:
        b, s = batch.shape
        return self._start[:b, :s], self._end[:b, :s]


class FreeQAHandler(QAHandler):
    """The real handler code path (``QAHandler.run_inference``, planned model calls) over a model that
    costs nothing."""

    backend = "free"

    def load_runner(self) -> Any:
        return _FreeSession(self.plan.max_batch, self.plan.max_seq)


def free_handler(**options: Any) -> FreeQAHandler:
    return FreeQAHandler(**options)


# --------------------------------------------------------------------------------------------
# the pipeline


def run_pipeline(data: Path, model: str, cache_dir: str, out_dir: Path, handler: Any,
                 extra: Sequence[str] = ()) -> Dict[str, Any]:
    """One run of pipelines.qa_batch; wall and CPU seconds and its counters."""
    from pipelines import qa_batch

    argv = ["--input", str(data), "--output", str(out_dir / "answers"), "--model", model,
            "--backend", "onnx", "--cache-dir", cache_dir, *extra]
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
    best: Dict[str, Any] = {k: min(r[k] for r in runs) for k in runs[0] if k != "questions"}
    best["questions"] = runs[0]["questions"]
    best["runs"] = len(runs)
    return best


def _stage_costs_once(data: Path, model_dir: str, handler: FreeQAHandler, limit: int) -> Dict[str, Any]:
    from pipelines.records import answer_row, parse_record, split_squad_document
    from trt_handler.answer_batch import answer_batch, batches_of
    from trt_handler.qa.answers import AnswerConfig
    from trt_handler.qa.types import QuestionWindows, Rejection
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

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
    questions = [QuestionWindows(ex, tuple(ws), raw) for i in range(0, n, 64)
                 for ex, ws, raw in zip(examples[i:i + 64], maker.windows_many(examples[i:i + 64]), raws[i:i + 64])]
    t["features"] = time.process_time() - t0

    model = handler.load_model()
    t0 = time.process_time()
    answers = [a for part in batches_of(questions)  # the handlers' default batches, as BatchElements forms them
               for a in answer_batch(part, model, AnswerConfig())]
    t["answer_batch"] = time.process_time() - t0

    t0 = time.process_time()
    for a in answers:
        json.dumps(answer_row(a), ensure_ascii=False)
    t["output"] = time.process_time() - t0
    return {k: round(v / n * 1e6, 1) for k, v in t.items()} | {"questions": n}


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
    stats.dump_stats(str(path.with_suffix(".pstats")))  # for pstats' callers / callees views


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu_ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SQuAD JSON file")
    parser.add_argument("--model", required=True, help="model folder or bundle (for its tokenizer)")
    parser.add_argument("--cache-dir", default="cache", help="ONNX bundle cache (the pipeline resolves the model)")
    parser.add_argument("--questions", type=int, default=20_000, help="replicate the data to at least this many")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each pipeline (best reported)")
    parser.add_argument("--variants", default="pipeline,jsonl,no_dedupe,stages,seed,seed_light",
                        help="comma-separated: pipeline, jsonl, no_dedupe, stages, seed, seed_light")
    parser.add_argument("--seed-questions", type=int, default=4_000,
                        help="the seed yardsticks answer the first this many questions (they are ~10x slower)")
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
              "model": "free stand-in (QAHandler over random logits)"}

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
    pipeline_rates: Dict[str, float] = {}
    # The stages first: after a pipeline run the process holds more objects, and the cyclic
    # garbage collector's passes (which scale with them) would be charged to the stages.
    stages = stage_costs(data, model_dir, handler) if "stages" in variants else None
    jsonl = work / "input.jsonl"
    if {"jsonl", "no_dedupe"} & set(variants):
        replicate_squad(args.data, args.questions, jsonl)
    figures = {"pipeline": ("cpu_ceiling_q_per_s_per_core", data, (), "SQuAD JSON, duplicate ids checked"),
               "jsonl": ("cpu_ceiling_jsonl_q_per_s_per_core", jsonl, (), "JSONL, duplicate ids checked"),
               "no_dedupe": ("cpu_ceiling_no_dedupe_q_per_s_per_core", jsonl, ("--allow-duplicate-ids",),
                             "JSONL, --allow-duplicate-ids")}
    for variant, (figure, path, extra, what) in figures.items():
        if variant not in variants:
            continue
        runs = []
        for i in range(max(1, args.repeat)):
            runs.append(run_pipeline(path, model_dir, args.cache_dir, work / f"{variant}{i}", handler, extra))
            shutil.rmtree(work / f"{variant}{i}", ignore_errors=True)
        best = min(runs, key=lambda r: r["wall_s"])
        counters = best["counters"]
        if counters.get("answered", 0) + counters.get("rejected", 0) != questions:
            print(f"error: {questions} questions in, counters {counters}", file=sys.stderr)
            return 1
        per_q[variant] = best["cpu_s"] / questions * 1e6
        pipeline_rates[variant] = questions / best["wall_s"]
        emit(figure, questions / best["wall_s"], "questions/s",
             q_per_cpu_s=round(questions / best["cpu_s"], 1), us_cpu_per_q=round(per_q[variant], 1),
             answered=counters.get("answered"), windows=counters.get("windows"),
             pipeline=f"pipelines.qa_batch (one element per question), {what}",
             runs_s=[round(r["wall_s"], 2) for r in runs], cpu_s=[round(r["cpu_s"], 2) for r in runs],
             loadavg=[round(x, 2) for x in os.getloadavg()], **common)
        if variant == "pipeline":
            profiled("pipeline", lambda: run_pipeline(data, model_dir, args.cache_dir, work / "profiled", handler))
    for variant, faithful in (("seed", True), ("seed_light", False)):
        if variant not in variants:
            continue
        from benchmarks.seed_cpu_work import seed_cpu_work

        seed_data = work / "seed_input.json"
        seed_questions, _ = replicate_squad(args.data, min(args.seed_questions, questions), seed_data)
        seed = min((seed_cpu_work(seed_data, model_dir, faithful) for _ in range(max(1, args.repeat))),
                   key=lambda r: r["wall_s"])
        if seed["answered"] != seed_questions:
            print(f"error: the seed yardstick answered {seed['answered']} of {seed_questions}", file=sys.stderr)
            return 1
        seed_rate = seed_questions / seed["wall_s"]
        what = ("the sample's own feature and get_predictions steps (n-best texts projected back by get_final_text)"
                if faithful else "a lower bound: only the best span of the top 20 starts/ends, no n-best texts")
        emit(f"{variant}_cpu_work_q_per_s_per_core", seed_rate, "questions/s",
             q_per_cpu_s=round(seed_questions / seed["cpu_s"], 1), seed_questions=seed_questions,
             what=f"the replaced sample's CPU work: pure-Python BERT tokenizer, first window only, batches of 16, "
                  f"{what}, free model, no Beam (benchmarks/seed_cpu_work.py)",
             loadavg=[round(x, 2) for x in os.getloadavg()], **common)
        for name, rate in pipeline_rates.items():
            emit(f"{figures[name][0]}_vs_{variant}", rate / seed_rate, "x", seed_q_per_s=round(seed_rate, 1),
                 pipeline_q_per_s=round(rate, 1), **common)
    if stages is not None:
        ours = sum(stages[k] for k in ("parse", "features", "answer_batch", "output"))
        extra_fields: Dict[str, Any] = {}
        if "pipeline" in per_q:
            extra_fields["pipeline_us_per_q"] = round(per_q["pipeline"], 1)
            extra_fields["beam_and_rest_us_per_q"] = round(per_q["pipeline"] - ours, 1)
        emit("cpu_ceiling_stages_us_per_q", ours, "CPU us/question (our code, no Beam)", stages=stages,
             q_per_s_without_beam=round(1e6 / ours, 1), loadavg=[round(x, 2) for x in os.getloadavg()],
             **extra_fields, **common)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
