"""Raw input records -> ``QAExample`` or ``Rejection``, and answers/rejections -> output rows (no Beam).

A rejection reason is ``"<code>: <sentence>"`` (codes: :data:`REASON_CODES`). No input makes these raise:
an unforeseen failure is a ``parse_error``, and a Rejection's texts are valid UTF-8 (lone surrogates
become ``\\udXXX`` escapes), so writing a dead letter cannot fail either.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from trt_handler.qa.reading import (
    RECORD_FIELDS,
    DataFormatError,
    DuplicateKeyError,
    RepeatedKeys,
    TooLongNumber,
    example_from_record,
    foreign_encoding,
    load_json,
    lone_surrogate,
)
from trt_handler.qa.types import Answer, QAExample, Rejection

# Why a record was rejected; the first word of every Rejection.reason.
REASON_CODES: Tuple[str, ...] = (
    "invalid_encoding",  # bytes that are not UTF-8 (the reason names gzip, UTF-16, ... where the bytes show it)
    "empty_record",  # blank line / empty message
    "invalid_json",  # not parseable as JSON
    "duplicate_key",  # a JSON object holding one key twice (readers would keep the last value only)
    "not_an_object",  # JSON, but not an object ({...})
    "invalid_squad_document",  # a SQuAD JSON file whose structure is wrong
    "missing_field",  # id, question or context absent (or null)
    "wrong_type",  # a field of the wrong JSON type
    "empty_field",  # id, question or context empty or whitespace only
    "too_long",  # id, question or context above its configured limit, or the whole record (before parsing)
    "number_too_long",  # an integer literal longer than Python reads (4300 digits) in a field used
    "invalid_text",  # a lone UTF-16 surrogate ("\\ud800") in id, question, context or answers: not UTF-8
    "bad_answers",  # gold answers not a list of strings / {"text": ...}
    "bad_is_impossible",  # is_impossible not a boolean
    "duplicate_id",  # a second record with an id already seen (batch)
    "feature_error",  # the tokenizer could not make windows (WindowMaker)
    "too_many_windows",  # the context needs more windows than FeatureConfig.max_windows_per_question
    "inference_failed",  # the model handler raised for a batch holding this question
    "inference_timeout",  # the model call for a batch holding this question ran past the timeout
    "answer_error",  # answer extraction raised
    "parse_error",  # the parser itself failed on this record (a bug: the reason names the exception)
)

# A Rejection for a whole document, or a record too large to parse, keeps this much of the raw text.
RAW_KEEP_CHARS = 10_000

# Every dead letter keeps at most this much of its raw text (with the whole text's length and
# sha256), its reason and id at most these: as a JSON line (6 bytes a character at worst, a
# control character's \u00XX) a dead letter stays around 400 KB at most, under DEAD_LETTER_MAX_BYTES,
# far below Pub/Sub's 10 MB message and BigQuery's row limits whatever the input, and ten of them fit
# the 4 MB a gRPC client receives by default in one pull.
DEAD_LETTER_RAW_CHARS = 64_000
DEAD_LETTER_REASON_CHARS = 2_000
DEAD_LETTER_ID_CHARS = 1_000
DEAD_LETTER_MAX_BYTES = 1 << 20


def reject(code: str, sentence: str, raw: str, *, stage: str = "parse", example_id: Optional[str] = None,
           whole_length: Optional[int] = None) -> Rejection:
    """A Rejection whose reason starts with a known code; unknown codes are a programming error. Its raw
    text is bounded (:func:`bounded_raw`); reason and id too. ``whole_length``: ``raw`` is already a
    prefix of a record this long (not read whole, not hashed: raw_sha256 is then the prefix's)."""
    if code not in REASON_CODES:
        raise ValueError(f"unknown rejection code {code!r}; add it to REASON_CODES with a comment saying when it applies")
    kept, chars, sha = bounded_raw(raw)
    chars = chars if whole_length is None else max(chars, whole_length)
    return Rejection(reason=_clip(utf8_safe(f"{code}: {sentence}"), DEAD_LETTER_REASON_CHARS), raw=kept,
                     stage=stage, example_id=None if example_id is None else _clip(utf8_safe(example_id),
                                                                                 DEAD_LETTER_ID_CHARS),
                     raw_chars=chars, raw_sha256=sha)


def bounded_raw(raw: str, keep: int = DEAD_LETTER_RAW_CHARS) -> Tuple[str, int, str]:
    """(the UTF-8-safe raw text's first ``keep`` characters, its length in characters, the sha256 hex of
    its UTF-8 bytes): what a dead letter carries of its record, so it stays small and can still be
    matched to the record it came from."""
    text = utf8_safe(raw)
    return text[:keep], len(text), hashlib.sha256(text.encode("utf-8")).hexdigest()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]} ... [{len(text) - limit:,} more characters]"


