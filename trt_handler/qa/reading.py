"""Reading questions into QAExamples: SQuAD v1.1/v2.0 JSON files and JSONL files.

Files are opened through Beam's ``FileSystems``, so a path may be local or any scheme Beam knows
(gs://, s3://, ...), and ``.gz``/``.bz2`` files are decompressed by extension. A file that does
not have the expected shape raises :class:`DataFormatError` naming the file, the place in it and
what is wrong, rather than a KeyError deep in the pipeline.

SQuAD JSON: ``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", ...}], "is_impossible"?}]}]}]}``. Gold answer texts are kept in file order;
``plausible_answers`` of unanswerable v2 questions are not answers and are ignored.

JSONL: one object a line, ``{"id", "question", "context"}`` plus optional gold ``answers`` (a
list of strings, a list of ``{"text": ...}`` or the Hugging Face datasets form ``{"text": [...]}``)
and ``is_impossible``. Blank lines are skipped.

The rules for one question record (which fields, which types, what ``is_impossible`` means when
absent) live in :func:`example_from_record`, which ``pipelines.records`` shares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trt_handler.qa.types import QAExample

__all__ = ["RECORD_FIELDS", "DataFormatError", "example_from_record", "load_examples", "read_jsonl", "read_squad_json"]

# The fields of a question record, in the order example_from_record checks them.
RECORD_FIELDS: tuple[str, ...] = ("id", "question", "context", "answers", "is_impossible")


class DataFormatError(ValueError):
    """An input file or record that is not valid SQuAD JSON / JSONL; the message says where and why.

    ``field`` names the record field at fault (one of :data:`RECORD_FIELDS`; None for a problem
    above the record, or a record that is not an object) and ``missing`` says whether it is absent
    (or null) rather than malformed.
    """

    def __init__(self, message: str, *, field: str | None = None, missing: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.missing = missing


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _read_text(path: str) -> str:
    """Whole file as text (UTF-8, a BOM allowed), opened through Beam's FileSystems.

    A missing file raises FileNotFoundError; an unknown scheme Beam's ValueError naming the
    extra to install; both already say what to fix.
    """
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(str(path)) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path} is not UTF-8 text ({err}); save it as UTF-8") from err


def _need(obj: Any, key: str, kind: type, where: str) -> Any:
    """obj[key] when obj is a dict holding a ``kind`` there, else a DataFormatError saying so."""
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DataFormatError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataFormatError(f"{where}: field {key!r} should be a {kind.__name__}, "
                              f"got {type(value).__name__}")
    return value


def _text(record: Mapping[str, Any], key: str, where: str) -> str:
    """A required string field of a record; absent and null are both missing."""
    value = record.get(key)
    if value is None:
        raise DataFormatError(_at(where, f"missing field {key!r}"), field=key, missing=True)
    if not isinstance(value, str):
        raise DataFormatError(_at(where, f"field {key!r} should be a str, got {type(value).__name__}"), field=key)
    return value


def _answer_texts(raw: Any, where: str) -> tuple[str, ...]:
    """Gold texts from a list of strings / {"text": ...} objects, or the datasets form {"text": [...]}."""
    if isinstance(raw, dict) and "text" in raw:
        raw = raw["text"]
    if not isinstance(raw, list):
        raise DataFormatError(_at(where, f"'answers' should be a list, got {type(raw).__name__}"), field="answers")
    texts: list[str] = []
    for i, a in enumerate(raw):
        text = a.get("text") if isinstance(a, dict) else a
        if not isinstance(text, str):
            raise DataFormatError(
                _at(where, f"answer {i} should be a string or an object with a 'text' string, got {a!r:.80}"),
                field="answers",
            )
        texts.append(text)
    return tuple(texts)


def example_from_record(record: Mapping[str, Any], context: str | None = None, *, where: str = "") -> QAExample:
    """One QAExample from a question record: a JSONL line's object or a SQuAD ``qas`` entry.

    ``context`` is the paragraph's context for a SQuAD entry; None reads the record's own
    ``context`` field (JSONL). Fields are checked in the order of :data:`RECORD_FIELDS`:

    - ``id``: a string, or a whole number (hand-made files use them), kept as its string;
    - ``question`` and ``context``: strings, kept exactly as given (nothing is stripped);
    - ``answers`` (optional): gold texts as a list of strings or ``{"text": ...}`` objects, or the
      datasets form ``{"text": [...]}``; ``plausible_answers`` are not answers and are ignored;
    - ``is_impossible`` (optional): true or false; when absent, the question is unanswerable iff
      gold answers are given but empty, and unknown (None) when there are no gold answers at all.

    A null optional field counts as absent, a null required one as missing. Other keys are ignored.
    Raises DataFormatError (``where`` prefixes its message) naming the field and what is wrong.
    """
    if not isinstance(record, Mapping):
        raise DataFormatError(_at(where, f"expected a JSON object, got {type(record).__name__}"))
    raw_id = record.get("id")
    eid = str(raw_id) if isinstance(raw_id, int) and not isinstance(raw_id, bool) else _text(record, "id", where)
    question = _text(record, "question", where)
    if context is None:
        context = _text(record, "context", where)
    has_answers = record.get("answers") is not None
    answers = _answer_texts(record["answers"], where) if has_answers else ()
    impossible = record.get("is_impossible")
    if impossible is not None and not isinstance(impossible, bool):
        raise DataFormatError(
            _at(where, f"'is_impossible' should be true or false, got {impossible!r:.40}"), field="is_impossible"
        )
    if impossible is None and has_answers:
        impossible = not answers
    return QAExample(id=eid, question=question, context=context, answers=answers, is_impossible=impossible)


def _parse_squad(doc: Any, path: str) -> list[QAExample]:
    data = _need(doc, "data", list, path)
    out: list[QAExample] = []
    for a, article in enumerate(data):
        for p, para in enumerate(_need(article, "paragraphs", list, f"{path}: data[{a}]")):
            where_p = f"{path}: data[{a}].paragraphs[{p}]"
            context = _need(para, "context", str, where_p)
            for q, qa in enumerate(_need(para, "qas", list, where_p)):
                out.append(example_from_record(qa, context, where=f"{where_p}.qas[{q}]"))
    return out


def _parse_record(line: str, where: str) -> QAExample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
    return example_from_record(record, where=where)


def _parse_jsonl(text: str, path: str) -> list[QAExample]:
    return [_parse_record(line, f"{path} line {n}")
            for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def read_squad_json(path: str) -> list[QAExample]:
    """Questions of a SQuAD v1.1 or v2.0 JSON file, in file order."""
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); "
                              "a file with one question a line is read with read_jsonl") from err
    return _parse_squad(doc, str(path))


def read_jsonl(path: str) -> list[QAExample]:
    """Questions of a JSONL file ({id, question, context[, answers, is_impossible]} a line)."""
    return _parse_jsonl(_read_text(path), str(path))


def load_examples(path: str) -> list[QAExample]:
    """Questions of ``path``, SQuAD JSON or JSONL, told apart by content, not by file name."""
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return _parse_jsonl(text, str(path))  # several lines of JSON (or broken: it says where)
    if isinstance(doc, dict) and "data" in doc:
        return _parse_squad(doc, str(path))
    if isinstance(doc, dict):
        return [_parse_record(text, f"{path} line 1")]  # JSONL of one record
    raise DataFormatError(f"{path}: neither SQuAD JSON (an object with 'data') nor JSONL "
                          f"(one object a line); got a JSON {type(doc).__name__}")
