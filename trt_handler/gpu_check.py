"""GPU acceptance check: a TensorRT engine against ONNX Runtime on real SQuAD windows.

    python -m trt_handler.gpu_check --engine E --onnx O --model M --data SQUAD.json [--limit N]

Both run the production answer path (``answer_batch``) and it prints JSON lines: the environment,
the logits' relative error over real tokens, answer agreement (and SQuAD scores with gold answers),
engine windows/s and pipeline questions/s. Exit status: 0 pass, 1 a threshold failed, 2 something it
needs is missing (named; nothing is measured), 3 the engine cannot run here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trt_handler.answer_batch import PlannedRunner, Runner, answer_batch, batches_of, run_model_calls
from trt_handler.engines import cuda_runtime
from trt_handler.planning import BatchPlan, plan_model_calls
from trt_handler.qa.types import Answer, QAExample, QuestionWindows

EXIT_OK, EXIT_FAILED, EXIT_MISSING, EXIT_INCOMPATIBLE = 0, 1, 2, 3


def missing_requirements(paths: dict[str, Path] | None = None) -> list[str]:
    """What this machine lacks for the check, one sentence each; ``paths``: option -> file that must exist."""
    missing: list[str] = []
    reason = cuda_runtime.unavailable_reason()
    if reason is not None:
        missing.append(f"GPU: {reason}")
    try:
        from trt_handler.engines.session import load_library

        load_library("auto")
    except Exception as exc:  # noqa: BLE001 - report any failure to import TensorRT as missing
        missing.append(f"TensorRT: {exc}")
    if importlib.util.find_spec("onnxruntime") is None:
        missing.append("ONNX Runtime: the onnxruntime package is not installed (pip install onnxruntime)")
    for option, path in (paths or {}).items():
        if not Path(path).exists() and "://" not in str(path):
            missing.append(f"file: {option} {path} does not exist")
    return missing


def _compare(engine: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """(||engine - reference||_2 / ||reference||_2, max |engine - reference|) over all real tokens."""
    ref = np.concatenate(reference).astype(np.float64)
    diff = np.concatenate(engine).astype(np.float64) - ref
    norm = float(np.linalg.norm(ref))
    return (float(np.linalg.norm(diff)) / norm if norm > 0 else 0.0), float(np.max(np.abs(diff), initial=0.0))


def _questions(maker: Any, examples: Sequence[QAExample]) -> list[QuestionWindows]:
    """The questions that window cleanly (the others are skipped)."""
    return [QuestionWindows(ex, tuple(ws)) for ex, ws in zip(examples, maker.windows_many(examples))
            if not isinstance(ws, Exception) and ws]


def _answers(questions: Sequence[QuestionWindows], runner: Runner, plan: BatchPlan) -> list[Answer | Exception]:
    """The production answer path, in the handlers' default batches."""
    return [a for part in batches_of(questions) for a in answer_batch(part, PlannedRunner(runner, plan))]


def _scores(questions: Sequence[QuestionWindows], answers: Sequence[Answer | Exception]) -> dict[str, float] | None:
    examples = [q.example for q in questions]
    if not any(ex.answers or ex.is_impossible for ex in examples):
        return None
    from trt_handler.qa.metric import squad_evaluate

    texts = {q.example.id: (a.text if isinstance(a, Answer) else "") for q, a in zip(questions, answers)}
    result = squad_evaluate(examples, texts)
    return {"exact": float(result["exact"]), "f1": float(result["f1"])}