def utf8_safe(text: str) -> str:
    """``text``, each lone surrogate (UTF-8 writers, Beam coders and BigQuery refuse them) a ``\\udXXX`` escape."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def feature_rejection(error: Exception, raw: str, example_id: Optional[str] = None) -> Rejection:
    """The Rejection (stage "features") of a question WindowMaker refused: a known ``error.code`` or feature_error."""
    code = getattr(error, "code", None)
    return reject(code if code in REASON_CODES else "feature_error", str(error), raw, stage="features",
                  example_id=example_id)


def reason_code(rejection: Rejection) -> str:
    """The code part of a rejection's reason (what summaries group by)."""
    return rejection.reason.split(":", 1)[0].strip()


@dataclass(frozen=True)
class RecordLimits:
    """Sizes above which a record is rejected instead of tokenized; ``None`` disables a limit.

    ``max_record_chars`` bounds the raw record (characters of a str, bytes of bytes) before parsing;
    ``"auto"``: 12 per field character (the longest JSON escape of one, ``\\uXXXX\\uXXXX``) plus 1 MiB,
    so no record within the field limits is refused; off when any field limit is.
    """

    max_context_chars: Optional[int] = 100_000
    max_question_chars: Optional[int] = 4_000
    max_id_chars: Optional[int] = 512
    max_record_chars: Union[int, None, str] = "auto"
    record_chars_limit: Optional[int] = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        for name in ("max_context_chars", "max_question_chars", "max_id_chars"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        value = self.max_record_chars
        if value == "auto":
            fields = (self.max_context_chars, self.max_question_chars, self.max_id_chars)
            limit = None if None in fields else 12 * sum(fields) + (1 << 20)  # type: ignore[arg-type]
        elif value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            limit = value
        else:
            raise ValueError(f"max_record_chars must be a positive int, None or 'auto', got {value!r}")
        object.__setattr__(self, "record_chars_limit", limit)


RawRecord = Union[str, bytes]


def _decode(raw: RawRecord, what: str = "the record") -> Union[str, Rejection]:
    if isinstance(raw, bytes):
        found = foreign_encoding(raw)
        if found is not None:
            return reject("invalid_encoding", f"{what} is not UTF-8 JSON text: it is {found}",
                          raw_text(raw[:RAW_KEEP_CHARS]))
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8", errors="backslashreplace")
            return reject("invalid_encoding", f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})", text)
    # A byte-order mark at the start of a file ends up on its first line; JSON refuses it.
    return raw.removeprefix("\ufeff")


def _load(text: str, what: str, keep: Optional[int] = None, marked: Optional[List[RepeatedKeys]] = None) -> Any:
    """The JSON value of ``text`` (:func:`load_json`: repeated keys marked in ``marked``, else refused),
    or an ``invalid_json`` / ``duplicate_key`` Rejection (raw: ``text[:keep]``)."""
    try:
        return load_json(text, marked)
    except DuplicateKeyError as exc:
        return reject("duplicate_key", f"{what}: {exc}", text[:keep])
    except (json.JSONDecodeError, RecursionError) as exc:
        why = str(exc) if isinstance(exc, json.JSONDecodeError) else "nested too deeply to read"
        return reject("invalid_json", f"{what} is not valid JSON ({why})", text[:keep])


