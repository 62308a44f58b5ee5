"""Model refresh without a restart (streaming): RunInference's model side input swaps the bundle
while a TestStream runs; every message is answered exactly once, answers before the swap carry the
first model's id and threshold, answers after it the new model's.

The side input is a TestStream of Beam ModelMetadata elements (what WatchFilePattern emits), not
WatchFilePattern itself: WatchFilePattern polls the file system on a wall-clock interval inside a
global window with a processing-time trigger, and on the DirectRunner a global-window side input
is only read once its watermark is final (all ModelMetadata at once: "more than one element
accessed as a singleton"). The test therefore puts questions and models in 10-second event-time
windows, so a question sees the model of its window; the handler path (update_model_path ->
new bundle, its sidecar/export.json re-read, new model id) is the same one WatchFilePattern drives.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.window import TimestampedValue

from pipelines.transforms import answer_json
from tests.helpers import link_bundle

CTX = "The Amazon rainforest covers most of the Amazon basin of South America. It is in Brazil and Peru."


def _bundle(src: Path, dest: Path, threshold: Any = None) -> Path:
    link_bundle(src, dest)
    if threshold is not None:
        meta = json.loads((dest / "export.json").read_text(encoding="utf-8"))
        meta["null_threshold"] = {"value": threshold}
        (dest / "export.json").write_text(json.dumps(meta), encoding="utf-8")
    return dest


def _msg(i: int) -> bytes:
    return json.dumps({"id": f"q{i}", "question": "Which countries is it in?", "context": CTX}).encode()


def test_a_new_bundle_replaces_the_model_while_the_stream_runs(bundled_model: Path, tmp_path: Path) -> None:
    from pipelines import qa_streaming

    v1 = _bundle(bundled_model, tmp_path / "v1")
    v2 = _bundle(bundled_model, tmp_path / "v2", threshold=-1000.0)  # v2 answers "" to everything
    args, settings, _ = qa_streaming.parse_args(
        ["--subscription", "s", "--topic", "t", "--rejected-topic", "r", "--model", str(v1), "--batch-windows", "1"])
    args.topic = args.rejected_topic = None
    # per-bundle batching: the DirectRunner's stateful BatchElements loses windows (max_timestamp of None)
    settings = dataclasses.replace(settings, max_batch_duration_secs=None)
    stream = (
        TestStream(output_tags={"q", "m"})
        .add_elements([TimestampedValue(ModelMetadata(model_id=str(v1 / "model.onnx"), model_name="v1"), 1)], tag="m")
        .add_elements([TimestampedValue(_msg(i), 2 + i) for i in range(3)], tag="q")
        .advance_processing_time(5)
        .advance_watermark_to(10, tag="m").advance_watermark_to(10, tag="q")
        .advance_processing_time(5)
        # the new bundle appears while the stream runs
        .add_elements([TimestampedValue(ModelMetadata(model_id=str(v2 / "model.onnx"), model_name="v2"), 11)],
                      tag="m")
        .add_elements([TimestampedValue(_msg(i), 12 + i) for i in range(3, 6)], tag="q")
        .advance_processing_time(5)
        .advance_watermark_to_infinity(tag="q").advance_watermark_to_infinity(tag="m"))
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    streams = p | stream
    models = streams["m"] | "ModelWindows" >> beam.WindowInto(window.FixedWindows(10))
    questions = streams["q"] | "QuestionWindows" >> beam.WindowInto(window.FixedWindows(10))
    out = qa_streaming.build_pipeline(questions, args, settings, model_metadata=models)
    rows = (out.answers | beam.Map(answer_json) | beam.Map(json.loads)
            | beam.Map(lambda r: (r["id"], r["model_id"], r["answer"], r["threshold_source"], r["null_threshold"]))
            | beam.WindowInto(window.GlobalWindows()))
    v1_id, v2_id = str(v1 / "model.onnx"), str(v2 / "model.onnx")
    assert_that(rows, equal_to(
        [(f"q{i}", v1_id, "Brazil and Peru", "default", 0.0) for i in range(3)]
        + [(f"q{i}", v2_id, "", "model", -1000.0) for i in range(3, 6)]), label="answers")
    assert_that(out.rejected | "R" >> beam.WindowInto(window.GlobalWindows()), equal_to([]), label="rejected")
    p.run().wait_until_finish()


def test_watch_model_flag_puts_watch_file_pattern_in_front_of_run_inference(bundled_model: Path) -> None:
    """--watch-model wires Beam's WatchFilePattern as RunInference's model side input."""
    from pipelines import qa_streaming

    args, settings, _ = qa_streaming.parse_args(
        ["--subscription", "s", "--topic", "t", "--rejected-topic", "r", "--model", str(bundled_model),
         "--watch-model", str(bundled_model.parent / "*" / "model.onnx"), "--watch-interval-secs", "30"])
    args.topic = args.rejected_topic = None
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    qa_streaming.build_pipeline(p | beam.Create([_msg(0)]), args, settings)
    proto = p.to_runner_api()
    names = [t.unique_name for t in proto.components.transforms.values()]
    assert any(n.endswith("WatchModel/MatchContinuously") or "WatchModel/MatchContinuously" in n for n in names)
    run_inference = [t for t in proto.components.transforms.values()
                     if t.unique_name.endswith("ParDo(_RunInferenceDoFn)") and t.inputs]
    assert run_inference and any(len(t.inputs) == 2 for t in run_inference)  # main input + model side input
