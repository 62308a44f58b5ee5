"""Beam transforms shared by the batch pipeline, the streaming pipeline and the notebook.

One question's trip, the same graph for batch and streaming (no CoGroupByKey, no state, no
timers: a question travels as one element with all its windows)::

    raw record --parse--> (raw, QAExample) --windows--> QuestionWindows
      --RunInference(handler)--> PredictionResult(question, Answer | error) --> (QAExample, Answer)

Every record leaves as exactly one answer or one :class:`~trt_handler.qa.types.Rejection`: parse
and feature rejections leave at their step; a question whose own answer failed, or whose batch
failed in the model (or ran past ``inference_timeout_secs``), is rejected once with the reason.
Batch jobs also reject every record but one of an id that appears more than once (see
:class:`RejectDuplicateIds`: only ids and the rare duplicates are shuffled).

QA logic (validation, windows, answers) lives in ``trt_handler``; this module only composes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, TextIO, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from pipelines.options import QASettings
from pipelines.records import (
    ANSWER_BQ_SCHEMA,
    REJECTED_BQ_SCHEMA,
    answer_row,
    feature_rejection,
    parse_record,
    raw_text,
    reason_code,
    reject,
    rejection_row,
    split_squad_document,
)
from trt_handler.qa.answers import Provenance, with_provenance
from trt_handler.qa.types import Answer, QAExample, QuestionWindows, Rejection

LOGGER = logging.getLogger(__name__)

NAMESPACE = "trt_qa"  # Beam metrics namespace of every counter below
REJECTED = "rejected"


# --------------------------------------------------------------------------------------------
# reading


def input_format(path: str, requested: str = "auto") -> str:
    """``jsonl`` or ``squad`` for ``path``: by flag, else by extension (``.json`` is SQuAD).

    Decided at launch from the name alone, so a gs:// input is not opened on the launcher.
    """
    if requested in ("jsonl", "squad"):
        return requested
    if requested != "auto":
        raise ValueError(f"input format must be auto, jsonl or squad, got {requested!r}")
    name = path.lower()
    for ext in (".gz", ".bz2", ".deflate", ".zst"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return "squad" if name.endswith(".json") else "jsonl"


class ReadRecords(beam.PTransform):
    """Raw records of ``path``: JSONL lines (bytes, split across workers by ReadFromText) or the
    questions of a SQuAD JSON document (read whole by one worker, one JSON string per question).

    Records are bytes/str; a SQuAD document that cannot be read as one yields a Rejection.
    """

    def __init__(self, path: str, fmt: str = "auto"):
        super().__init__()
        self._path = path
        self._format = input_format(path, fmt)

    def expand(self, pbegin: pvalue.PBegin) -> pvalue.PCollection:
        if self._format == "jsonl":
            # Bytes, not str: a line that is not UTF-8 becomes a dead letter instead of a crash.
            return pbegin | "ReadLines" >> beam.io.ReadFromText(self._path, coder=beam.coders.BytesCoder())
        return (
            pbegin
            | "MatchDocument" >> fileio.MatchFiles(self._path)
            | "ReadDocument" >> fileio.ReadMatches()
            | "SplitQuestions" >> beam.FlatMap(lambda f: split_squad_document(f.read(), f.metadata.path))
            # One worker reads a whole document: spread its questions over the workers.
            | "Spread" >> beam.Reshuffle()
        )


# --------------------------------------------------------------------------------------------
# parse


class _Parse(beam.DoFn):
    """raw -> (raw text, QAExample) on the main output, Rejection on ``rejected``."""

    def __init__(self, limits: Any):
        self._limits = limits
        self._read = Metrics.counter(NAMESPACE, "records_read")

    def process(self, raw: Any) -> Iterator[Any]:
        self._read.inc()
        _PROGRESS.add(read=1)
        if isinstance(raw, Rejection):  # a whole-document problem found while reading
            yield pvalue.TaggedOutput(REJECTED, raw)
            return
        result = parse_record(raw, self._limits)
        if isinstance(result, Rejection):
            yield pvalue.TaggedOutput(REJECTED, result)
        else:
            yield raw_text(raw), result


# --------------------------------------------------------------------------------------------
# duplicate ids (batch)


def _count_to_dup(pair: Tuple[str, int]) -> Iterator[Tuple[str, int]]:
    if pair[1] > 1:
        yield pair


def _route_duplicates(pair: Tuple[str, QAExample], duplicated: Dict[str, int]) -> Iterator[Any]:
    if pair[1].id in duplicated:
        yield pvalue.TaggedOutput("duplicated", (pair[1].id, pair))
    else:
        yield pair


def _keep_one(element: Tuple[str, Any]) -> Iterator[Any]:
    """All records of one duplicated id -> the one kept (smallest raw text, so the choice does not
    depend on the runner's order) and a ``duplicate_id`` rejection for each other one."""
    eid, pairs = element
    ordered = sorted(pairs, key=lambda p: p[0])
    for raw, _ in ordered[1:]:
        yield pvalue.TaggedOutput(REJECTED, reject(
            "duplicate_id", f"id {eid!r} appears {len(ordered)} times in the input; one of them is answered",
            raw, stage="dedupe", example_id=eid))
    yield ordered[0]


class _Deduped(NamedTuple):
    unique: pvalue.PCollection
    rejected: pvalue.PCollection


class RejectDuplicateIds(beam.PTransform):
    """(raw, QAExample) -> the same, one record per id; ``rejected``: the other records of an id.

    Only ids are counted across workers (a combine of (id, 1)); records of the few duplicated ids
    are grouped, everything else passes by with no shuffle of its own. Batch only: a stream has
    no end at which an id is known to be unique, so there every message is its own request.
    """

    def expand(self, parsed: pvalue.PCollection) -> _Deduped:
        duplicated = (
            parsed
            | "Ids" >> beam.Map(lambda pair: (pair[1].id, 1))
            | "CountIds" >> beam.CombinePerKey(sum)
            | "Duplicated" >> beam.FlatMap(_count_to_dup)
        )
        routed = parsed | "Route" >> beam.FlatMap(
            _route_duplicates, beam.pvalue.AsDict(duplicated)).with_outputs("duplicated", main="unique")
        kept = (
            routed.duplicated
            | "GroupDuplicates" >> beam.GroupByKey()
            | "KeepOne" >> beam.FlatMap(_keep_one).with_outputs(REJECTED, main="kept")
        )
        unique = (routed.unique, kept.kept) | "OnePerId" >> beam.Flatten()
        return _Deduped(unique, kept[REJECTED])


# --------------------------------------------------------------------------------------------
# model files on workers


_STAGED: Dict[str, str] = {}
_STAGE_LOCK = threading.Lock()


def local_model_dir(model_dir: str) -> str:
    """A local folder with the bundle's tokenizer files (the tokenizer loads only from local
    folders or the hub): ``model_dir`` itself when local, else a per-process copy of the small
    files of a gs:// (any Beam FileSystems) folder; ONNX files stay where they are (the ONNX
    Runtime handler reads them itself)."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(model_dir) in (None, "file"):
        return model_dir
    key = model_dir
    with _STAGE_LOCK:
        if key in _STAGED:
            return _STAGED[key]
        target = tempfile.mkdtemp(prefix="trt-qa-model-")
        pattern = FileSystems.join(model_dir.rstrip("/"), "*")
        matched = FileSystems.match([pattern])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"no files under {model_dir}; upload the model bundle folder there")
        for meta in matched:
            name = meta.path.rstrip("/").rsplit("/", 1)[-1]
            if name.endswith((".onnx", ".onnx.data", ".engine", ".plan")):
                continue
            with FileSystems.open(meta.path) as src, open(os.path.join(target, name), "wb") as dst:
                dst.write(src.read())
        _STAGED[key] = target
        return target


# --------------------------------------------------------------------------------------------
# windows


class _MakeQuestions(beam.DoFn):
    """Batches of (raw, QAExample) -> QuestionWindows (a question with all its windows) on the
    main output, Rejection (feature error) on ``rejected``. One batched tokenizer call per batch."""

    def __init__(self, settings: QASettings):
        self._settings = settings
        self._maker: Any = None
        self._windows = Metrics.counter(NAMESPACE, "windows")

    def setup(self) -> None:
        from trt_handler.qa.windows import WindowMaker, load_tokenizer

        tokenizer = load_tokenizer(local_model_dir(self._settings.model_dir))
        self._maker = WindowMaker(tokenizer, self._settings.feature_config())

    def _windows_many(self, examples: List[QAExample]) -> List[Any]:
        try:
            return self._maker.windows_many(examples)
        except Exception:  # noqa: BLE001 - isolate the record that broke the batched call
            out: List[Any] = []
            for ex in examples:
                try:
                    out.append(self._maker.windows(ex))
                except Exception as exc:  # noqa: BLE001 - any failure of one record is its dead letter
                    out.append(exc)
            return out

    def process(self, batch: List[Tuple[str, QAExample]]) -> Iterator[Any]:
        results = self._windows_many([ex for _, ex in batch])
        for (raw, ex), windows in zip(batch, results):
            if isinstance(windows, Exception) or not windows:
                error = windows if isinstance(windows, Exception) else ValueError("the tokenizer made no window")
                yield pvalue.TaggedOutput(REJECTED, feature_rejection(error, raw, ex.id))
                continue
            self._windows.inc(len(windows))
            yield QuestionWindows(ex, tuple(windows), raw)


# --------------------------------------------------------------------------------------------
# inference


def make_handler(settings: QASettings) -> Any:
    """The RunInference model handler for ``settings.backend``.

    Settings left None are not passed, so each handler applies its own defaults (an engine's
    profiles and batch limits come from its sidecar). With ``engine_cache_dir`` the TensorRT
    handler may build an engine from the bundle's ONNX when the given one cannot run on the worker.
    """
    from trt_handler.backends import handlers

    given = {
        "buckets": settings.buckets,
        "max_model_batch": settings.max_batch,
        "max_batch_windows": settings.batch_windows,
        "max_tokens": settings.max_tokens,
        "pad_to": settings.pad_to,
        "max_batch_duration_secs": settings.max_batch_duration_secs,
    }
    kwargs: Dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    config = settings.answer_config()
    if settings.threshold_source == "flag":
        kwargs["threshold_source"] = "flag"
    else:  # the handler reads each model's saved threshold itself (it changes when models are swapped)
        import dataclasses

        config = dataclasses.replace(config, null_threshold=0.0)
        kwargs["threshold_source"] = "model"
    kwargs["answer_config"] = config
    if settings.backend == "onnx":
        return handlers.OnnxRuntimeQAHandler(settings.model_dir, intra_op_threads=settings.onnx_threads, **kwargs)
    if settings.backend == "torch":
        return handlers.TorchQAHandler(settings.model_dir, device=settings.torch_device, dtype=settings.torch_dtype,
                                       gpu_count=settings.gpu_count, large_model=settings.share_model, **kwargs)
    if settings.engine_cache_dir:
        kwargs.update(onnx_path=settings.model_dir, cache_dir=settings.engine_cache_dir)
    if settings.gpu_count is not None and settings.gpu_count > 1:  # one engine per process, on its own GPU
        kwargs.update(gpu_count=settings.gpu_count, large_model=False)
    return handlers.TensorRTQAHandler(settings.engine, **kwargs)


def _outcome(prediction: Any, settings: Optional[QASettings] = None) -> Iterator[Any]:
    """PredictionResult(question, Answer | error) -> (QAExample, Answer), or its Rejection.

    The answer leaves with its provenance, its model id being Beam's ``PredictionResult.model_id``:
    the handler's own (a ServedAnswer), or, for a handler that records none, one made from the
    model id and the settings."""
    question: QuestionWindows = prediction.example
    outcome = prediction.inference
    if isinstance(outcome, Answer):
        prov = getattr(outcome, "provenance", None)
        model_id = prediction.model_id
        if prov is None:
            prov = Provenance(model_id=str(model_id) if model_id is not None else "",
                              backend=settings.backend if settings else "", null_threshold=(
                                  settings.null_threshold if settings else 0.0),
                              threshold_source=settings.threshold_source if settings else "default")
            outcome = with_provenance(outcome, prov)
        elif model_id is not None and prov.model_id != model_id:
            outcome = with_provenance(outcome, dataclasses.replace(prov, model_id=str(model_id)))
        yield question.example, outcome
        return
    yield pvalue.TaggedOutput(REJECTED, reject(
        "answer_error", f"answer extraction failed: {type(outcome).__name__}: {outcome}", question.raw,
        stage="answer", example_id=question.example.id))


def _failed_batch(element: Tuple[List[QuestionWindows], Tuple[Any, Any, Any]]) -> Iterator[Rejection]:
    """A batch from RunInference's dead-letter output -> one rejection per question in it."""
    batch, (exc_type, exc, _traceback) = element
    timed_out = isinstance(exc_type, type) and issubclass(exc_type, TimeoutError) or "TimeoutError" in str(exc_type)
    code = "inference_timeout" if timed_out else "inference_failed"
    text = str(exc)
    for question in batch:
        yield reject(code, f"the model call for a batch of {len(batch)} questions holding this one failed: {text}",
                     question.raw, stage="inference", example_id=question.example.id)


# --------------------------------------------------------------------------------------------
# the whole trip


class QAOutputs(NamedTuple):
    answers: pvalue.PCollection  # (QAExample, Answer)
    rejected: pvalue.PCollection  # Rejection


def _count_answer(pair: Tuple[QAExample, Answer]) -> Tuple[QAExample, Answer]:
    _PROGRESS.add(answered=1)
    Metrics.counter(NAMESPACE, "answered").inc()
    return pair


def _count_rejection(r: Rejection) -> Rejection:
    _PROGRESS.add(rejected=1)
    Metrics.counter(NAMESPACE, "rejected").inc()
    Metrics.counter(NAMESPACE, f"rejected.{reason_code(r)}").inc()
    return r


class AnswerQuestions(beam.PTransform):
    """Raw records -> QAOutputs(answers, rejected); the core of both pipelines.

    Args:
        settings: QA and batching settings.
        handler: the RunInference model handler (``make_handler(settings)`` by default; tests pass
            one that fails or sleeps).
        unique_ids: reject every record but one of an id seen more than once (batch jobs; needs a
            bounded input). False answers every record (streaming: each message is a request).
    """

    def __init__(self, settings: QASettings, handler: Any = None, *, unique_ids: bool = True,
                 model_metadata: Optional[pvalue.PCollection] = None):
        super().__init__()
        self._settings = settings
        self._handler = handler
        self._unique_ids = unique_ids
        self._model_metadata = model_metadata

    def expand(self, raw: pvalue.PCollection) -> QAOutputs:
        from apache_beam.ml.inference.base import RunInference

        s = self._settings
        parsed = raw | "Parse" >> beam.ParDo(_Parse(s.limits)).with_outputs(REJECTED, main="examples")
        rejected = [parsed[REJECTED]]
        examples = parsed.examples
        if self._unique_ids:
            deduped = examples | "RejectDuplicateIds" >> RejectDuplicateIds()
            examples = deduped.unique
            rejected.append(deduped.rejected)

        questions = (
            examples
            | "BatchForWindows" >> beam.BatchElements(min_batch_size=1, max_batch_size=s.feature_batch)
            | "Windows" >> beam.ParDo(_MakeQuestions(s)).with_outputs(REJECTED, main="questions")
        )
        rejected.append(questions[REJECTED])

        handler = self._handler if self._handler is not None else make_handler(s)
        inference = RunInference(handler, model_metadata_pcoll=self._model_metadata).with_exception_handling(
            timeout=s.inference_timeout_secs)
        predictions, dlq = questions.questions | "RunInference" >> inference
        outcomes = predictions | "Outcomes" >> beam.FlatMap(_outcome, s).with_outputs(REJECTED, main="answers")
        rejected.append(outcomes[REJECTED])
        rejected.append(dlq.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch))

        answers = outcomes.answers | "CountAnswered" >> beam.Map(_count_answer)
        all_rejected = tuple(rejected) | "AllRejected" >> beam.Flatten() | "CountRejected" >> beam.Map(_count_rejection)
        return QAOutputs(answers, all_rejected)


