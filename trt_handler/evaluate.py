"""In-process SQuAD evaluation: windows -> answer_batch -> official metric, without Beam: the
reference the pipeline's ``--eval`` is checked against. Usage::

    python -m trt_handler.evaluate --data squad_dev.json --model MODEL_DIR_OR_HUB_ID
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from trt_handler.answer_batch import PlannedRunner, answer_batch, batches_of
from trt_handler.planning import BatchPlan
from trt_handler.qa.answers import AnswerConfig
from trt_handler.qa.types import Answer, QAExample, QuestionWindows
from trt_handler.qa.windows import WindowMaker, load_tokenizer


def answer_examples(
    examples: Sequence[QAExample],
    model: str,
    cache_dir: Path,
    *,
    answer_config: AnswerConfig = AnswerConfig(),
    batch_size: int = 64,
    backend: str = "onnx",
    device: str = "cuda",
    dtype: str = "fp16",
) -> Dict[str, Answer]:
    """Answer every example through ``answer_batch`` (the handlers' path), in the handlers' default batches,
    on ONNX Runtime (the model's bundle) or with ``backend="torch"`` on PyTorch (a checkpoint folder).
    Raises ValueError naming a question that cannot be tokenized or answered."""
    from trt_handler.backends.onnx_runner import OnnxRunner
    from trt_handler.engines.export import bundle_onnx_path, resolve_model_bundle

    if backend == "torch":
        from trt_handler.backends.torch_runner import TorchRunner

        bundle = Path(model)
        runner: Any = TorchRunner(model, device=device, dtype=dtype if device != "cpu" else "fp32")
    else:
        bundle = resolve_model_bundle(model, cache_dir)
        runner = OnnxRunner(bundle_onnx_path(bundle))
    maker = WindowMaker(load_tokenizer(bundle))
    questions: List[QuestionWindows] = []
    for ex, result in zip(examples, maker.windows_many(examples)):
        if isinstance(result, Exception):
            raise ValueError(f"question {ex.id!r} cannot be tokenized: {result}")
        questions.append(QuestionWindows(ex, tuple(result)))
    model = PlannedRunner(runner, BatchPlan.for_buckets(max_batch=batch_size))
    answers: Dict[str, Answer] = {}
    for part in batches_of(questions):
        for q, outcome in zip(part, answer_batch(part, model, answer_config)):
            if isinstance(outcome, Exception):
                raise ValueError(f"question {q.example.id!r} cannot be answered: {outcome}")
            answers[q.example.id] = outcome
    return answers


def evaluate(
    data: str,
    model: str,
    cache_dir: Path,
    *,
    limit: Optional[int] = None,
    answers_file: Optional[str] = None,
    **kwargs: Any,
) -> Dict[str, float]:
    """Official SQuAD metric of ``model`` on the SQuAD-format file ``data`` (first ``limit`` questions);
    ``answers_file`` also gets ``{id: answer text}``."""
    from trt_handler.qa.reading import load_examples

    examples = load_examples(data)[:limit]
    answers = answer_examples(examples, model, cache_dir, **kwargs)
    if answers_file:
        Path(answers_file).write_text(json.dumps({k: a.text for k, a in answers.items()}), encoding="utf-8")
    return metric_for_answers(examples, answers)


def metric_for_answers(examples: Sequence[QAExample], answers: Mapping[str, Answer]) -> Dict[str, float]:
    """The official SQuAD metric of ``answers`` (by id), shared with the pipeline's ``--eval``. The
    threshold search gets each best non-null span, not the thresholded text (or it could never go higher)."""
    from trt_handler.qa.metric import squad_evaluate

    predictions = {k: a.text for k, a in answers.items()}
    no_answer_scores = {k: a.null_score - a.score for k, a in answers.items()}
    spans = {k: a.best_span_text for k, a in answers.items()}
    return squad_evaluate(examples, predictions, no_answer_scores, span_predictions=spans)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SQuAD v1.1/v2.0 JSON or JSONL with gold answers")
    parser.add_argument("--model", required=True, help="model folder, hub id, ONNX bundle or .onnx file")
    parser.add_argument("--cache-dir", default="cache", type=Path, help="where exported ONNX bundles are cached")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                        help="onnx: ONNX Runtime on the CPU; torch: PyTorch (--model a checkpoint folder)")
    parser.add_argument("--device", default="cuda", help="torch backend: cuda, cuda:N or cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="torch backend precision")
    parser.add_argument("--answers", default=None, help="also write {id: answer text} as JSON here")
    parser.add_argument("--align-to-words", action="store_true",
                        help="widen answers to whole words of the context (AnswerConfig.align_to_words)")
    parser.add_argument("--null-threshold", type=float, default=0.0,
                        help="no-answer threshold applied to the answers (default 0; the metric's best_f1_thresh "
                             "is searched regardless)")
    args = parser.parse_args(argv)
    config = AnswerConfig(null_threshold=args.null_threshold, align_to_words=args.align_to_words)
    t0 = time.perf_counter()
    metric = evaluate(args.data, args.model, args.cache_dir, limit=args.limit, batch_size=args.batch_size,
                      backend=args.backend, device=args.device, dtype=args.dtype, answers_file=args.answers,
                      answer_config=config)
    print(f"evaluated {int(metric['total'])} questions in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(json.dumps(metric, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
