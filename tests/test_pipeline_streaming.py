"""Streaming: the stateful regroup with its bounded wait (TestStream), and the whole streaming
pipeline on a TestStream of Pub/Sub-like messages with the ONNX Runtime handler."""

from __future__ import annotations

import json
from typing import Any, List, Tuple

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from pipelines.transforms import REJECTED, RegroupWithTimeout, regroup_with_timeout
from tests.helpers import ada_window
from trt_handler.qa.types import QAExample, WindowLogits
from pipelines.records import reason_code
from trt_handler.qa.answers import AnswerConfig

TIMEOUT = 30.0


def _streaming_options() -> PipelineOptions:
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    return options


def _logits() -> WindowLogits:
    s = np.array([-9, -9, -9, 9, -9, -9, -9], dtype=np.float32)  # answer: "Ada"
    return WindowLogits(s, s.copy())


def _ex(qid: str) -> QAExample:
    return QAExample(qid, "Who wrote it?", "Ada wrote it.")


def _meta(qid: str, n: int) -> Tuple[str, Tuple[str, Any]]:
    return qid, ("meta", (f"raw-{qid}", _ex(qid), n))


def _res(qid: str, i: int, n: int) -> Tuple[str, Tuple[str, Any]]:
    return qid, ("result", (ada_window(qid, i, n), _logits()))


def test_regroup_answers_complete_questions_and_gives_up_on_the_rest() -> None:
    """A: complete. B: one window missing -> incomplete after the wait; its late window is dropped.
    C: an inference failure. D: windows before the question record. E: no question record at all.

    The DoFn's clock returns 0, the TestStream's processing-time origin, so its deadlines are
    in the TestStream's time and ``advance_processing_time`` moves past them.
    """
    stream = (
        _TestStream()
        .add_elements([_meta("A", 2), _res("A", 1, 2), _res("A", 0, 2)])
        .add_elements([_meta("B", 2), _res("B", 0, 2)])
        .add_elements([_meta("C", 2), _res("C", 0, 2), ("C", ("failed", "RuntimeError('boom')"))])
        .add_elements([_res("D", 0, 1), _meta("D", 1)])
        .add_elements([_res("E", 0, 2)])
        .advance_processing_time(TIMEOUT + 1)
        .add_elements([_res("B", 1, 2)])  # after B gave up: must not make a second outcome
        .advance_processing_time(1)
        .advance_watermark_to_infinity()
    )
    # (The late_results_dropped counter is not asserted: the DirectRunner drops the metrics of
    # bundles that follow a timer firing. Exactly one outcome per question is what matters.)
    with beam.Pipeline(options=_streaming_options()) as p:
        out = p | stream | regroup_with_timeout(AnswerConfig(), TIMEOUT, clock=lambda: 0.0)
        answered = out.answers | "Answered" >> beam.Map(lambda pair: (pair[1].id, pair[1].text))
        rejected = out[REJECTED] | "Rejected" >> beam.Map(lambda r: (r.example_id, reason_code(r), r.raw))
        assert_that(answered, equal_to([("A", "Ada"), ("D", "Ada")]), label="answers")
        assert_that(rejected, equal_to([
            ("B", "incomplete_windows", "raw-B"),
            ("C", "inference_failed", "raw-C"),
            ("E", "incomplete_windows", ""),
        ]), label="rejected")


def test_regroup_waits_while_within_the_timeout() -> None:
    """Before the deadline an incomplete question produces nothing; at the deadline it is rejected."""
    stream = (
        _TestStream()
        .add_elements([_meta("B", 3), _res("B", 0, 3), _res("B", 2, 3)])
        .advance_processing_time(TIMEOUT - 1)
        .add_elements([_res("B", 1, 3)])  # still in time: answered, not rejected
        .advance_processing_time(TIMEOUT + 5)
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=_streaming_options()) as p:
        out = p | stream | regroup_with_timeout(AnswerConfig(), TIMEOUT, clock=lambda: 0.0)
        assert_that(out.answers | "Ids" >> beam.Map(lambda pair: pair[1].id), equal_to(["B"]), label="answers")
        assert_that(out[REJECTED], equal_to([]), label="rejected")


def test_regroup_refuses_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        RegroupWithTimeout(AnswerConfig(), 0)


# --------------------------------------------------------------------------------------------
# the whole streaming pipeline


def _message(qid: str, question: str, context: str) -> bytes:
    return json.dumps({"id": qid, "question": question, "context": context}).encode()


def _dropping_handler(base: Any, lost_id: str) -> Any:
    """``base`` that loses the results of one question's windows (a stuck or lost batch)."""
    from apache_beam.ml.inference.base import ModelHandler

    class Dropping(ModelHandler):
        def load_model(self) -> Any:
            return base.load_model()

        def run_inference(self, batch: Any, model: Any, inference_args: Any = None) -> List[Any]:
            results = base.run_inference(batch, model, inference_args)
            return [r for r in results if r.example.example_id != lost_id]

        def batch_elements_kwargs(self) -> Any:
            return base.batch_elements_kwargs()

    return Dropping()


def test_streaming_pipeline_end_to_end(model_dir: Any, test_cache: Any) -> None:
    """Messages -> answers and dead letters; a question whose window results are lost is rejected
    as incomplete after the bounded wait, a broken message right away."""
    from pipelines import qa_streaming
    from pipelines.options import QASettings
    from pipelines.transforms import make_handler
    from trt_handler.engines.export import resolve_model_bundle

    bundle = str(resolve_model_bundle(model_dir, test_cache))
    settings = QASettings(model_dir=bundle, max_batch=8, max_batch_duration_secs=1.0)  # as qa_streaming sets it
    handler = _dropping_handler(make_handler(settings), lost_id="lost")
    args = qa_streaming.build_parser().parse_args(
        ["--subscription", "projects/p/subscriptions/s", "--topic", "projects/p/topics/a",
         "--rejected-topic", "projects/p/topics/r", "--model", bundle, "--regroup-timeout-secs", str(TIMEOUT)])
    ctx = "The Amazon rainforest covers most of the Amazon basin of South America."
    stream = (
        _TestStream()
        .add_elements([
            _message("q1", "What does the rainforest cover?", ctx),
            _message("lost", "Which continent?", ctx),
            b'{"id": "bad", "question": ',
        ])
        .advance_processing_time(TIMEOUT + 1)
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=_streaming_options()) as p:
        out = qa_streaming.build_pipeline(p | stream, _no_sinks(args), settings, handler, clock=lambda: 0.0)
        answers = qa_streaming.answers_to_messages(out) | "DecodeA" >> beam.Map(lambda b: json.loads(b)["id"])
        rejected = qa_streaming.rejections_to_messages(out) | "DecodeR" >> beam.Map(
            lambda b: (json.loads(b)["id"], json.loads(b)["reason_code"]))
        assert_that(answers, equal_to(["q1"]), label="answers")
        assert_that(rejected, equal_to([("lost", "incomplete_windows"), (None, "invalid_json")]), label="rejected")


def _no_sinks(args: Any) -> Any:
    """The parsed args without Pub/Sub sinks: the test reads the outputs instead of publishing."""
    args.topic = None
    args.rejected_topic = None
    return args
