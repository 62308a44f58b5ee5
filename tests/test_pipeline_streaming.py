"""Streaming: the whole streaming pipeline on a TestStream of Pub/Sub-like messages with the ONNX
Runtime handler. It is the batch graph (a question travels with all its windows): no state, no
timers, so there is nothing to wait for; what is checked is that every message gets exactly one
outcome, in whatever order the messages arrive, whatever fails. Also: the batching flags (checked
when parsed; no timer by default on the DirectRunner) and dead letters bounded under 1 MB. The
pipeline against the real Pub/Sub emulator: test_streaming_pubsub.py."""

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


# --- batching flags: checked when parsed, one line each; the default timer depends on the runner ---

_SINKS = ["--subscription", "projects/p/subscriptions/s", "--topic", "projects/p/topics/a",
          "--rejected-topic", "projects/p/topics/r"]


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_bad_batching_timer_is_one_usage_line(bundled_model: Any, capsys: Any, value: str) -> None:
    from pipelines import qa_streaming

    with pytest.raises(SystemExit) as exit_:
        qa_streaming.parse_args([*_SINKS, "--model", str(bundled_model), "--max-batch-duration-secs", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"python -m pipelines.qa_streaming: error: argument --max-batch-duration-secs: "
                                    f"'{value}' is not a number of seconds (0 or more)")


@pytest.mark.parametrize("flags, timer", [
    ([], None),  # DirectRunner: no timer (it would fire only when the next message arrives)
    (["--max-batch-duration-secs", "0"], None),  # 0 = no timer, anywhere
    (["--runner", "DataflowRunner"], 1.0),  # Dataflow fires timers promptly: 1 s by default
    (["--runner", "DataflowRunner", "--max-batch-duration-secs", "0"], None),
    (["--max-batch-duration-secs", "2.5"], 2.5),  # asked for explicitly: kept (with a warning locally)
])
def test_the_batching_timer_reaches_beams_batch_elements(bundled_model: Any, flags: List[str], timer: Any) -> None:
    from pipelines import qa_streaming
    from pipelines.transforms import make_handler

    _, settings, _ = qa_streaming.parse_args([*_SINKS, "--model", str(bundled_model), *flags])
    assert settings.max_batch_duration_secs == timer
    kwargs = make_handler(settings).batch_elements_kwargs()
    assert kwargs.get("max_batch_duration_secs") == timer


def test_settings_refuse_a_zero_or_endless_timer(bundled_model: Any) -> None:
    from pipelines.options import QASettings

    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="batching timer"):
            QASettings(model_dir=str(bundled_model), max_batch_duration_secs=bad)


# --- dead letters: bounded whatever the record, and still traceable to it ---

ONE_MB = 1 << 20


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_a_2_mb_non_utf8_message_gives_a_dead_letter_under_1_mb() -> None:
    """The issue's case: kept whole (escaped) it was an 11.5 MB dead letter that Pub/Sub refused."""
    from pipelines.records import DEAD_LETTER_RAW_CHARS, parse_record
    from pipelines.transforms import rejection_json

    body = b'{"id": "big", "question": "q", "context": "' + bytes(range(128, 256)) * 17_000 + b'"}'
    rejection = parse_record(body)
    line = rejection_json(rejection).encode("utf-8")
    row = json.loads(line)
    assert row["reason_code"] == "invalid_encoding" and len(line) < ONE_MB
    whole = body.decode("utf-8", errors="backslashreplace")
    assert row["raw_chars"] == len(whole) and row["raw_sha256"] == _sha(whole)
    assert row["raw_truncated"] and whole.startswith(row["raw"]) and len(row["raw"]) == DEAD_LETTER_RAW_CHARS


def test_any_rejection_is_written_under_1_mb() -> None:
    """Made by hand with huge texts, and of the characters JSON escapes longest (control characters)."""
    from pipelines.records import REJECTED_BQ_SCHEMA, reject
    from pipelines.transforms import rejection_json
    from trt_handler.qa.types import Rejection

    control = "\x01" * 3_000_000
    for rejection in (Rejection(reason="inference_failed: " + "x" * 2_000_000, raw=control, stage="inference",
                                example_id="i" * 1_000_000),
                      reject("inference_failed", "y" * 2_000_000, control, example_id="j" * 1_000_000)):
        line = rejection_json(rejection).encode("utf-8")
        row = json.loads(line)
        assert len(line) < ONE_MB
        assert list(row) == [f["name"] for f in REJECTED_BQ_SCHEMA["fields"]]
        assert row["raw_chars"] == len(control) and row["raw_sha256"] == _sha(control) and row["raw_truncated"]
        assert row["reason"].startswith("inference_failed: ") and len(row["reason"]) < 3_000
    small = json.loads(rejection_json(reject("invalid_json", "not JSON", "{x")))
    assert small["raw"] == "{x" and small["raw_chars"] == 2 and not small["raw_truncated"]
    assert small["raw_sha256"] == _sha("{x")


def test_batch_dead_letters_are_bounded_too(bundled_model: Any, tmp_path: Any) -> None:
    """qa_batch writes the same bounded rows: a 2 MB bad line leaves a dead-letter line under 1 MB."""
    from pipelines import qa_batch

    bad = b'{"id": "big", "question": "q", "context": "' + bytes(range(128, 256)) * 17_000 + b'"}'
    good = _message("ok", "Which countries is it in?")
    (tmp_path / "in.jsonl").write_bytes(good + b"\n" + bad + b"\n")
    outcome = qa_batch.run(["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
                            "--model", str(bundled_model), "--progress-every", "0"])
    assert outcome["counters"]["answered"] == 1 and outcome["counters"]["rejected"] == 1
    (path,) = tmp_path.glob("out-rejected-*.jsonl")
    (line,) = path.read_bytes().splitlines()
    assert len(line) < ONE_MB and json.loads(line)["reason_code"] == "invalid_encoding"
