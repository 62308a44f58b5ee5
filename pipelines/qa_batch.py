"""Answer a file of questions with the Beam batch pipeline (DirectRunner locally, Dataflow on GCP).

    python -m pipelines.qa_batch --input samples/squad_sample.jsonl --output out/answers \\
        --model ../shared/models/minilm-l6-squad2 --backend onnx --show 5

Input: JSONL ({id, question, context[, answers, is_impossible]} a line) or SQuAD v1.1/v2.0 JSON
files, local or gs://: a path that names a file is read as that file (even with *, ? or [ in its
name); any other path with *, ? or [...] is a glob and every file it matches is read, each in the
format its name says (*.json SQuAD, else JSONL) unless --input-format says. Output:
``OUTPUT-SSSSS-of-NNNNN.jsonl`` (one answer a line) or a BigQuery table, and the dead letters in
``OUTPUT-rejected-SSSSS-of-NNNNN.jsonl`` (reason + raw record); ``--eval`` also writes
``OUTPUT-metric.json`` and prints it as the last line. OUTPUT is a plain prefix, never a glob; the
files are staged and replace an earlier run's only once this run has finished, one run at a time
(``OUTPUT.lock``). Beam's own flags go to Beam (``--runner``, ``--project``, ``--temp_location``, ...);
anything else stops the run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from pipelines.options import (
    QASettings,
    add_qa_arguments,
    new_parser,
    resolve_model,
    settings_or_exit,
    split_argv,
    threshold_note,
)
from pipelines.outputs import OutputRun
from pipelines.records import answer_row
from pipelines.transforms import (
    NAMESPACE,
    AnswerQuestions,
    ReadRecords,
    answer_json,
    input_files,
    make_handler,
    rejection_json,
    report_progress,
    write_to_bigquery,
)
from trt_handler.qa.types import Answer, QAExample

LOGGER = logging.getLogger(__name__)

__all__ = ["OUTPUT_TAILS", "build_parser", "build_pipeline", "main", "resolve_model", "run"]

# What follows OUTPUT in the name of each file a run writes (the earlier files a finished run replaces).
OUTPUT_TAILS = re.compile(r"-[0-9]+-of-[0-9]+\.jsonl|-rejected-[0-9]+-of-[0-9]+\.jsonl|-metric\.json|-show\.jsonl")

# Runners that run the pipeline in this process, where the progress line can count it.
_LOCAL_RUNNERS = (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "FnApiRunner",
                  "PrismRunner")


def build_parser() -> argparse.ArgumentParser:
    parser, io = new_parser("python -m pipelines.qa_batch", __doc__)
    io.add_argument("--input", required=True,
                    help="JSONL or SQuAD JSON file (local or gs://), read as named; a path naming no file but holding "
                         "*, ? or [...] is a glob, and every file it matches is read")
    io.add_argument("--input-format", choices=("auto", "jsonl", "squad"), default="auto",
                    help="auto: each file by its name, *.json (.gz, ...) SQuAD JSON, anything else JSONL (default auto)")
    io.add_argument("--output", required=True,
                    help="output prefix (local or gs://, never a glob): answers OUTPUT-*.jsonl, dead letters "
                         "OUTPUT-rejected-*.jsonl; they replace an earlier run's once this run has finished")
    io.add_argument("--show", type=int, default=0, metavar="N", help="print N answers (with their questions) at the end")
    io.add_argument("--allow-duplicate-ids", action="store_true",
                    help="answer every record even when ids repeat (default: all but one record of a repeated id "
                         "are dead-lettered as duplicate_id)")
    io.add_argument("--eval", action="store_true",
                    help="inputs carry gold answers: write OUTPUT-metric.json and print the SQuAD metric as the last line")
    io.add_argument("--save-threshold", action="store_true",
                    help="with --eval: save best_f1_thresh with the model (a local bundle's export.json, or the "
                         "engine sidecar with --backend tensorrt); later runs apply it unless --null-threshold is set")
    add_qa_arguments(parser)
    return parser


def _metric_json(pairs: List[Tuple[QAExample, Answer]]) -> str:
    """The SQuAD metric (one JSON line) of the answers whose questions carry gold; ``unscored``: the others."""
    from trt_handler.evaluate import metric_for_answers

    scored = [(ex, a) for ex, a in pairs if ex.answers or ex.is_impossible is True]
    if not scored:
        return json.dumps({"total": 0, "unscored": len(pairs)})
    examples = sorted((ex for ex, _ in scored), key=lambda ex: ex.id)
    metric = metric_for_answers(examples, {ex.id: a for ex, a in scored})
    return json.dumps({**metric, "unscored": len(pairs) - len(scored)}, sort_keys=True)


def _show_line(pair: Tuple[QAExample, Answer], top_k: int = 1) -> str:
    ex, a = pair
    return json.dumps({"question": ex.question, **answer_row(a, top_k)}, ensure_ascii=False)


def build_pipeline(p: beam.Pipeline, args: argparse.Namespace, settings: QASettings, handler: Any = None, *,
                   files: Optional[Sequence[str]] = None, write_to: Optional[Callable[[str], str]] = None) -> None:
    """Read -> AnswerQuestions -> write answers, dead letters, [metric], [shown answers]. ``files``: the
    input files (default: those ``args.input`` names); ``write_to(tail)``: where the output
    ``OUTPUT<tail>`` is written (default ``args.output + tail``; a run writes to its staging folder)."""
    read = ReadRecords(args.input if files is None else files, args.input_format)
    out = p | "Read" >> read | "AnswerQuestions" >> AnswerQuestions(
        settings, handler, unique_ids=not args.allow_duplicate_ids, spread=read.one_reader)
    to = write_to or (lambda tail: args.output + tail)

    write_to_bigquery(out, args.bigquery_table, args.bigquery_rejected_table, top_k=settings.top_k)
    if not args.bigquery_table:
        _ = (
            out.answers
            | "AnswerLines" >> beam.Map(functools.partial(answer_json, top_k=settings.top_k))
            | "WriteAnswers" >> beam.io.WriteToText(to(""), file_name_suffix=".jsonl")
        )
    if not args.bigquery_rejected_table:
        _ = (
            out.rejected
            | "RejectedLines" >> beam.Map(rejection_json)
            | "WriteRejected" >> beam.io.WriteToText(to("-rejected"), file_name_suffix=".jsonl")
        )
    if args.eval:
        _ = (
            out.answers
            | "ForMetric" >> beam.MapTuple(lambda ex, a: (ex, dataclasses.replace(a, n_best=())))  # smaller list
            | "AllAnswers" >> beam.combiners.ToList()
            | "Metric" >> beam.Map(_metric_json)
            | "WriteMetric" >> beam.io.WriteToText(to("-metric"), file_name_suffix=".json", shard_name_template="")
        )
    if args.show > 0:
        _ = (
            out.answers
            | "PickShown" >> beam.combiners.Top.Smallest(args.show, key=lambda pair: pair[0].id)
            | "ShownLines" >> beam.FlatMap(lambda pairs, k: [_show_line(pair, k) for pair in pairs], settings.top_k)
            | "WriteShown" >> beam.io.WriteToText(to("-show"), file_name_suffix=".jsonl", shard_name_template="")
        )


def _read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def counters(result: Any) -> Dict[str, int]:
    """Committed (or, where the runner has none, attempted) values of our counters, by name."""
    from apache_beam.metrics.metric import MetricsFilter

    out: Dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def summary_line(counts: Dict[str, int], seconds: float) -> str:
    """``read N records from F files, answered A, rejected R (code n, ...), Q questions/s``; says so when
    they don't add up."""
    read, answered, rejected = counts.get("records_read", 0), counts.get("answered", 0), counts.get("rejected", 0)
    files = counts.get("files_read", 0)
    by_reason = sorted((k.split(".", 1)[1], v) for k, v in counts.items() if k.startswith("rejected.") and v)
    reasons = ", ".join(f"{code} {n}" for code, n in by_reason)
    line = (f"summary: read {read} records from {files} file{'' if files == 1 else 's'}, answered {answered}, "
            f"rejected {rejected}"
            f"{f' ({reasons})' if reasons else ''}; {read / max(seconds, 1e-9):.1f} questions/s over {seconds:.1f} s")
    if read != answered + rejected:
        line += f"; WARNING: {read - answered - rejected} records have no outcome"
    return line