def run_check(
    session: Any,
    reference: Runner,
    maker: Any,
    examples: Sequence[QAExample],
    *,
    batch_size: int | None = None,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Compare ``session`` (an EngineSession) with ``reference`` on the production path (``maker``'s
    windows, the engine's profiles, ``answer_batch``) and time it; the accuracy pass is the warm-up."""
    size = min(batch_size or session.max_batch, session.max_batch)
    plan = BatchPlan(tuple(session.profiles), max_batch=size)
    questions = _questions(maker, examples)
    windows = [w for q in questions for w in q.windows]
    if not windows:
        raise ValueError("no question produced a window; check --data and --model")
    calls = plan_model_calls([w.length for w in windows], plan)

    engine_logits = run_model_calls(windows, calls, session)
    reference_logits = run_model_calls(windows, calls, reference)
    start_err, start_max = _compare([e.start_logits for e in engine_logits], [r.start_logits for r in reference_logits])
    end_err, end_max = _compare([e.end_logits for e in engine_logits], [r.end_logits for r in reference_logits])

    t0 = time.perf_counter()
    for _ in range(repeats):
        run_model_calls(windows, calls, session)
    engine_s = time.perf_counter() - t0

    t0 = time.perf_counter()  # the engine's answers come from the timed pipeline pass (windowing included)
    engine_answers = _answers(_questions(maker, [q.example for q in questions]), session, plan)
    pipeline_s = time.perf_counter() - t0
    reference_answers = _answers(questions, reference, plan)
    agree = sum(isinstance(a, Answer) and isinstance(b, Answer) and a.text == b.text
                for a, b in zip(engine_answers, reference_answers))

    return [
        {
            "event": "accuracy",
            "windows": len(windows),
            "start_rel_l2": start_err,
            "end_rel_l2": end_err,
            "rel_err": max(start_err, end_err),
            "max_abs_diff": max(start_max, end_max),
        },
        {
            "event": "answers",
            "questions": len(questions),
            "skipped_questions": len(examples) - len(questions),
            "agreement": agree / len(questions),
            "engine_scores": _scores(questions, engine_answers),
            "reference_scores": _scores(questions, reference_answers),
        },
        {
            "event": "throughput",
            "batch_size": size,
            "model_calls": len(calls),
            "engine_windows_per_s": repeats * len(windows) / engine_s,
            "pipeline_questions_per_s": len(questions) / pipeline_s,
            "note": "engine: the planned model calls only, after warm-up; pipeline: windowing + answer_batch "
            "(planning, padding, engine, answers), one thread, no Beam",
        },
    ]


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trt_handler.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", type=Path, required=True, help="serialized TensorRT engine")
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX model the engine was built from")
    parser.add_argument("--model", required=True, help="model bundle dir or hub id (for the tokenizer)")
    parser.add_argument("--data", type=Path, required=True, help="SQuAD JSON (or JSONL) questions")
    parser.add_argument("--limit", type=int, default=200, help="first N questions (default 200)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: engine max)")
    parser.add_argument("--library", default="auto", choices=("auto", "tensorrt", "tensorrt_rtx"))
    parser.add_argument("--max-rel-err", type=float, default=0.01, help="fail above this logits rel. L2 error")
    parser.add_argument("--min-agreement", type=float, default=0.95, help="fail below this answer agreement")
    args = parser.parse_args(argv)
    missing = missing_requirements({"--engine": args.engine, "--onnx": args.onnx, "--data": args.data})
    if missing:
        _emit({"event": "gpu_check", "status": "missing", "missing": missing})
        print("gpu_check cannot run here, so nothing was measured. Missing:", *(f"  - {line}" for line in missing),
              sep="\n", file=sys.stderr)
        return EXIT_MISSING

    from trt_handler.backends.onnx_runner import OnnxRunner
    from trt_handler.engines.session import EngineCompatibilityError, EngineSession
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    examples = load_examples(str(args.data))[: args.limit]
    try:
        session = EngineSession(str(args.engine), library=args.library)
    except EngineCompatibilityError as exc:
        _emit({"event": "gpu_check", "status": "incompatible", "cause": exc.cause, "message": str(exc)})
        print(f"gpu_check: {exc}", file=sys.stderr)
        return EXIT_INCOMPATIBLE
    with session:
        major, minor = cuda_runtime.compute_capability()
        _emit({
            "event": "environment",
            "gpu": cuda_runtime.device_name(),
            "compute_capability": f"{major}.{minor}",
            "cuda_driver": cuda_runtime.driver_version(),
            "library": getattr(session, "library", "unknown"),
            "engine": str(args.engine),
            "profiles": [p.to_dict() for p in session.profiles],
        })
        maker = WindowMaker(load_tokenizer(args.model))
        records = run_check(session, OnnxRunner(args.onnx), maker, examples, batch_size=args.batch_size)
    for record in records:
        _emit(record)
    accuracy, answers = records[0], records[1]
    failures = []
    if accuracy["rel_err"] > args.max_rel_err:
        failures.append(f"logits rel. error {accuracy['rel_err']:.3g} > {args.max_rel_err}")
    if answers["agreement"] < args.min_agreement:
        failures.append(f"answer agreement {answers['agreement']:.3f} < {args.min_agreement}")
    _emit({"event": "gpu_check", "status": "failed" if failures else "passed", "failures": failures})
    return EXIT_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
