"""Beam transforms shared by the batch pipeline, the streaming pipeline and the notebook.

One question's trip::

    raw record --parse--> (raw, QAExample) --key--> (key, ...) --windows--> (key, Window) ...
      ... --RunInference(KeyedModelHandler)--> (key, PredictionResult) --regroup by key--> Answer

Every record leaves as exactly one answer or one :class:`~trt_handler.qa.types.Rejection`:

- parse / dedupe / feature rejections leave at their step;
- once a question has windows, its outcome is decided only by the regroup step, which sees the
  question (``meta``: raw, example, number of windows), each window's logits and every inference
  failure of a batch holding one of its windows. Batch regroups with CoGroupByKey; streaming with a
  stateful DoFn that answers as soon as the last window arrives and gives up after a bounded wait.

QA logic (validation, windows, answers) lives in ``trt_handler``; this module only composes it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BooleanCoder, PickleCoder
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Timestamp

from pipelines.options import QASettings
from trt_handler.qa.types import Answer, QAExample, Rejection
from pipelines.records import (
    ANSWER_BQ_SCHEMA,
    REJECTED_BQ_SCHEMA,
    answer_row,
    assemble_answer,
    duplicate_rejections,
    parse_record,
    raw_text,
    reason_code,
    reject,
    rejection_row,
    split_squad_document,
)

LOGGER = logging.getLogger(__name__)

NAMESPACE = "trt_qa"  # Beam metrics namespace of every counter below
REJECTED = "rejected"
META = "meta"

Keyed = Tuple[str, Any]


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
        )


# --------------------------------------------------------------------------------------------
# parse, dedupe, key


class _Parse(beam.DoFn):
    """raw -> (raw text, QAExample) on the main output, Rejection on ``rejected``."""

    def __init__(self, limits: Any):
        self._limits = limits
        self._read = Metrics.counter(NAMESPACE, "records_read")

    def process(self, raw: Any) -> Iterator[Any]:
        self._read.inc()
        if isinstance(raw, Rejection):  # a whole-document problem found while reading
            yield pvalue.TaggedOutput(REJECTED, raw)
            return
        result = parse_record(raw, self._limits)
        if isinstance(result, Rejection):
            yield pvalue.TaggedOutput(REJECTED, result)
        else:
            yield raw_text(raw), result


def _dedupe(element: Tuple[str, Iterable[Tuple[str, QAExample]]]) -> Iterator[Any]:
    """One (id, (raw, example)) per id; every further record with that id is rejected."""
    eid, pairs = element
    pairs = list(pairs)
    if len(pairs) == 1:
        yield eid, pairs[0]
        return
    keep, rejections = duplicate_rejections(eid, [raw for raw, _ in pairs])
    for r in rejections:
        yield pvalue.TaggedOutput(REJECTED, r)
    yield eid, next(p for p in pairs if p[0] == keep)


def _request_key(pair: Tuple[str, QAExample]) -> Keyed:
    """Streaming key: the question id plus a random suffix, so two messages that reuse an id are two
    requests with one answer each (Pub/Sub redeliveries are removed by the source, not here)."""
    return f"{pair[1].id}#{uuid.uuid4().hex[:16]}", pair


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
    if not FileSystems.get_scheme(model_dir) and not os.path.isdir(model_dir):
        return model_dir  # a hub id: load_tokenizer downloads it
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


class _MakeWindows(beam.DoFn):
    """Batches of (key, (raw, example)) -> (key, Window) main, (key, meta) on ``meta``,
    Rejection (feature error) on ``rejected``. One batched tokenizer call per batch."""

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

    def process(self, batch: List[Tuple[str, Tuple[str, QAExample]]]) -> Iterator[Any]:
        results = self._windows_many([ex for _, (_, ex) in batch])
        for (key, (raw, ex)), windows in zip(batch, results):
            if isinstance(windows, Exception):
                yield pvalue.TaggedOutput(REJECTED, reject(
                    "feature_error", f"{type(windows).__name__}: {windows}", raw, stage="features", example_id=ex.id))
                continue
            self._windows.inc(len(windows))
            yield pvalue.TaggedOutput(META, (key, (raw, ex, len(windows))))
            for w in windows:
                yield key, w


# --------------------------------------------------------------------------------------------
# inference


def make_handler(settings: QASettings) -> Any:
    """The RunInference model handler for ``settings.backend`` (unkeyed; wrap in KeyedModelHandler).

    Settings left None are not passed, so each handler applies its own defaults (an engine's
    batch range and buckets come from its profiles). With ``engine_cache_dir`` the TensorRT
    handler may build an engine from the bundle's ONNX when the given one cannot run on the worker.
    """
    from trt_handler.backends import handlers

    given = {
        "buckets": settings.buckets,
        "min_batch_size": settings.min_batch,
        "max_batch_size": settings.max_batch,
        "max_batch_duration_secs": settings.max_batch_duration_secs,
    }
    kwargs: Dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if settings.backend == "onnx":
        return handlers.OnnxRuntimeQAHandler(settings.model_dir, intra_op_threads=settings.onnx_threads, **kwargs)
    if settings.engine_cache_dir:
        kwargs.update(onnx_path=settings.model_dir, cache_dir=settings.engine_cache_dir)
    return handlers.TensorRTQAHandler(settings.engine, **kwargs)


def _failed_keys(element: Tuple[List[Keyed], Tuple[Any, str, Any]]) -> Iterator[Keyed]:
    """A failed batch from RunInference's dead-letter output -> (key, error) once per question."""
    batch, (_exc_type, exc_repr, _traceback) = element
    for key in dict.fromkeys(k for k, _ in batch):
        yield key, str(exc_repr)


