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
"""

from __future__ import annotations

import json
from typing import Any

from trt_handler.qa_types import QAExample

__all__ = ["DataFormatError", "load_examples", "read_jsonl", "read_squad_json"]


class DataFormatError(ValueError):
    """An input file that is not valid SQuAD JSON / JSONL; the message says where and why."""


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


def _answer_texts(raw: Any, where: str) -> tuple[str, ...]:
    """Gold texts from a list of {"text"} / strings, or the datasets form {"text": [...]}."""
    if isinstance(raw, dict):
        raw = _need(raw, "text", list, where)
    if not isinstance(raw, list):
        raise DataFormatError(f"{where}: 'answers' should be a list, got {type(raw).__name__}")
    return tuple(a if isinstance(a, str) else _need(a, "text", str, f"{where}, answer {i}")
                 for i, a in enumerate(raw))


def _need_id(record: Any, where: str) -> str:
    """The record's id as a string; whole numbers are accepted, as hand-made files use them."""
    if isinstance(record, dict) and isinstance(record.get("id"), int) and not isinstance(record["id"], bool):
        return str(record["id"])
    return _need(record, "id", str, where)


def _impossible(record: dict, answers: tuple[str, ...], has_answers: bool, where: str) -> bool | None:
    """is_impossible from the record; without the flag, unanswerable iff gold answers are given
    but empty, unknown (None) when the record has no gold answers at all."""
    if "is_impossible" in record:
        flag = record["is_impossible"]
        if not isinstance(flag, bool):
            raise DataFormatError(f"{where}: 'is_impossible' should be true or false, got {flag!r}")
        return flag
    return (not answers) if has_answers else None


def _parse_squad(doc: Any, path: str) -> list[QAExample]:
    data = _need(doc, "data", list, path)
    out: list[QAExample] = []
    for a, article in enumerate(data):
        for p, para in enumerate(_need(article, "paragraphs", list, f"{path}: data[{a}]")):
            where_p = f"{path}: data[{a}].paragraphs[{p}]"
            context = _need(para, "context", str, where_p)
            for q, qa in enumerate(_need(para, "qas", list, where_p)):
                out.append(_example(qa, context, f"{where_p}.qas[{q}]"))
    return out


def _example(record: Any, context: str, where: str) -> QAExample:
    """One QAExample from a SQuAD ``qas`` entry or a JSONL record (context given separately)."""
    has_answers = isinstance(record, dict) and "answers" in record
    answers = _answer_texts(record["answers"], where) if has_answers else ()
    return QAExample(
        id=_need_id(record, where),
        question=_need(record, "question", str, where),
        context=context,
        answers=answers,
        is_impossible=_impossible(record, answers, has_answers, where),
    )


def _parse_record(line: str, where: str) -> QAExample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
    return _example(record, _need(record, "context", str, where), where)


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