def run(argv: Optional[Sequence[str]] = None, handler: Any = None) -> Dict[str, Any]:
    """Build and run the pipeline; returns counters, seconds, the metric (with --eval) and more."""
    parser = build_parser()
    args, beam_args = split_argv(parser, argv)
    if args.show < 0:
        parser.error("--show must be 0 or more")
    if args.save_threshold and not args.eval:
        parser.error("--save-threshold needs --eval (the threshold is learned from the gold answers)")
    settings = settings_or_exit(parser, args)
    try:
        files = input_files(args.input)
        outputs = OutputRun(args.output, OUTPUT_TAILS)
        if args.save_threshold:
            threshold_target(settings)  # refuse before the run, not after it
    except ValueError as exc:  # a fault of the run, not of the command line: no usage text
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    options = PipelineOptions(beam_args)
    from trt_handler.backends.handlers import QAHandler

    handler = make_handler(settings) if handler is None else handler
    decides = handler if isinstance(handler, QAHandler) else make_handler(settings)  # the threshold's one owner
    outcome: Dict[str, Any] = {"counters": {}, "metric": None, "shown": [], "threshold": threshold_note(decides),
                               "saved_threshold": None}
    t0 = time.perf_counter()
    template = options.view_as(GoogleCloudOptions).template_location
    if template:  # DataflowRunner writes the job description there and runs nothing: outputs go straight to OUTPUT
        p = beam.Pipeline(options=options)
        build_pipeline(p, args, settings, handler, files=files)
        p.run()
        return {**outcome, "seconds": time.perf_counter() - t0, "template": str(template)}
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(outputs)  # the lock: one live run per prefix; cleans after dead runs
        except ValueError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        p = beam.Pipeline(options=options)
        build_pipeline(p, args, settings, handler, files=files, write_to=outputs.staged)
        with report_progress(args.progress_every if options.view_as(StandardOptions).runner in _LOCAL_RUNNERS else 0):
            result = p.run()
            state = result.wait_until_finish()
        if state is not None and state != PipelineState.DONE:  # e.g. a Dataflow job cancelled from the console
            raise RuntimeError(f"the pipeline ended {state}, not DONE; the outputs of earlier runs at {args.output} "
                               "are kept")
        outcome.update(counters=counters(result), seconds=time.perf_counter() - t0)
        outputs.commit()  # the run finished: its files replace the earlier ones
    if args.show > 0:
        outcome["shown"] = [json.loads(line) for line in _read_text(f"{args.output}-show.jsonl").splitlines() if line]
    if args.eval:
        outcome["metric"] = json.loads(_read_text(f"{args.output}-metric.json"))
        if args.save_threshold and outcome["metric"].get("best_f1_thresh") is not None:
            outcome["saved_threshold"] = save_threshold(settings, outcome["metric"], args.input)
    return outcome


