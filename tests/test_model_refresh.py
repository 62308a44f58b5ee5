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

On the DirectRunner --watch-model cannot use WatchFilePattern at all (its splittable Watch is refused
in a streaming job): there qa_streaming's WatchedModelHandler looks for new files between batches;
its swap is checked here and, end to end on the real Pub/Sub emulator, in test_streaming_pubsub.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, List

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


def _watch_graph(bundled_model: Path, runner: str) -> Any:
    """The streaming graph of --watch-model for ``runner`` (built, not run), as its runner API proto."""
    from pipelines import qa_streaming

    argv = ["--subscription", "s", "--topic", "t", "--rejected-topic", "r", "--model", str(bundled_model),
            "--watch-model", str(bundled_model.parent / "*" / "model.onnx"), "--watch-interval-secs", "30",
            "--runner", runner]
    args, settings, beam_args = qa_streaming.parse_args(argv)
    args.topic = args.rejected_topic = None
    options = PipelineOptions(beam_args)
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    qa_streaming.build_pipeline(p | beam.Create([_msg(0)]), args, settings)
    return p.to_runner_api()


def _run_inference_inputs(proto: Any) -> List[int]:
    return [len(t.inputs) for t in proto.components.transforms.values()
            if t.unique_name.endswith("ParDo(_RunInferenceDoFn)") and t.inputs]


def test_watch_model_on_dataflow_puts_watch_file_pattern_in_front_of_run_inference(bundled_model: Path) -> None:
    """On a remote runner (Dataflow), --watch-model wires Beam's WatchFilePattern as RunInference's model
    side input. (The graph is built for PortableRunner: a DataflowRunner pipeline checks its bucket online.)"""
    proto = _watch_graph(bundled_model, "PortableRunner")
    names = [t.unique_name for t in proto.components.transforms.values()]
    assert any("WatchModel/MatchContinuously" in n for n in names)
    assert 2 in _run_inference_inputs(proto)  # main input + model side input


def test_watch_model_on_the_direct_runner_watches_in_the_handler(bundled_model: Path) -> None:
    """The DirectRunner refuses WatchFilePattern in a streaming job (its splittable Watch "was not
    replaced as expected"): there the handler looks for new models, and the graph has no side input.
    (The swap itself, on the real emulator: tests/test_streaming_pubsub.py.)"""
    proto = _watch_graph(bundled_model, "DirectRunner")
    assert not any("WatchModel" in t.unique_name for t in proto.components.transforms.values())
    assert _run_inference_inputs(proto) and 2 not in _run_inference_inputs(proto)


def _unlinked(bundle: Path) -> Path:
    """``bundle`` with a model.onnx of its own: the watch goes by modification time, and a link's is the target's."""
    onnx = bundle / "model.onnx"
    data = onnx.read_bytes()
    onnx.unlink()
    onnx.write_bytes(data)
    return bundle


def test_the_watched_handler_loads_a_newer_model_between_batches(bundled_model: Path, tmp_path: Path) -> None:
    """A file older than the start is ignored; a newer one is loaded before the next batch and its
    answers carry its id and saved threshold; one that cannot be loaded leaves the model in use."""
    import os
    import time

    from pipelines import qa_streaming
    from pipelines.qa_streaming import WatchedModelHandler
    from pipelines.transforms import make_handler
    from trt_handler.qa.answers import answers_from_logits
    from trt_handler.qa.types import QAExample, QuestionWindows
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    old = _unlinked(_bundle(bundled_model, tmp_path / "old", threshold=-1000.0))
    os.utime(old / "model.onnx", (1, 1))
    _, settings, _ = qa_streaming.parse_args(["--subscription", "s", "--topic", "t", "--rejected-topic", "r",
                                              "--model", str(bundled_model)])
    handler = WatchedModelHandler(make_handler(settings), str(tmp_path / "*" / "model.onnx"), interval=0.2)
    maker = WindowMaker(load_tokenizer(bundled_model), settings.feature_config())
    example = QAExample("q", "Which countries is it in?", CTX)
    batch = [QuestionWindows(example, tuple(maker.windows(example)), "")]
    model = handler.load_model()
    (first,) = answers_from_logits([(example, batch[0].windows, handler.run_inference(batch, model)[0].inference)])
    assert first.provenance.model_id == settings.model_dir and first.text == "Brazil and Peru"
    new = _unlinked(_bundle(bundled_model, tmp_path / "new", threshold=-1000.0))
    time.sleep(0.3)
    (second,) = answers_from_logits([(example, batch[0].windows, handler.run_inference(batch, model)[0].inference)])
    assert second.provenance.model_id == str(new / "model.onnx") and second.text == ""
    assert second.provenance.null_threshold == -1000.0
    broken = tmp_path / "broken"  # a newer file that is no model: logged, skipped, the model in use answers
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    time.sleep(0.3)
    (third,) = answers_from_logits([(example, batch[0].windows, handler.run_inference(batch, model)[0].inference)])
    assert third.provenance.model_id == str(new / "model.onnx") and third.text == ""