# --------------------------------------------------------------------------------------------
# sinks (the rows of pipelines.records, as JSON text or BigQuery rows)


def answer_json(pair: Tuple[QAExample, Answer], top_k: int = 1) -> str:
    """An answer of ``QAOutputs.answers`` as one JSON line (:func:`~pipelines.records.answer_row`)."""
    return json.dumps(answer_row(pair[1], top_k), ensure_ascii=False)


def rejection_json(rejection: Rejection) -> str:
    """A dead letter as one JSON line (:func:`~pipelines.records.rejection_row`)."""
    return json.dumps(rejection_row(rejection), ensure_ascii=False)


def _bigquery_sink(table: str, schema: Dict[str, Any], streaming: bool) -> beam.PTransform:
    """WriteToBigQuery creating the table if needed and appending; streaming jobs use streaming inserts."""
    method = {"method": beam.io.WriteToBigQuery.Method.STREAMING_INSERTS} if streaming else {}
    return beam.io.WriteToBigQuery(
        table, schema=schema, **method,
        create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND)


def write_answers_to_bigquery(answers: pvalue.PCollection, table: str, *, streaming: bool = False,
                              top_k: int = 1) -> Any:
    """``QAOutputs.answers`` -> rows of :data:`~pipelines.records.ANSWER_BQ_SCHEMA` in ``table``."""
    return (
        answers
        | "AnswerRows" >> beam.Map(lambda pair, k: answer_row(pair[1], k), top_k)
        | "WriteAnswersBQ" >> _bigquery_sink(table, ANSWER_BQ_SCHEMA, streaming)
    )