def _result(element: Tuple[str, Any]) -> Keyed:
    key, prediction = element
    return key, (prediction.example, prediction.inference)


# --------------------------------------------------------------------------------------------
# regroup


def _assemble_grouped(element: Tuple[str, Dict[str, List[Any]]], answer_config: Any) -> Iterator[Any]:
    """CoGroupByKey output of one question -> (example, Answer) or Rejection."""
    _, grouped = element
    metas = list(grouped["meta"])
    if not metas:  # cannot happen: windows are emitted together with their meta
        Metrics.counter(NAMESPACE, "orphan_results").inc()
        return
    raw, example, num_windows = metas[0]
    out = assemble_answer(example, raw, num_windows, list(grouped["results"]), list(grouped["failed"]), answer_config)
    yield pvalue.TaggedOutput(REJECTED, out) if isinstance(out, Rejection) else (example, out)


class RegroupBatch(beam.PTransform):
    """Join meta, window results and failures per key (CoGroupByKey), then answer."""

    def __init__(self, answer_config: Any):
        super().__init__()
        self._answer_config = answer_config

    def expand(self, tagged: Dict[str, pvalue.PCollection]) -> pvalue.DoOutputsTuple:
        return (
            tagged
            | "JoinWindows" >> beam.CoGroupByKey()
            | "Answer" >> beam.FlatMap(_assemble_grouped, self._answer_config).with_outputs(REJECTED, main="answers")
        )


