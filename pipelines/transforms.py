"""Beam transforms shared by the batch and streaming pipelines and the notebook: a question travels
as one element with all its windows, and every record leaves as exactly one answer or one Rejection."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import random
import re
import sys
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipelines.launch_checks import local_model_dir
from pipelines.options import QASettings
from pipelines.outputs import has_glob
from pipelines.records import (
    ANSWER_BQ_SCHEMA,
    REJECTED_BQ_SCHEMA,
    RecordLimits,
    answer_row,
    feature_rejection,
    parse_record,
    raw_text,
    reason_code,
    reject,
    rejection_row,
    split_squad_document,
)
from trt_handler.answer_batch import ModelCallError
from trt_handler.qa.answers import AnswerConfig, QuestionLogits, answers_from_logits
from trt_handler.qa.reading import foreign_encoding
from trt_handler.qa.types import Answer, QAExample, QuestionWindows, Rejection

NAMESPACE = "trt_qa"  # Beam metrics namespace of every counter below
REJECTED = "rejected"


class _PickleCoder(beam.coders.Coder):
    """Pickle, but a size estimate that pickles nothing. Beam estimates the size of sampled elements
    for its metrics, and of EVERY item of a sampled list: each BatchElements batch is sampled, so
    with the default coder each question would be pickled once more just to be measured."""

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Any:
        return pickle.loads(encoded)

    def _create_impl(self) -> Any:
        from apache_beam.coders.coder_impl import CallbackCoderImpl

        return CallbackCoderImpl(self.encode, self.decode, size_estimator=self.size)

    def size(self, value: Any) -> int:
        raise NotImplementedError

    def is_deterministic(self) -> bool:
        return False


def _example_size(ex: QAExample) -> int:
    return len(ex.id) + len(ex.question) + len(ex.context) + sum(map(len, ex.answers)) + 64


class QAExampleCoder(_PickleCoder):
    def size(self, value: QAExample) -> int:
        return _example_size(value)

    def to_type_hint(self) -> Any:
        return QAExample


class QuestionWindowsCoder(_PickleCoder):
    def to_type_hint(self) -> Any:
        return QuestionWindows

    def size(self, value: QuestionWindows) -> int:
        # a window token: ids, type ids and two offsets (int32), two masks (bool)
        return _example_size(value.example) + len(value.raw) + sum(18 * w.length + 64 for w in value.windows)


beam.coders.registry.register_coder(QAExample, QAExampleCoder)
beam.coders.registry.register_coder(QuestionWindows, QuestionWindowsCoder)
Keyed = Tuple[Tuple[int, int], str, QAExample]  # (key, raw, example): RejectDuplicateIds' records


def input_format(path: str, requested: str = "auto") -> str:
    """``jsonl`` or ``squad``: by flag, else by name (``.json``, maybe compressed, is SQuAD; nothing is opened)."""
    if requested in ("jsonl", "squad"):
        return requested
    if requested != "auto":
        raise ValueError(f"input format must be auto, jsonl or squad, got {requested!r}")
    return "squad" if re.sub(r"(\.(gz|bz2|deflate|zst))+$", "", path.lower()).endswith(".json") else "jsonl"


def input_files(path: str) -> List[str]:
    """The files ``--input PATH`` reads (local or remote). A path that names an existing file is that file,
    whatever its name holds (``*``, ``?``, ``[``, spaces); any other path holding ``*``, ``?`` or ``[`` is a
    glob (Beam's: ``*`` within a folder, ``**`` across folders, ``[abc]`` one of) and reads every file it
    matches. ValueError (one line) for a folder, a path that names nothing, a glob that matches nothing."""
    from apache_beam.io.filesystems import FileSystems

    if os.path.isdir(path):  # a remote path is no local folder
        raise ValueError(f"--input {path} is a folder; pass a file or a glob such as {path.rstrip('/')}/*.jsonl")
    try:
        if FileSystems.exists(path):
            return [path]
        if not has_glob(path):
            raise ValueError(f"--input {path} does not exist (no file of that name; a glob needs *, ? or [...])")
        matched = sorted(m.path for m in FileSystems.match([path])[0].metadata_list)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - Beam raises its own BeamIOError types
        raise ValueError(f"--input {path} cannot be listed: {' '.join(str(exc).split())[:300]}") from None
    if not matched:
        raise ValueError(f"--input {path} matches no file; check the glob (or the path, if a file was meant)")
    return matched


def _read_lines(path: str, block: int = 1 << 20) -> Iterator[Any]:
    """The lines of a JSONL file as bytes (without their ``\\n`` / ``\\r\\n``; decompressed by extension),
    read by its exact name; when its first bytes show compressed data or UTF-16 text, one
    ``invalid_encoding`` Rejection in their stead."""
    from apache_beam.io.filesystems import FileSystems

    _count("files_read")
    with FileSystems.open(path) as f:
        data = f.read(block)
        found = foreign_encoding(data[:4096])
        if found is not None:
            yield reject("invalid_encoding", f"the file {path} is not UTF-8 JSON text: it is {found}; none of its "
                         "lines was read", raw_text(data[:200]))
            return
        pending: List[bytes] = []  # the blocks of a line not yet ended (kept apart: a long line costs no copies)
        while data:
            *ended, rest = data.split(b"\n")
            if ended:
                ended[0] = b"".join([*pending, ended[0]])
                pending = []
                yield from (line.removesuffix(b"\r") for line in ended)
            pending.append(rest)
            data = f.read(block)
    last = b"".join(pending)
    if last:
        yield last.removesuffix(b"\r")


def _read_document(path: str) -> Iterator[Any]:
    """The questions of one SQuAD JSON file (read whole; decompressed by extension) as JSONL records."""
    from apache_beam.io.filesystems import FileSystems

    _count("files_read")
    with FileSystems.open(path) as f:
        data = f.read()
    yield from split_squad_document(data, path)


class ReadRecords(beam.PTransform):
    """Raw records of the input files: JSONL lines as bytes, or one JSON string per question of a SQuAD
    JSON document (read whole by one worker). ``path``: as :func:`input_files` takes it, or the list of
    files it gave; each file's format by ``fmt``, else by its own name (a folder may mix JSONL and SQuAD
    JSON). A file that cannot be read as text (a gzip file without .gz, UTF-16) is one Rejection, and so
    is a SQuAD document whose structure is wrong. Counts ``files_read``."""

    def __init__(self, path: Union[str, Sequence[str]], fmt: str = "auto"):
        super().__init__()
        self.files = input_files(path) if isinstance(path, str) else list(path)
        self._formats = {f: input_format(f, fmt) for f in self.files}

    def expand(self, pbegin: pvalue.PBegin) -> pvalue.PCollection:
        jsonl = [f for f in self.files if self._formats[f] == "jsonl"]
        squad = [f for f in self.files if self._formats[f] == "squad"]
        parts = []
        if jsonl:  # bytes, not str: a line that is not UTF-8 becomes a dead letter instead of a crash
            parts.append(pbegin | "JsonlFiles" >> beam.Create(jsonl) | "ReadLines" >> beam.FlatMap(_read_lines))
        if squad:
            parts.append(pbegin | "SquadFiles" >> beam.Create(squad) | "ReadDocuments" >> beam.FlatMap(_read_document))
        return tuple(parts) | "AllRecords" >> beam.Flatten()

    @property
    def one_reader(self) -> bool:
        """Whether records come from few readers and must be spread over the workers (pass it as
        ``AnswerQuestions(spread=...)``): always, since each file is read whole by one worker."""
        return True


def _parse(raw: Any, limits: RecordLimits) -> Any:
    """raw -> (raw text, QAExample), or its Rejection on ``rejected`` (a whole-document one comes from reading)."""
    _count("records_read")
    result = raw if isinstance(raw, Rejection) else parse_record(raw, limits)
    return pvalue.TaggedOutput(REJECTED, result) if isinstance(result, Rejection) else (raw_text(raw), result)


def _with_key(pair: Tuple[str, QAExample]) -> Keyed:
    """(raw, example) -> (key, raw, example); key: (63 bits of the raw text's BLAKE2b, 63 random bits
    that only tell byte-identical records apart)."""
    digest = hashlib.blake2b(pair[0].encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1, random.getrandbits(63)), pair[0], pair[1]


Seen = Tuple[int, int, int, int]  # records of an id, their least hash, records with that hash, least nonce


def _count_and_least(values: Iterable[Seen]) -> Seen:
    """The Seen of an id from the Seen of its records (or of partial results)."""
    count, least, copies, nonce = 0, -1, 0, -1
    for c, h, k, n in values:
        count += c
        if least < 0 or h < least:
            least, copies, nonce = h, k, n
        elif h == least:
            copies, nonce = copies + k, min(nonce, n)
    return count, least, copies, nonce


def _keep_least(keyed: Keyed, duplicated: Dict[str, Seen]) -> Any:
    """(raw, example), unless its id is repeated and it is not the record kept: the one whose raw text
    hashes least (and of byte-identical copies of it, the least nonce). Then a duplicate_id rejection."""
    (digest, nonce), raw, example = keyed
    seen = duplicated.get(example.id)
    if seen is None or (digest == seen[1] and (seen[2] == 1 or nonce == seen[3])):
        return raw, example
    return pvalue.TaggedOutput(REJECTED, reject(
        "duplicate_id", f"id {example.id!r} appears {seen[0]} times in the input; one of those records is "
        "kept (the one whose raw text hashes least)", raw, stage="dedupe", example_id=example.id))


class RejectDuplicateIds(beam.PTransform):
    """(raw, QAExample) -> (the same, one record per id; Rejections of the other records of an id).

    Only ids and keys move: a CombinePerKey finds each repeated id's count and least raw-text hash, and
    that small dict (a side input) routes every record where it is; no record is grouped. The record
    kept of a repeated id is the one whose raw text hashes least, whatever the order of the input or
    the runner; only byte-identical copies of it are told apart by a random nonce (the runner must
    keep a step's output, not recompute it, for both readers to see the same nonce: Dataflow and the
    DirectRunner do). ``spread``: Reshuffle the records over the workers (input read by one worker).
    Batch only (a stream has no end)."""

    def __init__(self, spread: bool = False):
        super().__init__()
        self._spread = spread

    def expand(self, parsed: pvalue.PCollection) -> Tuple[pvalue.PCollection, pvalue.PCollection]:
        keyed = parsed | "Key" >> beam.Map(_with_key).with_output_types(Keyed)
        duplicated = (
            keyed
            | "Ids" >> beam.Map(lambda k: (k[2].id, (1, k[0][0], 1, k[0][1])))
            | "CountIds" >> beam.CombinePerKey(_count_and_least)
            | "Duplicated" >> beam.Filter(lambda id_seen: id_seen[1][0] > 1)
        )
        if self._spread:  # the records wait for the id count anyway: spread them on the way
            keyed = keyed | "Spread" >> beam.Reshuffle()
        routed = keyed | "KeepOne" >> beam.Map(_keep_least, beam.pvalue.AsDict(duplicated)).with_output_types(
            Tuple[str, QAExample]).with_outputs(REJECTED, main="kept")
        return routed.kept, routed[REJECTED]


class _MakeQuestions(beam.DoFn):
    """Batches of (raw, QAExample) -> QuestionWindows on the main output, Rejection (feature error) on
    ``rejected``; one batched tokenizer call per batch."""

    def __init__(self, settings: QASettings):
        self._settings = settings
        self._maker: Any = None

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
            _counter("windows").inc(len(windows))
            yield QuestionWindows(ex, tuple(windows), raw)


def make_handler(settings: QASettings) -> Any:
    """The RunInference model handler for ``settings.backend``; settings left None are not passed, so
    each handler applies its own defaults (an engine's profiles come from its sidecar)."""
    from trt_handler.backends import handlers

    given = {"buckets": settings.buckets, "max_model_batch": settings.max_batch,
             "max_batch_windows": settings.batch_windows, "max_tokens": settings.max_tokens,
             "pad_to": settings.pad_to, "max_batch_duration_secs": settings.max_batch_duration_secs}
    kwargs: Dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    # None: the handler applies each model's saved threshold (models can be swapped), else 0
    kwargs["null_threshold"] = settings.null_threshold
    kwargs["inference_server"] = settings.server_options()
    if settings.backend == "onnx":
        return handlers.OnnxRuntimeQAHandler(settings.model_dir, intra_op_threads=settings.onnx_threads, **kwargs)
    if settings.backend == "torch":
        return handlers.TorchQAHandler(settings.model_dir, device=settings.torch_device, dtype=settings.torch_dtype,
                                       gpu_count=settings.gpu_count, **kwargs)
    if settings.engine_cache_dir:  # where to build an engine from the bundle's ONNX if the given one can't run
        kwargs.update(onnx_path=settings.model_dir, cache_dir=settings.engine_cache_dir)
    return handlers.TensorRTQAHandler(settings.engine, gpu_count=settings.gpu_count, **kwargs)


class _Answer(beam.DoFn):
    """A batch of RunInference's PredictionResults -> (QAExample, ServedAnswer) on the main output, or a
    Rejection on ``rejected`` (a failed model call holding one of its windows, or the question's own
    extraction error); one ``answers_from_logits`` call for the whole batch."""

    def __init__(self, config: AnswerConfig):
        self._config = config

    def process(self, batch: List[Any]) -> Iterator[Any]:
        served = [p for p in batch if isinstance(p.inference, QuestionLogits)]
        answers = iter(answers_from_logits([(p.example.example, p.example.windows, p.inference) for p in served],
                                           self._config))
        for prediction in batch:
            question: QuestionWindows = prediction.example
            outcome = next(answers) if isinstance(prediction.inference, QuestionLogits) else prediction.inference
            if isinstance(outcome, Answer):
                _count("answered")
                yield question.example, outcome
            elif isinstance(outcome, ModelCallError):  # a model call holding one of its windows failed (server)
                yield pvalue.TaggedOutput(REJECTED, reject(
                    "inference_failed", str(outcome), question.raw, stage="inference", example_id=question.example.id))
            else:
                yield pvalue.TaggedOutput(REJECTED, reject(
                    "answer_error", f"answer extraction failed: {type(outcome).__name__}: {outcome}", question.raw,
                    stage="answer", example_id=question.example.id))


class ExtractAnswers(beam.PTransform):
    """RunInference's PredictionResults (the QA handlers': a question's logits and its model's provenance)
    -> (answers, rejected): the answer step, right after RunInference and fused with it (no
    serialization in between); batched so that the numpy work runs once for many questions."""

    def __init__(self, config: AnswerConfig, batch_size: int = 256):
        super().__init__()
        self._config = config
        self._batch_size = batch_size

    def expand(self, predictions: pvalue.PCollection) -> Any:
        return (predictions
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
                | "Answer" >> beam.ParDo(_Answer(self._config)).with_outputs(REJECTED, main="answers"))


def _failed_batch(element: Tuple[List[QuestionWindows], Tuple[Any, Any, Any]]) -> Iterator[Rejection]:
    """A batch from RunInference's dead-letter output -> one Rejection per question in it."""
    batch, (exc_type, exc, _traceback) = element
    timed_out = isinstance(exc_type, type) and issubclass(exc_type, TimeoutError) or "TimeoutError" in str(exc_type)
    code = "inference_timeout" if timed_out else "inference_failed"
    for question in batch:
        yield reject(code, f"the model call for a batch of {len(batch)} questions holding this one failed: {exc}",
                     question.raw, stage="inference", example_id=question.example.id)


class QAOutputs(NamedTuple):
    answers: pvalue.PCollection  # (QAExample, Answer)
    rejected: pvalue.PCollection  # Rejection


def _count_rejection(r: Rejection) -> Rejection:
    _count("rejected")
    _count(f"rejected.{reason_code(r)}")
    return r


class AnswerQuestions(beam.PTransform):
    """Raw records -> QAOutputs(answers, rejected). ``unique_ids``: dead-letter all but one record of
    a repeated id (bounded input only); ``spread``: Reshuffle the parsed records over the workers (an
    input one worker reads, :attr:`ReadRecords.one_reader`); ``model_metadata``: RunInference's model
    side input (swaps)."""

    def __init__(self, settings: QASettings, handler: Any = None, *, unique_ids: bool = True,
                 spread: bool = False, model_metadata: Optional[pvalue.PCollection] = None):
        super().__init__()
        self._settings = settings
        self._handler = handler
        self._unique_ids = unique_ids
        self._spread = spread
        self._model_metadata = model_metadata

    def expand(self, raw: pvalue.PCollection) -> QAOutputs:
        from apache_beam.ml.inference.base import RunInference

        s = self._settings
        # Per-question steps take their settings bound (functools.partial), not as Beam extra
        # arguments: a DoFn with extra arguments runs on Beam's slower per-window invoker.
        parse = beam.Map(functools.partial(_parse, limits=s.limits)).with_output_types(Tuple[str, QAExample])
        parsed = raw | "Parse" >> parse.with_outputs(REJECTED, main="examples")
        rejected = [parsed[REJECTED]]
        examples = parsed.examples
        if self._unique_ids:
            examples, duplicates = examples | "RejectDuplicateIds" >> RejectDuplicateIds(spread=self._spread)
            rejected.append(duplicates)
        elif self._spread:
            examples = examples | "Spread" >> beam.Reshuffle()

        questions = (
            examples
            | "BatchForWindows" >> beam.BatchElements(min_batch_size=1, max_batch_size=s.feature_batch)
            | "Windows" >> beam.ParDo(_MakeQuestions(s)).with_output_types(QuestionWindows).with_outputs(
                REJECTED, main="questions")
        )
        rejected.append(questions[REJECTED])

        handler = self._handler if self._handler is not None else make_handler(s)
        inference = RunInference(handler, model_metadata_pcoll=self._model_metadata).with_exception_handling(
            timeout=s.inference_timeout_secs)
        predictions, dlq = questions.questions | "RunInference" >> inference
        outcomes = predictions | "ExtractAnswers" >> ExtractAnswers(s.answer_config())
        rejected.append(outcomes[REJECTED])
        rejected.append(dlq.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch))

        all_rejected = tuple(rejected) | "AllRejected" >> beam.Flatten() | "CountRejected" >> beam.Map(_count_rejection)
        return QAOutputs(outcomes.answers, all_rejected)


def answer_json(pair: Tuple[QAExample, Answer], top_k: int = 1) -> str:
    """An answer of ``QAOutputs.answers`` as one JSON line (:func:`~pipelines.records.answer_row`)."""
    return json.dumps(answer_row(pair[1], top_k), ensure_ascii=False)


def rejection_json(rejection: Rejection) -> str:
    """A dead letter as one JSON line (:func:`~pipelines.records.rejection_row`)."""
    return json.dumps(rejection_row(rejection), ensure_ascii=False)


def write_to_bigquery(out: QAOutputs, answers_table: Optional[str], rejected_table: Optional[str], *,
                      top_k: int = 1, streaming: bool = False) -> None:
    """Answers and dead letters to their BigQuery tables, where given (created if needed, appended to;
    streaming jobs use streaming inserts)."""
    sink: Dict[str, Any] = {"create_disposition": beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                            "write_disposition": beam.io.BigQueryDisposition.WRITE_APPEND}
    if streaming:
        sink["method"] = beam.io.WriteToBigQuery.Method.STREAMING_INSERTS
    if answers_table:
        _ = (out.answers
             | "AnswerRows" >> beam.Map(lambda pair: answer_row(pair[1], top_k))
             | "WriteAnswersBQ" >> beam.io.WriteToBigQuery(answers_table, schema=ANSWER_BQ_SCHEMA, **sink))
    if rejected_table:
        _ = (out.rejected
             | "RejectedRows" >> beam.Map(rejection_row)
             | "WriteRejectedBQ" >> beam.io.WriteToBigQuery(rejected_table, schema=REJECTED_BQ_SCHEMA, **sink))


# This process's counts for the progress line of local runs, whose Beam metrics are readable only at the end.
_PROGRESS: Dict[str, int] = {}
_PROGRESS_LOCK = threading.Lock()


_counter = functools.cache(functools.partial(Metrics.counter, NAMESPACE))  # one Beam counter per name


def _count(name: str) -> None:
    _counter(name).inc()
    with _PROGRESS_LOCK:
        _PROGRESS[name] = _PROGRESS.get(name, 0) + 1


@contextlib.contextmanager
def report_progress(every: float) -> Iterator[None]:
    """While the block runs (a local pipeline in this process), print a progress line on stderr every
    ``every`` seconds, and a last one when it ends; 0 prints nothing."""
    if every <= 0:
        yield
        return
    with _PROGRESS_LOCK:
        _PROGRESS.clear()
    t0 = time.perf_counter()
    stop = threading.Event()

    def emit() -> None:
        with _PROGRESS_LOCK:
            read, answered, rejected = (_PROGRESS.get(k, 0) for k in ("records_read", "answered", "rejected"))
        seconds = time.perf_counter() - t0
        print(f"progress: read {read}, answered {answered}, rejected {rejected}; "
              f"{answered / max(seconds, 1e-9):.1f} questions/s over {seconds:.0f} s", file=sys.stderr, flush=True)

    def loop() -> None:
        while not stop.wait(every):
            emit()
        emit()  # the last line, when the block ends

    thread = threading.Thread(target=loop, name="qa-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
