"""Streaming: the whole streaming pipeline on a TestStream of Pub/Sub-like messages with the ONNX
Runtime handler. It is the batch graph (a question travels with all its windows): no state, no
timers, so there is nothing to wait for; what is checked is that every message gets exactly one
outcome, in whatever order the messages arrive, whatever fails."""

from __future__ import annotations

import json
from typing import Any, List

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

CTX = "The Amazon rainforest covers most of the Amazon basin of South America. It is in Brazil and Peru."
LONG = " ".join(f"Sentence {i} talks about river number {i} of the basin." for i in range(120))


def _streaming_options() -> PipelineOptions:
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    return options


def _message(qid: str, question: str, context: str = CTX) -> bytes:
    return json.dumps({"id": qid, "question": question, "context": context}).encode()


def _failing_handler(base: Any, fail_id: str) -> Any:
    """``base`` that raises for any batch holding the question ``fail_id``."""
    from apache_beam.ml.inference.base import ModelHandler

    class Failing(ModelHandler):
        def load_model(self) -> Any:
            return base.load_model()

        def run_inference(self, batch: Any, model: Any, inference_args: Any = None) -> List[Any]:
            if any(q.example.id == fail_id for q in batch):
                raise RuntimeError("simulated GPU failure")
            return base.run_inference(batch, model, inference_args)

        def batch_elements_kwargs(self) -> Any:
            return base.batch_elements_kwargs()

    return Failing()


def _no_sinks(args: Any) -> Any:
    """The parsed args without Pub/Sub sinks: the test reads the outputs instead of publishing."""
    args.topic = None
    args.rejected_topic = None
    return args


@pytest.fixture(scope="module")
def bundle(model_dir: Any, test_cache: Any) -> str:
    from trt_handler.engines.export import resolve_model_bundle

    return str(resolve_model_bundle(model_dir, test_cache))


def _run(bundle: str, stream: _TestStream, fail_id: str = "boom") -> Any:
    from pipelines import qa_streaming
    from pipelines.transforms import make_handler

    args = qa_streaming.build_parser().parse_args(
        ["--subscription", "projects/p/subscriptions/s", "--topic", "projects/p/topics/a",
         "--rejected-topic", "projects/p/topics/r", "--model", bundle, "--batch-windows", "1"])
    _, settings, _ = qa_streaming.parse_args(
        ["--subscription", "s", "--topic", "t", "--rejected-topic", "r", "--model", bundle, "--batch-windows", "1"])
    handler = _failing_handler(make_handler(settings), fail_id)
    p = beam.Pipeline(options=_streaming_options())
    out = qa_streaming.build_pipeline(p | stream, _no_sinks(args), settings, handler)
    return p, out


def test_streaming_pipeline_every_message_one_outcome(bundle: str) -> None:
    """Answers, a failed batch (dead-lettered once), a broken message, a reused id (two requests,
    two answers) and a long multi-window context, arriving in three steps."""
    from pipelines.transforms import answer_json, rejection_json

    stream = (
        _TestStream()
        .add_elements([_message("q1", "What does the rainforest cover?"), b'{"id": "bad", "question": '])
        .advance_processing_time(5)
        .add_elements([_message("boom", "Which continent?"), _message("long", "What is river 90 about?", LONG)])
        .advance_processing_time(5)
        .add_elements([_message("q1", "Which countries?")])
        .advance_watermark_to_infinity()
    )
    p, out = _run(bundle, stream)
    answers = out.answers | "JsonA" >> beam.Map(answer_json) | "DecodeA" >> beam.Map(lambda b: json.loads(b)["id"])
    rejected = out.rejected | "JsonR" >> beam.Map(rejection_json) | "DecodeR" >> beam.Map(
        lambda b: (json.loads(b)["id"], json.loads(b)["reason_code"]))
    assert_that(answers, equal_to(["q1", "q1", "long"]), label="answers")
    assert_that(rejected, equal_to([("boom", "inference_failed"), (None, "invalid_json")]), label="rejected")
    p.run().wait_until_finish()


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_answers_do_not_depend_on_arrival_order(bundle: str, test_cache: Any, order: List[int]) -> None:
    """Each arrival order gives the answers the in-process path (no Beam) gives."""
    from pipelines.transforms import answer_json
    from trt_handler.evaluate import answer_examples
    from trt_handler.qa.types import QAExample

    questions = [("a", "What does the rainforest cover?", CTX), ("b", "Which countries?", CTX),
                 ("c", "What is river 7 about?", LONG), ("d", "Where is it?", CTX)]
    reference = answer_examples([QAExample(*q) for q in questions], bundle, test_cache)
    stream = _TestStream()
    for i in order:
        stream = stream.add_elements([_message(*questions[i])]).advance_processing_time(1)
    p, out = _run(bundle, stream.advance_watermark_to_infinity())
    rows = out.answers | "JsonA" >> beam.Map(answer_json) | beam.Map(lambda b: (json.loads(b)["id"], json.loads(b)["answer"]))
    assert_that(rows, equal_to([(qid, a.text) for qid, a in reference.items()]))
    p.run().wait_until_finish()