class RegroupWithTimeout(beam.DoFn):
    """Streaming regroup: buffer a question's elements by key, answer when all windows are in.

    Elements are ``(key, (tag, value))`` with tag ``meta`` (raw, example, num_windows), ``result``
    (Window, WindowLogits) or ``failed`` (error text). A processing-time timer set by the first
    element gives up after ``timeout_secs``: the question is rejected as ``incomplete_windows``.
    After the outcome the key keeps a "done" mark for one more timeout, so a straggling window
    is dropped (counted as ``late_results_dropped``) instead of starting a second outcome.

    ``clock`` returns the processing time in seconds; tests pass the TestStream's clock.
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())
    DONE = ReadModifyWriteStateSpec("done", BooleanCoder())
    GIVE_UP = TimerSpec("give_up", TimeDomain.REAL_TIME)

    def __init__(self, answer_config: Any, timeout_secs: float, clock: Callable[[], float] = time.time):
        if timeout_secs <= 0:
            raise ValueError(f"the regroup timeout must be positive seconds, got {timeout_secs}")
        self._answer_config = answer_config
        self._timeout = float(timeout_secs)
        self._clock = clock

    def _deadline(self) -> Timestamp:
        return Timestamp(self._clock() + self._timeout)

    def process(
        self,
        element: Tuple[str, Tuple[str, Any]],
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        done: Any = beam.DoFn.StateParam(DONE),
        timer: Any = beam.DoFn.TimerParam(GIVE_UP),
    ) -> Iterator[Any]:
        _, item = element
        if done.read():
            Metrics.counter(NAMESPACE, "late_results_dropped").inc()
            return
        items = list(buffer.read())
        if not items:
            timer.set(self._deadline())
        buffer.add(item)
        items.append(item)
        metas = [v for t, v in items if t == "meta"]
        if not metas:
            return
        raw, example, num_windows = metas[0]
        failures = [v for t, v in items if t == "failed"]
        results = [v for t, v in items if t == "result"]
        if not failures and len({w.window_index for w, _ in results}) < num_windows:
            return
        out = assemble_answer(example, raw, num_windows, results, failures, self._answer_config)
        buffer.clear()
        done.write(True)
        timer.set(self._deadline())  # now only clears the done mark
        yield pvalue.TaggedOutput(REJECTED, out) if isinstance(out, Rejection) else (example, out)

    @on_timer(GIVE_UP)
    def give_up(
        self,
        fired_at: Timestamp = beam.DoFn.TimestampParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        done: Any = beam.DoFn.StateParam(DONE),
        timer: Any = beam.DoFn.TimerParam(GIVE_UP),
    ) -> Iterator[Any]:
        if done.read():
            done.clear()
            return
        items = list(buffer.read())
        buffer.clear()
        done.write(True)
        timer.set(fired_at + self._timeout)  # the done mark lasts one more timeout
        metas = [v for t, v in items if t == "meta"]
        results = [v for t, v in items if t == "result"]
        got = len({w.window_index for w, _ in results})
        if metas:
            raw, example, num_windows = metas[0]
            yield pvalue.TaggedOutput(REJECTED, reject(
                "incomplete_windows", f"{got} of {num_windows} windows came back within {self._timeout:g} s",
                raw, stage="regroup", example_id=example.id))
        elif results:  # windows without their question record: report what is known
            w = results[0][0]
            yield pvalue.TaggedOutput(REJECTED, reject(
                "incomplete_windows", f"{got} of {w.num_windows} windows came back within {self._timeout:g} s "
                "but the question record did not", "", stage="regroup", example_id=w.example_id))


def regroup_with_timeout(
    answer_config: Any, timeout_secs: float, clock: Callable[[], float] = time.time
) -> beam.PTransform:
    """:class:`RegroupWithTimeout` as the transform to apply to tagged ``(key, (tag, value))``
    elements: outputs ``answers`` (main) and ``REJECTED``."""
    return (
        beam.ParDo(RegroupWithTimeout(answer_config, timeout_secs, clock))
        .with_input_types(Tuple[str, Tuple[str, Any]])
        .with_outputs(REJECTED, main="answers")
    )


def _tag(tag: str) -> Callable[[Keyed], Keyed]:
    def fn(kv: Keyed) -> Keyed:
        return kv[0], (tag, kv[1])

    return fn


# --------------------------------------------------------------------------------------------
# the whole trip


class QAOutputs(NamedTuple):
    answers: pvalue.PCollection  # (QAExample, Answer)
    rejected: pvalue.PCollection  # Rejection


def _count_answer(pair: Tuple[QAExample, Answer]) -> Tuple[QAExample, Answer]:
    Metrics.counter(NAMESPACE, "answered").inc()
    return pair


def _count_rejection(r: Rejection) -> Rejection:
    Metrics.counter(NAMESPACE, "rejected").inc()
    Metrics.counter(NAMESPACE, f"rejected.{reason_code(r)}").inc()
    return r


class AnswerQuestions(beam.PTransform):
    """Raw records -> QAOutputs(answers, rejected); the core of both pipelines.

    Args:
        settings: QA and batching settings.
        handler: the unkeyed RunInference model handler (``make_handler(settings)`` by default;
            tests pass one that fails or drops windows).
        streaming: regroup with :class:`RegroupWithTimeout` (no dedupe: see ``_request_key``)
            instead of dedupe + CoGroupByKey.
        regroup_timeout_secs / clock: the streaming bounded wait.
    """

    def __init__(
        self,
        settings: QASettings,
        handler: Any = None,
        *,
        streaming: bool = False,
        regroup_timeout_secs: float = 300.0,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__()
        self._settings = settings
        self._handler = handler
        self._streaming = streaming
        self._timeout = regroup_timeout_secs
        self._clock = clock

    def expand(self, raw: pvalue.PCollection) -> QAOutputs:
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        s = self._settings
        answer_config = s.answer_config()
        parsed = raw | "Parse" >> beam.ParDo(_Parse(s.limits)).with_outputs(REJECTED, main="examples")
        rejected = [parsed[REJECTED]]
        if self._streaming:
            keyed = parsed.examples | "Key" >> beam.Map(_request_key)
        else:
            deduped = (
                parsed.examples
                | "KeyById" >> beam.Map(lambda pair: (pair[1].id, pair))
                | "GroupById" >> beam.GroupByKey()  # also spreads a one-file SQuAD read over workers
                | "Dedupe" >> beam.FlatMap(_dedupe).with_outputs(REJECTED, main="keyed")
            )
            keyed = deduped.keyed
            rejected.append(deduped[REJECTED])

        windows = (
            keyed
            | "BatchQuestions" >> beam.BatchElements(min_batch_size=1, max_batch_size=s.feature_batch)
            | "Windows" >> beam.ParDo(_MakeWindows(s)).with_outputs(META, REJECTED, main="windows")
        )
        rejected.append(windows[REJECTED])

        handler = self._handler if self._handler is not None else make_handler(s)
        predictions, dlq = (
            windows.windows | "RunInference" >> RunInference(KeyedModelHandler(handler)).with_exception_handling()
        )
        results = predictions | "Logits" >> beam.Map(_result)
        failed = dlq.failed_inferences | "FailedKeys" >> beam.FlatMap(_failed_keys)

        if self._streaming:
            regrouped = (
                (
                    windows[META] | "TagMeta" >> beam.Map(_tag("meta")),
                    results | "TagResult" >> beam.Map(_tag("result")),
                    failed | "TagFailed" >> beam.Map(_tag("failed")),
                )
                | "FlattenForRegroup" >> beam.Flatten()
                | "Regroup" >> regroup_with_timeout(answer_config, self._timeout, self._clock)
            )
        else:
            regrouped = {"meta": windows[META], "results": results, "failed": failed} | "Regroup" >> RegroupBatch(
                answer_config
            )
        rejected.append(regrouped[REJECTED])

        answers = regrouped.answers | "CountAnswered" >> beam.Map(_count_answer)
        all_rejected = tuple(rejected) | "AllRejected" >> beam.Flatten() | "CountRejected" >> beam.Map(_count_rejection)
        return QAOutputs(answers, all_rejected)


# --------------------------------------------------------------------------------------------
# sinks (the rows of pipelines.records, as JSON text or BigQuery rows)


def answer_json(pair: Tuple[QAExample, Answer]) -> str:
    """An answer of ``QAOutputs.answers`` as one JSON line (:func:`~pipelines.records.answer_row`)."""
    return json.dumps(answer_row(pair[1]), ensure_ascii=False)


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


def write_answers_to_bigquery(answers: pvalue.PCollection, table: str, *, streaming: bool = False) -> Any:
    """``QAOutputs.answers`` -> rows of :data:`~pipelines.records.ANSWER_BQ_SCHEMA` in ``table``."""
    return (
        answers
        | "AnswerRows" >> beam.Map(lambda pair: answer_row(pair[1]))
        | "WriteAnswersBQ" >> _bigquery_sink(table, ANSWER_BQ_SCHEMA, streaming)
    )


def write_rejections_to_bigquery(rejected: pvalue.PCollection, table: str, *, streaming: bool = False) -> Any:
    """``QAOutputs.rejected`` -> rows of :data:`~pipelines.records.REJECTED_BQ_SCHEMA` in ``table``."""
    return (
        rejected
        | "RejectedRows" >> beam.Map(rejection_row)
        | "WriteRejectedBQ" >> _bigquery_sink(table, REJECTED_BQ_SCHEMA, streaming)
    )
