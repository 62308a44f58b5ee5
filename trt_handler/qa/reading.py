"""Reading questions into QAExamples: SQuAD v1.1/v2.0 JSON files and JSONL files (one record a line,
blank lines skipped), through Beam's ``FileSystems`` (local, gs://, ...; ``.gz``/``.bz2`` by extension).
A file of the wrong shape raises :class:`DataFormatError` naming the file, the place and what is wrong;
the rules for one record are :func:`example_from_record`'s (shared with ``pipelines.records``).
"""

from __future__ import annotations

import json
import re
import reprlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trt_handler.qa.types import QAExample

__all__ = [
    "RECORD_FIELDS",
    "DataFormatError",
    "DuplicateKeyError",
    "RepeatedKeys",
    "TooLongNumber",
    "example_from_record",
    "foreign_encoding",
    "load_examples",
    "load_json",
    "lone_surrogate",
    "read_jsonl",
]

# The fields of a question record, in the order example_from_record checks them.
RECORD_FIELDS: tuple[str, ...] = ("id", "question", "context", "answers", "is_impossible")


class DataFormatError(ValueError):
    """An input file or record that is not valid SQuAD JSON / JSONL; the message says where and why.

    ``field``: the record field at fault (None above the record level); ``missing``: absent or null,
    not malformed; ``code``: ``number_too_long`` / ``invalid_text`` / ``duplicate_key``, else None."""

    def __init__(self, message: str, *, field: str | None = None, missing: bool = False,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.missing = missing
        self.code = code


@dataclass(frozen=True, slots=True)
class TooLongNumber:
    """Stands for a JSON integer literal of more than ``sys.get_int_max_str_digits()`` digits, which
    ``int()`` refuses: the record holding it is rejected, its neighbours are not."""

    digits: int

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def _parse_int(literal: str) -> int | TooLongNumber:
    try:
        return int(literal)
    except ValueError:  # only the digit limit: json hands over valid integer literals only
        return TooLongNumber(len(literal.lstrip("-")))


class DuplicateKeyError(DataFormatError):
    """A JSON object that holds one key twice (``{"qas": [...], "qas": [...]}``): JSON readers keep the
    last value, so the first would be lost without a word. ``keys``: the repeated keys."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        shown = ", ".join(_short(k) for k in keys[:3]) + (" ..." if len(keys) > 3 else "")
        super().__init__(f"a JSON object holds the key{'s' if len(keys) > 1 else ''} {shown} more than once; JSON "
                         "readers keep only the last value, so the others would be lost without a word: write each "
                         "key once (merge the values) or fix the producer", code="duplicate_key")
        self.keys = keys


class RepeatedKeys(dict):  # type: ignore[type-arg]
    """What :func:`load_json` (``repeated="mark"``) makes of an object with a repeated key: the dict JSON
    readers would make (last value wins), plus every ``pairs`` as written and the ``repeated`` keys."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs
        self.repeated = _repeated(pairs)


def _repeated(pairs: list[tuple[str, Any]]) -> tuple[str, ...]:
    """The keys of ``pairs`` that appear more than once, in order of their first repeat."""
    seen: set[str] = set()
    out: dict[str, None] = {}
    for key, _ in pairs:
        if key in seen:
            out[key] = None
        seen.add(key)
    return tuple(out)


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise DuplicateKeyError(_repeated(pairs))
    return obj


def load_json(text: str, marked: list[RepeatedKeys] | None = None) -> Any:
    """``json.loads`` that never raises for a long integer (it becomes a :class:`TooLongNumber`); raises
    json.JSONDecodeError and RecursionError (nesting too deep) as json.loads does. An object holding a
    key twice raises :class:`DuplicateKeyError`; with ``marked`` (a list) it becomes a :class:`RepeatedKeys`
    appended to that list instead (for a caller that rejects only the part of a document holding it)."""
    if marked is None:
        return json.loads(text, parse_int=_parse_int, object_pairs_hook=_refuse_repeats)

    def mark(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        marked.append(RepeatedKeys(pairs))
        return marked[-1]

    return json.loads(text, parse_int=_parse_int, object_pairs_hook=mark)


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int:
    """Index of the first lone UTF-16 surrogate in ``text`` (which UTF-8 cannot encode), or -1."""
    if text.isascii():
        return -1
    m = _SURROGATE.search(text)
    return -1 if m is None else m.start()


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxdict = 4
_SHORT.maxlevel = 2


def _short(value: Any) -> str:
    """A repr of at most ~80 characters that costs nothing for a huge value."""
    return _SHORT.repr(value)[:80]


def _check_value(value: Any, key: str, where: str, what: str = "") -> None:
    """Refuse a too-long integer or a lone surrogate in a field value (``what`` names a part of it)."""
    name = f"{what} of {key!r}" if what else repr(key)
    if isinstance(value, TooLongNumber):
        raise DataFormatError(
            _at(where, f"{name} is an integer of {value.digits} digits, more than the "
                       f"{sys.get_int_max_str_digits()} digits Python reads; write it as a string or fix the producer"),
            field=key, code="number_too_long")
    if isinstance(value, str):
        i = lone_surrogate(value)
        if i >= 0:
            raise DataFormatError(
                _at(where, f"lone surrogate at character {i} of {name} (\\u{ord(value[i]):04x}, half of a "
                           "UTF-16 pair, which UTF-8 cannot store); the producer escaped one half of an "
                           "emoji or other character without the other: fix its encoding and resend"),
                field=key, code="invalid_text")


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


# (leading bytes, what they are, the fix); UTF-32's byte-order marks before UTF-16's, which they start with.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed data (it starts with gzip's magic bytes 1f 8b)", "compressed"),
    (b"BZh", "bzip2-compressed data (it starts with bzip2's magic bytes 'BZh')", "compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (it starts with zstd's magic bytes 28 b5 2f fd)", "compressed"),
    (b"\xff\xfe\x00\x00", "UTF-32 text (little-endian byte-order mark ff fe 00 00)", "text"),
    (b"\x00\x00\xfe\xff", "UTF-32 text (big-endian byte-order mark 00 00 fe ff)", "text"),
    (b"\xff\xfe", "UTF-16 text (little-endian byte-order mark ff fe)", "text"),
    (b"\xfe\xff", "UTF-16 text (big-endian byte-order mark fe ff)", "text"),
)
_FIXES = {
    "compressed": "give the file the extension of its compression (.gz, .bz2, .zst) so it is decompressed as it "
                  "is read, or decompress it",
    "text": "save it as UTF-8 (for example iconv -f UTF-16 -t UTF-8 IN > OUT)",
}


def foreign_encoding(data: bytes) -> str | None:
    """What ``data`` evidently is when it is not UTF-8 JSON: compressed bytes or UTF-16/32 text, said
    with the fix ("gzip-compressed data (...); give the file ..."); None when nothing gives it away.
    UTF-16 without a byte-order mark (a line of it cut from a file) shows as NUL bytes, which UTF-8
    JSON never holds."""
    for magic, what, kind in _SIGNATURES:
        if data.startswith(magic):
            return f"{what}; {_FIXES[kind]}"
    if b"\x00" not in data:
        return None
    head = data[:4096]
    nuls = head.count(0)
    if nuls * 4 >= len(head):  # ASCII in UTF-16: every other byte is NUL
        return f"UTF-16 text ({nuls} NUL bytes in its first {len(head)}, one beside each ASCII character); " \
               f"{_FIXES['text']}"
    return "binary data (it holds NUL bytes, which UTF-8 JSON text never does)"


def _read_text(path: str) -> str:
    """Whole file as text (UTF-8, a BOM allowed); FileNotFoundError, or Beam's ValueError for an
    unknown scheme (naming the extra to install)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(str(path)) as f:
        data = f.read()
    found = foreign_encoding(data)
    if found is not None:
        raise DataFormatError(f"{path} is not UTF-8 text: it is {found}")
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
    _check_value(value, key, where)
    if value is None:
        raise DataFormatError(_at(where, f"missing field {key!r}"), field=key, missing=True)
    if not isinstance(value, str):
        raise DataFormatError(_at(where, f"field {key!r} should be a str, got {type(value).__name__}"), field=key)
    return value


def _answer_texts(raw: Any, where: str) -> tuple[str, ...]:
    """Gold texts from a list of strings / {"text": ...} objects, or the datasets form {"text": [...]}."""
    if isinstance(raw, dict) and "text" in raw:
        raw = raw["text"]
    _check_value(raw, "answers", where)
    if not isinstance(raw, list):
        raise DataFormatError(_at(where, f"'answers' should be a list, got {type(raw).__name__}"), field="answers")
    texts: list[str] = []
    for i, a in enumerate(raw):
        text = a.get("text") if isinstance(a, dict) else a
        _check_value(text, "answers", where, f"answer {i}")
        if not isinstance(text, str):
            raise DataFormatError(
                _at(where, f"answer {i} should be a string or an object with a 'text' string, got {_short(a)}"),
                field="answers",
            )
        texts.append(text)
    return tuple(texts)


def example_from_record(record: Mapping[str, Any], context: str | None = None, *, where: str = "") -> QAExample:
    """One QAExample from a JSONL record or a SQuAD ``qas`` entry (``context``: its paragraph's).

    Checked in :data:`RECORD_FIELDS` order: ``id`` a string or a whole number (kept as its string);
    ``question``, ``context`` strings; optional ``answers`` (:func:`_answer_texts`); optional
    ``is_impossible`` bool, when absent true iff gold answers are given but empty. Null optional fields
    count as absent, null required ones as missing. DataFormatError (``where`` prefixes its message),
    ``code`` ``number_too_long`` for an integer too long for Python, ``invalid_text`` for a lone surrogate.
    """
    if not isinstance(record, Mapping):
        raise DataFormatError(_at(where, f"expected a JSON object, got {type(record).__name__}"))
    raw_id = record.get("id")
    _check_value(raw_id, "id", where)
    eid = str(raw_id) if isinstance(raw_id, int) and not isinstance(raw_id, bool) else _text(record, "id", where)
    question = _text(record, "question", where)
    if context is None:
        context = _text(record, "context", where)
    has_answers = record.get("answers") is not None
    answers = _answer_texts(record["answers"], where) if has_answers else ()
    impossible = record.get("is_impossible")
    _check_value(impossible, "is_impossible", where)
    if impossible is not None and not isinstance(impossible, bool):
        raise DataFormatError(
            _at(where, f"'is_impossible' should be true or false, got {_short(impossible)}"), field="is_impossible"
        )
    if impossible is None and has_answers:
        impossible = not answers
    return QAExample(id=eid, question=question, context=context, answers=answers, is_impossible=impossible)


def _parse_squad(doc: Any, path: str) -> list[QAExample]:
    out: list[QAExample] = []
    for a, article in enumerate(_need(doc, "data", list, path)):
        for p, para in enumerate(_need(article, "paragraphs", list, f"{path}: data[{a}]")):
            where_p = f"{path}: data[{a}].paragraphs[{p}]"
            context = _need(para, "context", str, where_p)
            _check_value(context, "context", where_p)
            for q, qa in enumerate(_need(para, "qas", list, where_p)):
                out.append(example_from_record(qa, context, where=f"{where_p}.qas[{q}]"))
    return out


def _decode(text: str, where: str) -> Any:
    """:func:`load_json`, its failures a DataFormatError saying ``where``."""
    try:
        return load_json(text)
    except DuplicateKeyError as err:
        raise DataFormatError(f"{where}: {err}", code="duplicate_key") from err
    except json.JSONDecodeError as err:
        at = f"line {err.lineno} column {err.colno}" if "\n" in text else f"column {err.colno}"
        raise DataFormatError(f"{where}: not valid JSON ({err.msg} at {at})") from err
    except RecursionError as err:
        raise DataFormatError(f"{where}: JSON nested too deeply to read") from err


def _parse_jsonl(text: str, path: str) -> list[QAExample]:
    lines = ((f"{path} line {n}", line) for n, line in enumerate(text.split("\n"), start=1) if line.strip())
    return [example_from_record(_decode(line, where), where=where) for where, line in lines]


def read_jsonl(path: str) -> list[QAExample]:
    """Questions of a JSONL file ({id, question, context[, answers, is_impossible]} a line)."""
    return _parse_jsonl(_read_text(path), str(path))


def load_examples(path: str) -> list[QAExample]:
    """Questions of ``path``, SQuAD JSON or JSONL, told apart by content, not by file name."""
    text = _read_text(path)
    try:
        doc = load_json(text)
    except (json.JSONDecodeError, RecursionError):
        return _parse_jsonl(text, str(path))  # several lines of JSON (or broken: it says where)
    except DuplicateKeyError as err:
        raise DataFormatError(f"{path}: {err}", code="duplicate_key") from err
    if isinstance(doc, dict) and "data" in doc:
        return _parse_squad(doc, str(path))
    if isinstance(doc, dict):
        return [example_from_record(doc, where=f"{path} line 1")]  # JSONL of one record
    raise DataFormatError(f"{path}: neither SQuAD JSON (an object with 'data') nor JSONL "
                          f"(one object a line); got a JSON {type(doc).__name__}")
