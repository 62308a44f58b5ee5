"""GPU acceptance check: a TensorRT engine against ONNX Runtime on real SQuAD windows.

Usage (on a machine with an NVIDIA GPU, TensorRT and ONNX Runtime)::

    python -m trt_handler.gpu_check --engine E --onnx O --model M --data SQUAD.json [--limit N]

It windows the questions (``WindowMaker``), runs every window through the engine
(``EngineSession``) and ONNX Runtime (``OnnxRunner``), and prints JSON lines: the environment, the
relative error of the logits over real tokens, answer agreement after extraction (and SQuAD
scores when the data has gold answers), engine-only windows/s and whole-pipeline questions/s.
Exit status: 0 pass, 1 a threshold failed, 2 something it needs is missing (the message says
exactly what; it never pretends to have run), 3 the engine cannot run here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from trt_handler.qa.batching import chunks, group_by_bucket, pad_windows
from trt_handler.engines.profiles import ProfileSpec
from trt_handler.qa.types import Answer, ModelBatch, QAExample, Window, WindowLogits

EXIT_OK, EXIT_FAILED, EXIT_MISSING, EXIT_INCOMPATIBLE = 0, 1, 2, 3

Logits = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


class Runner(Protocol):
    def run(self, batch: ModelBatch) -> Logits: ...


class Session(Runner, Protocol):
    @property
    def profiles(self) -> list[ProfileSpec]: ...

    @property
    def max_batch(self) -> int: ...


def missing_requirements(paths: dict[str, Path | None] | None = None) -> list[str]:
    """What this machine lacks for the check, one sentence each; [] when everything is there.

    ``paths`` maps option names (``--engine``) to files that must exist.
    """
    from trt_handler.engines import cuda_runtime

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
        if path is not None and not Path(path).exists() and "://" not in str(path):
            missing.append(f"file: {option} {path} does not exist")
    return missing


@dataclass
class Comparison:
    """Running totals of |engine - reference| over real (unpadded) tokens, per output."""

    windows: int = 0
    max_abs: float = 0.0
    sq_diff: float = 0.0
    sq_ref: float = 0.0

    def add(self, engine: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]) -> None:
        diff = engine.astype(np.float64) - reference.astype(np.float64)
        self.windows += 1
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        self.sq_diff += float(np.sum(diff * diff))
        self.sq_ref += float(np.sum(reference.astype(np.float64) ** 2))

    @property
    def rel_l2(self) -> float:
        """||engine - reference||_2 / ||reference||_2 over all real tokens."""
        return float(np.sqrt(self.sq_diff / self.sq_ref)) if self.sq_ref > 0 else 0.0


def make_batches(
    windows: Sequence[Window], profiles: Sequence[ProfileSpec], batch_size: int
) -> Iterator[tuple[list[int], ModelBatch]]:
    """(window indices, padded batch) per batch: grouped by the smallest profile max_seq that fits,
    padded to it, at most ``batch_size`` rows, as the TensorRT handler batches."""
    buckets = sorted({p.max_seq for p in profiles})
    for bucket, indices in sorted(group_by_bucket(windows, buckets).items()):
        for rows in chunks(len(indices), batch_size):
            chosen = indices[rows]
            yield chosen, pad_windows([windows[i] for i in chosen], bucket)


def _logits_by_window(
    windows: Sequence[Window], batches: Sequence[tuple[list[int], ModelBatch]], runner: Runner
) -> list[WindowLogits]:
    """Each window's logits, cut to its real length, in window order."""
    out: dict[int, WindowLogits] = {}
    for indices, batch in batches:
        start, end = runner.run(batch)
        for row, i in enumerate(indices):
            n = windows[i].length
            out[i] = WindowLogits(np.array(start[row, :n]), np.array(end[row, :n]))
    if len(out) != len(windows):
        raise RuntimeError(f"batches covered {len(out)} of {len(windows)} windows")
    return [out[i] for i in range(len(windows))]


def _answers(
    examples: Sequence[QAExample], windows_per_example: Sequence[list[Window]], logits: Sequence[WindowLogits]
) -> list[Answer]:
    from trt_handler.qa.answers import extract_answer

    answers: list[Answer] = []
    pos = 0
    for example, windows in zip(examples, windows_per_example):
        answers.append(extract_answer(example, windows, logits[pos : pos + len(windows)]))
        pos += len(windows)
    return answers