def write_rejections_to_bigquery(rejected: pvalue.PCollection, table: str, *, streaming: bool = False) -> Any:
    """``QAOutputs.rejected`` -> rows of :data:`~pipelines.records.REJECTED_BQ_SCHEMA` in ``table``."""
    return (
        rejected
        | "RejectedRows" >> beam.Map(rejection_row)
        | "WriteRejectedBQ" >> _bigquery_sink(table, REJECTED_BQ_SCHEMA, streaming)
    )


# --------------------------------------------------------------------------------------------
# progress of local runs


class _ProgressCounts:
    """Questions read / answered / rejected in this process, for the progress line of local runs
    (Beam's own metrics of a local run are only readable once it has finished). Workers of a
    remote runner count too, but nobody reads them there: Dataflow shows the Beam counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.read = self.answered = self.rejected = 0

    def add(self, read: int = 0, answered: int = 0, rejected: int = 0) -> None:
        with self._lock:
            self.read += read
            self.answered += answered
            self.rejected += rejected

    def snapshot(self) -> Tuple[int, int, int]:
        with self._lock:
            return self.read, self.answered, self.rejected

    def reset(self) -> None:
        with self._lock:
            self.read = self.answered = self.rejected = 0


_PROGRESS = _ProgressCounts()


def progress_line(read: int, answered: int, rejected: int, seconds: float) -> str:
    rate = answered / max(seconds, 1e-9)
    return (f"progress: read {read}, answered {answered}, rejected {rejected}; "
            f"{rate:.1f} questions/s over {seconds:.0f} s")


class ProgressReporter:
    """A thread printing :func:`progress_line` every ``every`` seconds while a local pipeline
    runs in this process (``with ProgressReporter(30): p.run()``); a last line when it stops."""

    def __init__(self, every: float, stream: Optional[TextIO] = None):
        self._every = every
        self._stream = stream
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0
        self.lines: List[str] = []

    def _emit(self) -> None:
        line = progress_line(*_PROGRESS.snapshot(), time.perf_counter() - self._t0)
        self.lines.append(line)
        print(line, file=self._stream or sys.stderr, flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._emit()

    def __enter__(self) -> ProgressReporter:
        _PROGRESS.reset()
        self._t0 = time.perf_counter()
        if self._every > 0:
            self._thread = threading.Thread(target=self._loop, name="qa-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._emit()
