"""Answer questions from Pub/Sub as they arrive (streaming Beam pipeline, Dataflow streaming engine).

    python -m pipelines.qa_streaming --subscription projects/P/subscriptions/S \\
        --topic projects/P/topics/answers --rejected-topic projects/P/topics/rejected \\
        --model gs://BUCKET/models/minilm-bundle --backend tensorrt --engine gs://BUCKET/engines/t4.engine \\
        --runner DataflowRunner --project P --region R --temp_location gs://BUCKET/tmp

Each message is one JSON question ``{id, question, context}``. Answers go to ``--topic`` (JSON
messages) and/or ``--bigquery-table``; dead letters to ``--rejected-topic`` and/or
``--bigquery-rejected-table``. The graph is the batch pipeline's, but every message is its own
request: two messages that reuse an id get an answer each.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.options import QASettings, add_qa_arguments, new_parser, settings_or_exit, split_argv
from pipelines.transforms import AnswerQuestions, QAOutputs, answer_json, rejection_json, write_to_bigquery


def build_parser() -> argparse.ArgumentParser:
    parser, io = new_parser("python -m pipelines.qa_streaming", __doc__)
    io.add_argument("--subscription", required=True, help="Pub/Sub subscription to read questions from")
    io.add_argument("--topic", default=None, help="Pub/Sub topic for answers (JSON)")
    io.add_argument("--rejected-topic", default=None, help="Pub/Sub topic for dead letters (JSON with reason and raw)")
    io.add_argument("--max-batch-duration-secs", type=float, default=1.0,
                    help="longest RunInference waits to fill a batch (default 1.0)")
    io.add_argument("--watch-model", default=None, metavar="PATTERN",
                    help="swap models without a restart: a file pattern (local or gs://) of ONNX files "
                         "(BUNDLE/model.onnx, --backend onnx) or engines (--backend tensorrt) watched with Beam's "
                         "WatchFilePattern; the newest match is loaded and later answers carry its model id, "
                         "sha256 and saved threshold. Each new model needs a new file name, and must use the "
                         "tokenizer of --model")
    io.add_argument("--watch-interval-secs", type=float, default=360.0,
                    help="how often --watch-model looks for new files (default 360)")
    add_qa_arguments(parser)
    return parser


def build_pipeline(
    messages: beam.PCollection, args: argparse.Namespace, settings: QASettings, handler: Any = None,
    model_metadata: Optional[beam.PCollection] = None,
) -> QAOutputs:
    """Message bodies (bytes) -> answers and dead letters written to their sinks.

    Tests inject ``messages`` (a TestStream) and ``model_metadata`` (Beam ModelMetadata, one per new
    model), which otherwise comes from ``--watch-model`` through Beam's WatchFilePattern.
    """
    if model_metadata is None and args.watch_model:
        from apache_beam.ml.inference.utils import WatchFilePattern

        model_metadata = messages.pipeline | "WatchModel" >> WatchFilePattern(
            file_pattern=args.watch_model, interval=args.watch_interval_secs)
    out = messages | "AnswerQuestions" >> AnswerQuestions(settings, handler, unique_ids=False,
                                                          model_metadata=model_metadata)
    if args.topic:  # UTF-8 JSON message bodies
        answers = out.answers | "AnswerMessages" >> beam.Map(lambda pair: answer_json(pair, settings.top_k).encode())
        _ = answers | "PublishAnswers" >> beam.io.WriteToPubSub(args.topic)
    if args.rejected_topic:
        rejected = out.rejected | "RejectedMessages" >> beam.Map(lambda r: rejection_json(r).encode())
        _ = rejected | "PublishRejected" >> beam.io.WriteToPubSub(args.rejected_topic)
    write_to_bigquery(out, args.bigquery_table, args.bigquery_rejected_table, top_k=settings.top_k, streaming=True)
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple:
    """(args, settings, beam_args); refuses a job whose answers or dead letters would go nowhere."""
    parser = build_parser()
    args, beam_args = split_argv(parser, argv)
    if not (args.topic or args.bigquery_table):
        parser.error("answers need a sink: --topic or --bigquery-table")
    if not (args.rejected_topic or args.bigquery_rejected_table):
        parser.error("dead letters need a sink: --rejected-topic or --bigquery-rejected-table")
    if args.watch_interval_secs <= 0:
        parser.error("--watch-interval-secs must be positive")
    settings = settings_or_exit(parser, args)
    logging.getLogger(__name__).info("%s", settings.threshold_note())
    return args, settings, beam_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, settings, beam_args = parse_args(argv)
    options = PipelineOptions(beam_args)
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    messages = p | "ReadQuestions" >> beam.io.ReadFromPubSub(subscription=args.subscription)
    build_pipeline(messages, args, settings)
    p.run()  # a streaming job runs until cancelled; on Dataflow this returns once it is submitted
    return 0


if __name__ == "__main__":
    sys.exit(main())