def _scores(examples: Sequence[QAExample], answers: Sequence[Answer]) -> dict[str, float] | None:
    if not any(ex.answers or ex.is_impossible for ex in examples):
        return None
    from trt_handler.qa.metric import squad_evaluate

    result = squad_evaluate(examples, {a.id: a.text for a in answers})
    return {"exact": float(result["exact"]), "f1": float(result["f1"])}


def _window_all(maker: Any, examples: Sequence[QAExample]) -> tuple[list[QAExample], list[list[Window]]]:
    """Examples that window cleanly, and their windows (questions that cannot are skipped)."""
    kept: list[QAExample] = []
    per_example: list[list[Window]] = []
    for example, result in zip(examples, maker.windows_many(examples)):
        if isinstance(result, Exception):
            continue
        kept.append(example)
        per_example.append(result)
    return kept, per_example


def run_check(
    session: Session,
    reference: Runner,
    maker: Any,
    examples: Sequence[QAExample],
    *,
    batch_size: int | None = None,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Compare ``session`` with ``reference`` and time it; returns the report records (no I/O).

    ``maker`` is a ``WindowMaker``. The accuracy pass doubles as the engine's warm-up, so the
    timed passes exclude first-call costs (lazy kernel loading, JIT in TensorRT-RTX).
    """
    size = min(batch_size or session.max_batch, session.max_batch)
    kept, per_example = _window_all(maker, examples)
    windows = [w for ws in per_example for w in ws]
    if not windows:
        raise ValueError("no question produced a window; check --data and --model")
    batches = list(make_batches(windows, session.profiles, size))

    engine_logits = _logits_by_window(windows, batches, session)
    reference_logits = _logits_by_window(windows, batches, reference)
    start_cmp, end_cmp = Comparison(), Comparison()
    for e, r in zip(engine_logits, reference_logits):
        start_cmp.add(e.start_logits, r.start_logits)
        end_cmp.add(e.end_logits, r.end_logits)
    engine_answers = _answers(kept, per_example, engine_logits)
    reference_answers = _answers(kept, per_example, reference_logits)
    agree = sum(a.text == b.text for a, b in zip(engine_answers, reference_answers))

    t0 = time.perf_counter()
    for _ in range(repeats):
        for _, batch in batches:
            session.run(batch)
    engine_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    kept2, per_example2 = _window_all(maker, kept)
    windows2 = [w for ws in per_example2 for w in ws]
    _answers(kept2, per_example2, _logits_by_window(windows2, list(make_batches(windows2, session.profiles, size)), session))
    pipeline_s = time.perf_counter() - t0

    return [
        {
            "event": "accuracy",
            "windows": len(windows),
            "start_rel_l2": start_cmp.rel_l2,
            "end_rel_l2": end_cmp.rel_l2,
            "rel_err": max(start_cmp.rel_l2, end_cmp.rel_l2),
            "max_abs_diff": max(start_cmp.max_abs, end_cmp.max_abs),
        },
        {
            "event": "answers",
            "questions": len(kept),
            "skipped_questions": len(examples) - len(kept),
            "agreement": agree / len(kept),
            "engine_scores": _scores(kept, engine_answers),
            "reference_scores": _scores(kept, reference_answers),
        },
        {
            "event": "throughput",
            "batch_size": size,
            "batches": len(batches),
            "engine_windows_per_s": repeats * len(windows) / engine_s,
            "pipeline_questions_per_s": len(kept2) / pipeline_s,
            "note": "engine: session.run only, after warm-up; pipeline: windowing + padding + engine + "
            "answer extraction, one thread, no Beam",
        },
    ]


def _environment(session: Any, engine_path: Path) -> dict[str, Any]:
    from trt_handler.engines import cuda_runtime

    major, minor = cuda_runtime.compute_capability()
    return {
        "event": "environment",
        "gpu": cuda_runtime.device_name(),
        "compute_capability": f"{major}.{minor}",
        "cuda_driver": cuda_runtime.driver_version(),
        "library": getattr(session, "library", "unknown"),
        "engine": str(engine_path),
        "profiles": [p.to_dict() for p in session.profiles],
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    paths: dict[str, Path | None] = {"--engine": args.engine, "--onnx": args.onnx, "--data": args.data}
    missing = missing_requirements(paths)
    if missing:
        _emit({"event": "gpu_check", "status": "missing", "missing": missing})
        print("gpu_check cannot run here, so nothing was measured. Missing:", file=sys.stderr)
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
        return EXIT_MISSING

    from trt_handler.engines.session import EngineCompatibilityError, EngineSession
    from trt_handler.backends.onnx_runner import OnnxRunner
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
        _emit(_environment(session, args.engine))
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