def threshold_target(settings: QASettings) -> str:
    """The file ``--save-threshold`` writes (engine sidecar or local bundle's export.json); ValueError if none."""
    path, what = ((f"{settings.engine}.json", "engine sidecar") if settings.backend == "tensorrt"
                  else (os.path.join(settings.model_dir, "export.json"), "bundle export.json"))
    if FileSystems.get_scheme(path) not in (None, "file"):
        raise ValueError(f"--save-threshold writes local files only; {path} is remote: evaluate a local copy of "
                         "the model, then upload it")
    if not os.path.isfile(path):
        raise ValueError(f"--save-threshold: the model has no {what} at {path} to record the threshold in "
                         "(export the model with trt_handler.engines.export / build the engine first)")
    return path


def save_threshold(settings: QASettings, metric: Dict[str, Any], data: str) -> Dict[str, Any]:
    """Write the metric's best_f1_thresh into the model's export.json / sidecar, atomically (the bundle's
    sha256 covers model.onnx only); returns the entry."""
    from trt_handler.engines.sidecar import atomic_write

    path = threshold_target(settings)
    meta = json.loads(Path(path).read_text(encoding="utf-8"))
    entry = {
        "value": float(metric["best_f1_thresh"]),
        "best_f1": metric.get("best_f1"),
        "best_exact": metric.get("best_exact"),
        "f1_at_0": metric.get("f1"),
        "learned_on": data,
        "questions": metric.get("total"),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta["null_threshold"] = entry
    atomic_write(Path(path), (json.dumps(meta, indent=2) + "\n").encode())
    LOGGER.warning("saved no-answer threshold %g in %s", entry["value"], path)
    return {"path": path, **entry}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit 0 when questions were answered; 1 when every record was rejected (or nothing could be
    scored with --eval); 2 for a usage error; 3 when the run itself failed (one paragraph; the
    traceback with --verbose)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # Beam warns this every batch when its optional scipy is missing; memory metrics are all it costs.
        handler.addFilter(lambda record: not record.getMessage().startswith("Resource module is not available"))
    try:
        outcome = run(argv)
    except Exception as exc:  # noqa: BLE001 - one paragraph for a person, the traceback on request
        if verbose:
            raise
        text = " ".join(str(exc).split())
        print(f"error: the pipeline failed: {type(exc).__name__}: {text[:600]}{' ...' if len(text) > 600 else ''}\n"
              "(run again with --verbose for the traceback)", file=sys.stderr)
        return 3
    if outcome.get("template"):
        print(f"wrote the Dataflow template {outcome['template']} (no job was run); {outcome['threshold']}")
        return 0
    for row in outcome["shown"]:
        answer = "(no answer)" if row["is_no_answer"] else repr(row["answer"])
        prob = row["probability"]
        print(f"{row['id']}: {row['question']}\n    -> {answer}"
              f"  p={prob if prob is None else round(prob, 3)} window={row['window_index']}")
    counts = outcome["counters"]
    print(outcome["threshold"])
    print(summary_line(counts, outcome["seconds"]))
    saved = outcome["saved_threshold"]
    if saved:
        print(f"saved no-answer threshold {saved['value']:g} (best F1 {saved['best_f1']}) in {saved['path']}; "
              "later runs with this model apply it")
    if counts.get("records_read", 0) and not counts.get("answered", 0):
        print("error: every record was rejected; see the dead letters (OUTPUT-rejected-*.jsonl)", file=sys.stderr)
        return 1
    metric = outcome["metric"]
    if metric is not None:
        if not metric.get("total"):
            print("error: no answered question carries gold answers, so there is no metric", file=sys.stderr)
            return 1
        print(json.dumps(metric, sort_keys=True))  # the last line: the SQuAD metric
    return 0


if __name__ == "__main__":
    sys.exit(main())