def raw_text(raw: RawRecord) -> str:
    """The record as UTF-8-safe text for a dead-letter row or a later rejection; never raises."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8-sig", errors="backslashreplace")
    return utf8_safe(str(raw))


_TEXT_LIMITS = {"id": "max_id_chars", "question": "max_question_chars", "context": "max_context_chars"}


def _text_rejection(texts: Sequence[Tuple[str, str]], raw: str, limits: RecordLimits) -> Optional[Rejection]:
    """The first (name, value) text field empty or above its limit, as a Rejection (with the id unless at fault)."""
    eid: Optional[str] = None
    for name, value in texts:
        limit = getattr(limits, _TEXT_LIMITS[name])
        if not value.strip():
            return reject("empty_field", f"{name!r} is empty or whitespace only", raw, example_id=eid)
        if limit is not None and len(value) > limit:
            return reject("too_long", f"{name!r} has {len(value)} characters, more than the limit {limit}", raw,
                          example_id=eid)
        if name == "id":
            eid = value
    return None


# The reason code of a DataFormatError that carries no code of its own, by the field at fault.
_FIELD_CODES = {"answers": "bad_answers", "is_impossible": "bad_is_impossible", None: "not_an_object"}


def parse_record(raw: RawRecord, limits: RecordLimits = RecordLimits()) -> Union[QAExample, Rejection]:
    """One JSON object ``{id, question, context[, answers, is_impossible]}`` -> QAExample or Rejection.

    Fields follow :func:`trt_handler.qa.reading.example_from_record` and ``limits`` (a record over
    ``limits.record_chars_limit`` is not parsed); the first problem in field order is the reason.
    """
    if not isinstance(raw, (str, bytes)):
        raise TypeError(f"a raw record is str or bytes, got {type(raw).__name__}")
    limit = limits.record_chars_limit
    if limit is not None and len(raw) > limit:
        unit = "bytes" if isinstance(raw, bytes) else "characters"
        return reject("too_long", f"the record is {len(raw):,} {unit} long, more than the limit {limit:,} "
                      "(RecordLimits.max_record_chars); it was not parsed, and raw keeps its first "
                      f"{RAW_KEEP_CHARS:,} characters", raw_text(raw[:RAW_KEEP_CHARS]), whole_length=len(raw))
    try:
        return _parse_record(raw, limits)
    except Exception as exc:  # noqa: BLE001 - no record may fail the job; this one is a bug to report
        return reject("parse_error", f"the parser failed on this record ({type(exc).__name__}: {exc}); "
                      "this is a bug in pipelines.records: please report it with this raw record",
                      raw_text(raw))


def _parse_record(raw: RawRecord, limits: RecordLimits) -> Union[QAExample, Rejection]:
    text = _decode(raw)
    if isinstance(text, Rejection):
        return text
    if not text.strip():
        return reject("empty_record", "the record is empty or whitespace only", text)
    obj = _load(text, "the record")
    if isinstance(obj, Rejection):
        return obj
    if not isinstance(obj, dict):
        return reject("not_an_object", f"the record is a JSON {type(obj).__name__}, not an object", text)
    try:
        example = example_from_record(obj)
    except DataFormatError as err:
        # The text fields checked before the faulty one are well-formed: their own problems come first.
        before = RECORD_FIELDS[: RECORD_FIELDS.index(err.field)] if err.field in RECORD_FIELDS else ()
        texts = [(name, str(obj[name])) for name in before if name in _TEXT_LIMITS]
        eid = texts[0][1] if texts else None
        code = err.code or _FIELD_CODES.get(err.field) or ("missing_field" if err.missing else "wrong_type")
        return _text_rejection(texts, text, limits) or reject(code, str(err), text, example_id=eid)
    texts = [("id", example.id), ("question", example.question), ("context", example.context)]
    return _text_rejection(texts, text, limits) or example


def split_squad_document(raw: RawRecord, source: str = "") -> Iterator[Union[str, Rejection]]:
    """Yield one self-contained JSONL record (replayable when rejected) per question of a SQuAD document.

    A structure error above the question level is one Rejection; a question with an integer too long
    for Python is ``number_too_long`` here; other faults are left to ``parse_record``.
    """
    where = f" ({source})" if source else ""
    try:
        yield from _split_squad_document(raw, where)
    except Exception as exc:  # noqa: BLE001 - a bug must not fail the job; questions yielded so far stand
        yield reject("parse_error", f"splitting the SQuAD document{where} failed ({type(exc).__name__}: {exc}); "
                     "this is a bug in pipelines.records: please report it with this document",
                     raw_text(raw[:RAW_KEEP_CHARS]))


def _split_squad_document(raw: RawRecord, where: str) -> Iterator[Union[str, Rejection]]:
    text = _decode(raw, f"the SQuAD document{where}")
    marked: List[RepeatedKeys] = []
    doc = text if isinstance(text, Rejection) else _load(text, f"the SQuAD document{where}", RAW_KEEP_CHARS, marked)
    if isinstance(doc, Rejection):
        yield doc
        return
    # Records are searched for a TooLongNumber only when the document has a run of that many digits,
    # and for a repeated key only when the document has one.
    limit = sys.get_int_max_str_digits()
    search = (limit > 0 and re.search(f"[0-9]{{{limit + 1}}}", text) is not None) or bool(marked)
    if isinstance(doc, RepeatedKeys):
        yield _repeated_rejection(doc, f"the SQuAD document{where}", text[:RAW_KEEP_CHARS])
        return
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        yield reject("invalid_squad_document", f"the SQuAD document{where} has no 'data' list", text[:RAW_KEEP_CHARS])
        return
    for a, article in enumerate(data):
        if isinstance(article, RepeatedKeys):
            yield _repeated_rejection(article, f"article {a}{where}")
            continue
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            yield reject("invalid_squad_document", f"article {a}{where} has no 'paragraphs' list", _dump(article))
            continue
        title = article.get("title")
        for p, paragraph in enumerate(paragraphs):
            if isinstance(paragraph, RepeatedKeys):
                yield _repeated_rejection(paragraph, f"paragraph {p} of article {a}{where}")
                continue
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                yield reject("invalid_squad_document", f"paragraph {p} of article {a}{where} has no 'qas' list",
                             _dump(paragraph))
                continue
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    yield _dump(qa)  # parse_record says what it is
                    continue
                yield _question_record(qa, paragraph, title, f"question {q} of paragraph {p} of article {a}{where}",
                                       search)


_QA_KEYS = ("id", "question", "answers", "is_impossible")


def _question_record(qa: Dict[str, Any], paragraph: Dict[str, Any], title: Any, place: str,
                     search: bool) -> Union[str, Rejection]:
    """One question of a SQuAD document as a self-contained JSONL record, or its Rejection (a
    repeated key or an integer too long for Python in it; searched for only when ``search``)."""
    context = {"context": paragraph.get("context"), **({} if title is None else {"title": title})}
    record: Dict[str, Any] = {k: qa[k] for k in _QA_KEYS if k in qa} | context
    flaw = _find_flaw(record, qa) if search else None
    if flaw is None:
        return _dump(record)
    eid = qa.get("id") if isinstance(qa.get("id"), str) else None
    key, found = flaw
    if isinstance(found, RepeatedKeys):  # the dead letter shows the record with its pairs as written
        written = RepeatedKeys([(k, v) for k, v in found.pairs if k in _QA_KEYS] + list(context.items())) \
            if found is qa else record
        return _repeated_rejection(found, place, _as_written(written), eid)
    return reject("number_too_long", f"{place} has an integer of {found.digits} digits in {key!r}, more than "
                  "Python reads; write it as a string or fix the producer", _dump(record), example_id=eid)


def _repeated_rejection(obj: RepeatedKeys, place: str, raw: Optional[str] = None,
                        example_id: Optional[str] = None) -> Rejection:
    """The ``duplicate_key`` Rejection of a part of a SQuAD document (raw: the part with every value as written)."""
    keys = ", ".join(repr(k) for k in obj.repeated)
    return reject("duplicate_key", f"{place} holds the key {keys} more than once; JSON readers keep only the last "
                  "value, so the questions or fields of the others would be lost without a word: nothing of it "
                  "was answered. Write each key once (merge the values) or fix the producer",
                  raw if raw is not None else _as_written(obj), example_id=example_id)


def _as_written(value: Any) -> str:
    """``value`` as JSON text with each RepeatedKeys in it written with all its pairs, repeats included."""
    if isinstance(value, dict):
        pairs = value.pairs if isinstance(value, RepeatedKeys) else value.items()
        return "{" + ", ".join(f"{_dump(k)}: {_as_written(v)}" for k, v in pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_as_written(v) for v in value) + "]"
    return _dump(value)


def _find_flaw(record: Dict[str, Any], qa: Dict[str, Any]) -> Optional[Tuple[str, Any]]:
    """(top-level key, the RepeatedKeys or TooLongNumber) of the first one in a record (or its question
    object ``qa`` itself, key ""), else None."""
    if isinstance(qa, RepeatedKeys):
        return "", qa
    for key, value in record.items():
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, (TooLongNumber, RepeatedKeys)):
                return key, item
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None


def _dump(obj: Any) -> str:
    """``obj`` as JSON that UTF-8 can encode (ASCII only if it holds a lone surrogate; a TooLongNumber as its repr)."""
    text = json.dumps(obj, ensure_ascii=False, default=repr)
    return text if lone_surrogate(text) < 0 else json.dumps(obj, ensure_ascii=True, default=repr)


def _finite(x: float) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def _bq_fields(*fields: Tuple[Any, ...]) -> List[Dict[str, Any]]:
    """BigQuery schema fields (WriteToBigQuery's dict form) from (name, type, mode[, subfields])."""
    return [{"name": name, "type": kind, "mode": mode, **({"fields": _bq_fields(*sub[0])} if sub else {})}
            for name, kind, mode, *sub in fields]


# Where an answer came from (trt_handler.qa.answers.Provenance); null when the handler records none.
PROVENANCE_FIELDS = (
    ("model_id", "STRING", "NULLABLE"),
    ("backend", "STRING", "NULLABLE"),
    ("model_sha256", "STRING", "NULLABLE"),
    ("precision", "STRING", "NULLABLE"),
    ("null_threshold", "FLOAT", "NULLABLE"),
    ("threshold_source", "STRING", "NULLABLE"),
)

ANSWER_BQ_SCHEMA = {"fields": _bq_fields(
    ("id", "STRING", "REQUIRED"),
    ("answer", "STRING", "REQUIRED"),
    ("is_no_answer", "BOOLEAN", "REQUIRED"),
    ("score", "FLOAT", "NULLABLE"),
    ("no_answer_score", "FLOAT", "NULLABLE"),
    ("probability", "FLOAT", "NULLABLE"),
    ("start_char", "INTEGER", "REQUIRED"),
    ("end_char", "INTEGER", "REQUIRED"),
    ("window_index", "INTEGER", "REQUIRED"),
    ("best_span", "STRING", "NULLABLE"),
    ("top_k", "RECORD", "REPEATED", (  # the n-best entries of top_k_entries
        ("answer", "STRING", "REQUIRED"),
        ("score", "FLOAT", "NULLABLE"),
        ("probability", "FLOAT", "NULLABLE"),
        ("start_char", "INTEGER", "REQUIRED"),
        ("end_char", "INTEGER", "REQUIRED"),
        ("window_index", "INTEGER", "REQUIRED"),
    )),
    *PROVENANCE_FIELDS,
)}

REJECTED_BQ_SCHEMA = {"fields": _bq_fields(
    ("reason_code", "STRING", "REQUIRED"),
    ("reason", "STRING", "REQUIRED"),
    ("stage", "STRING", "REQUIRED"),
    ("id", "STRING", "NULLABLE"),
    ("raw", "STRING", "REQUIRED"),  # the first DEAD_LETTER_RAW_CHARS characters of the raw record
    ("raw_chars", "INTEGER", "REQUIRED"),  # the whole raw text's length in characters (too_long: the record's)
    ("raw_sha256", "STRING", "REQUIRED"),  # sha256 hex of the whole raw text's UTF-8 bytes (too_long: of raw)
    ("raw_truncated", "BOOLEAN", "REQUIRED"),  # raw is a prefix (raw_chars > len(raw))
)}


def answer_row(answer: Answer, top_k: int = 1) -> Dict[str, Any]:
    """One output line / BigQuery row (:data:`ANSWER_BQ_SCHEMA`): the answer, the ``top_k`` first of its n-best list
    (SQuAD v2's "" candidate, start/end -1, where it ranks), provenance (null if none); non-finite scores null."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    prov = getattr(answer, "provenance", None)
    top = [
        {
            "answer": str(c["text"]),
            "score": _finite(c["score"]),
            "probability": _finite(c["probability"]) if "probability" in c else None,
            "start_char": int(c["start_char"]),
            "end_char": int(c["end_char"]),
            "window_index": int(c["window_index"]),
        }
        for c in list(answer.n_best)[:top_k]
    ]
    return {
        "id": answer.id,
        "answer": answer.text,
        "is_no_answer": answer.is_no_answer,
        "score": _finite(answer.score),
        "no_answer_score": _finite(answer.null_score),
        "probability": _finite(answer.probability),
        "start_char": int(answer.start_char),
        "end_char": int(answer.end_char),
        "window_index": int(answer.window_index),
        "best_span": answer.best_span_text,
        "top_k": top,
        **{name: None if prov is None else getattr(prov, name) for name, _, _ in PROVENANCE_FIELDS},
        "null_threshold": None if prov is None else _finite(prov.null_threshold),
    }


def rejection_row(rejection: Rejection) -> Dict[str, Any]:
    """One dead-letter line / BigQuery row (fields of :data:`REJECTED_BQ_SCHEMA`), bounded like
    :func:`reject`'s Rejections even for one made otherwise: as JSON under DEAD_LETTER_MAX_BYTES."""
    if rejection.raw_sha256 is None or rejection.raw_chars is None:  # not made by reject(): bound it here
        raw, chars, sha = bounded_raw(rejection.raw)
    else:
        raw, chars, sha = utf8_safe(rejection.raw[:DEAD_LETTER_RAW_CHARS]), rejection.raw_chars, rejection.raw_sha256
    return {
        "reason_code": _clip(utf8_safe(reason_code(rejection)), 100),
        "reason": _clip(utf8_safe(rejection.reason), DEAD_LETTER_REASON_CHARS),
        "stage": _clip(utf8_safe(rejection.stage), 100),
        "id": None if rejection.example_id is None else _clip(utf8_safe(rejection.example_id), DEAD_LETTER_ID_CHARS),
        "raw": raw,
        "raw_chars": chars,
        "raw_sha256": sha,
        "raw_truncated": chars > len(raw),
    }
