"""pipelines.records: every kind of bad record gets its reason code; good ones parse exactly."""

from __future__ import annotations

import json

import pytest

from pipelines.records import (
    ANSWER_BQ_SCHEMA,
    REASON_CODES,
    REJECTED_BQ_SCHEMA,
    RecordLimits,
    answer_row,
    parse_record,
    reason_code,
    reject,
    rejection_row,
    split_squad_document,
)
from trt_handler.qa.types import Answer, QAExample, Rejection

GOOD = {"id": "q1", "question": "Who?", "context": "Ada wrote it.", "answers": ["Ada"], "is_impossible": False}


def _line(**changes: object) -> str:
    record = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            record.pop(k)
        else:
            record[k] = v
    return json.dumps(record)


_DROP = object()


def test_good_record_parses_exactly() -> None:
    ex = parse_record(_line(title="ignored"))
    assert ex == QAExample("q1", "Who?", "Ada wrote it.", ("Ada",), False)


def test_bytes_bom_int_id_and_answer_forms() -> None:
    raw = ("\ufeff" + _line(id=7, answers=[{"text": "Ada", "answer_start": 0}])).encode()
    ex = parse_record(raw)
    assert isinstance(ex, QAExample) and ex.id == "7" and ex.answers == ("Ada",)
    hf = parse_record(_line(answers={"text": ["Ada", "Ada wrote"], "answer_start": [0, 0]}))
    assert isinstance(hf, QAExample) and hf.answers == ("Ada", "Ada wrote")


def test_is_impossible_follows_squad_data_when_absent() -> None:
    no_gold = parse_record(_line(answers=_DROP, is_impossible=_DROP))
    empty_gold = parse_record(_line(answers=[], is_impossible=_DROP))
    assert isinstance(no_gold, QAExample) and no_gold.is_impossible is None
    assert isinstance(empty_gold, QAExample) and empty_gold.is_impossible is True


def test_whitespace_is_kept_in_question_and_context() -> None:
    ex = parse_record(_line(question="  Who? ", context=" Ada wrote it.\n"))
    assert isinstance(ex, QAExample) and ex.question == "  Who? " and ex.context == " Ada wrote it.\n"


BAD = [
    (b"\xff\xfe{}", "invalid_encoding"),
    ("", "empty_record"),
    ("   \t", "empty_record"),
    ('{"id": "q1", "question": ', "invalid_json"),
    ("{'id': 'q1'}", "invalid_json"),
    ("[1, 2]", "not_an_object"),
    ("null", "not_an_object"),
    ('"just a string"', "not_an_object"),
    (_line(id=_DROP), "missing_field"),
    (_line(question=None), "missing_field"),
    (_line(context=_DROP), "missing_field"),
    (_line(id=["q1"]), "wrong_type"),
    (_line(id=True), "wrong_type"),
    (_line(question=42), "wrong_type"),
    (_line(context={"text": "x"}), "wrong_type"),
    (_line(id=""), "empty_field"),
    (_line(question="   "), "empty_field"),
    (_line(context="\n\t"), "empty_field"),
    (_line(answers="Ada"), "bad_answers"),
    (_line(answers=["Ada", 3]), "bad_answers"),
    (_line(answers=[{"answer_start": 0}]), "bad_answers"),
    (_line(is_impossible="no"), "bad_is_impossible"),
]


@pytest.mark.parametrize("raw, code", BAD)
def test_bad_record_is_rejected_with_its_code(raw: object, code: str) -> None:
    out = parse_record(raw)  # type: ignore[arg-type]
    assert isinstance(out, Rejection), out
    assert reason_code(out) == code
    assert out.reason.startswith(f"{code}: ") and len(out.reason) > len(code) + 5  # a sentence follows
    expected_raw = raw.decode("utf-8", errors="backslashreplace") if isinstance(raw, bytes) else raw
    assert out.raw == expected_raw


def test_limits_reject_oversized_fields_and_can_be_disabled() -> None:
    limits = RecordLimits(max_context_chars=13, max_question_chars=4, max_id_chars=2)
    for field, value in (("context", "x" * 14), ("question", "abcde"), ("id", "abc")):
        out = parse_record(_line(**{field: value}), limits)
        assert isinstance(out, Rejection) and reason_code(out) == "too_long" and repr(field) in out.reason
    at_limit = parse_record(_line(context="x" * 13, question="abcd", id="ab"), limits)
    assert isinstance(at_limit, QAExample)
    unlimited = RecordLimits(max_context_chars=None)
    assert isinstance(parse_record(_line(context="x" * 200_000), unlimited), QAExample)
    with pytest.raises(ValueError, match="max_context_chars"):
        RecordLimits(max_context_chars=0)


def test_reject_refuses_unknown_codes() -> None:
    with pytest.raises(ValueError, match="unknown rejection code"):
        reject("oops", "x", "raw")
    assert set(REASON_CODES) >= {"duplicate_id", "inference_failed", "feature_error", "too_many_windows",
                                 "number_too_long", "invalid_text", "parse_error"}


SQUAD = {
    "version": "v2.0",
    "data": [
        {"title": "T", "paragraphs": [
            {"context": "Ada wrote it.", "qas": [
                {"id": "a", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}], "is_impossible": False},
                {"id": "b", "question": "Why?", "answers": [], "plausible_answers": [], "is_impossible": True},
            ]},
            {"qas": [{"id": "c", "question": "Where?", "answers": []}]},  # no context
            "not a paragraph",
        ]},
        {"title": "no paragraphs"},
    ],
}


def test_split_squad_document_yields_self_contained_records() -> None:
    items = list(split_squad_document(json.dumps(SQUAD).encode(), "dev.json"))
    records = [i for i in items if isinstance(i, str)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    parsed = [parse_record(r) for r in records]
    assert parsed[0] == QAExample("a", "Who?", "Ada wrote it.", ("Ada",), False)
    assert parsed[1] == QAExample("b", "Why?", "Ada wrote it.", (), True)
    assert isinstance(parsed[2], Rejection) and reason_code(parsed[2]) == "missing_field" and "'context'" in parsed[2].reason
    assert json.loads(records[0])["title"] == "T"
    assert sorted(reason_code(r) for r in rejections) == ["invalid_squad_document"] * 2
    assert all("dev.json" in r.reason for r in rejections)


@pytest.mark.parametrize("doc, code", [(b"{not json", "invalid_json"), (b'{"version": 1}', "invalid_squad_document"),
                                       (b"[]", "invalid_squad_document"), (b"\xff", "invalid_encoding")])
def test_split_squad_document_rejects_a_broken_document_once(doc: bytes, code: str) -> None:
    items = list(split_squad_document(doc))
    assert len(items) == 1 and isinstance(items[0], Rejection) and reason_code(items[0]) == code


def _schema_names(schema: dict) -> list:
    return [f["name"] for f in schema["fields"]]


def _check_row_against_schema(row: dict, fields: list) -> None:
    """Every schema field is in the row with a value of its type and mode, and nothing else is;
    REPEATED RECORDs are lists of rows of their subfields (what BigQuery's insert checks)."""
    assert list(row) == [f["name"] for f in fields]
    types = {"STRING": str, "FLOAT": float, "INTEGER": int, "BOOLEAN": bool}
    for f in fields:
        value = row[f["name"]]
        if f["mode"] == "REPEATED":
            assert isinstance(value, list), f["name"]
            for item in value:
                assert f["type"] == "RECORD"
                _check_row_against_schema(item, f["fields"])
            continue
        if value is None:
            assert f["mode"] == "NULLABLE", f"{f['name']} is REQUIRED but null"
            continue
        assert isinstance(value, types[f["type"]]), (f["name"], value)


def _answer_with_n_best(k: int = 3):
    from trt_handler.qa.answers import Provenance, with_provenance

    n_best = [
        {"text": "Ada", "score": 5.0, "probability": 0.6, "start_char": 0, "end_char": 3, "window_index": 0,
         "start_logit": 2.0, "end_logit": 3.0},
        {"text": "", "score": 4.0, "probability": 0.3, "start_char": -1, "end_char": -1, "window_index": 0,
         "start_logit": 2.0, "end_logit": 2.0},
        {"text": "Ada Lovelace", "score": 3.0, "probability": 0.1, "start_char": 0, "end_char": 12,
         "window_index": 1, "start_logit": 2.0, "end_logit": 1.0},
    ][:k]
    a = Answer("q1", "Ada", 5.0, 4.0, 0.6, 0, 3, 0, best_span_text="Ada", n_best=tuple(n_best))
    prov = Provenance(model_id="gs://b/models/v2/model.onnx", backend="onnx", model_sha256="0b1c0420c64e",
                      precision="int8-weight-only", null_threshold=-1.25, threshold_source="model")
    return with_provenance(a, prov)


def test_top_k_and_provenance_rows_match_the_bigquery_schema() -> None:
    a = _answer_with_n_best()
    row = answer_row(a, top_k=2)
    _check_row_against_schema(row, ANSWER_BQ_SCHEMA["fields"])
    json.dumps(row, allow_nan=False)
    assert row["answer"] == "Ada" and [c["answer"] for c in row["top_k"]] == ["Ada", ""]
    assert [c["probability"] for c in row["top_k"]] == [0.6, 0.3] and row["top_k"][1]["start_char"] == -1
    assert (row["model_id"], row["backend"], row["model_sha256"], row["precision"], row["null_threshold"],
            row["threshold_source"]) == ("gs://b/models/v2/model.onnx", "onnx", "0b1c0420c64e",
                                         "int8-weight-only", -1.25, "model")
    assert len(answer_row(a, top_k=10)["top_k"]) == 3  # only what the n-best list holds
    assert answer_row(a)["top_k"] == row["top_k"][:1]  # default 1: the best candidate
    top_k = next(f for f in ANSWER_BQ_SCHEMA["fields"] if f["name"] == "top_k")
    assert (top_k["type"], top_k["mode"]) == ("RECORD", "REPEATED")
    assert [f["name"] for f in top_k["fields"]] == ["answer", "score", "probability", "start_char", "end_char",
                                                     "window_index"]
    with pytest.raises(ValueError, match="top_k"):
        answer_row(a, top_k=0)


def test_bigquery_schema_is_accepted_by_beams_bigquery_sink() -> None:
    """Beam turns the dict schema into a TableSchema (what the sink sends to BigQuery): the
    REPEATED RECORD and its subfields survive."""
    from apache_beam.io.gcp.bigquery_tools import get_dict_table_schema, parse_table_schema_from_json

    schema = parse_table_schema_from_json(json.dumps(ANSWER_BQ_SCHEMA))
    top_k = next(f for f in schema.fields if f.name == "top_k")
    assert top_k.type == "RECORD" and top_k.mode == "REPEATED" and [f.name for f in top_k.fields][:3] == [
        "answer", "score", "probability"]
    assert get_dict_table_schema(schema)["fields"][-1]["name"] == "threshold_source"


def test_rows_match_their_bigquery_schemas_and_are_json() -> None:
    a = Answer("q1", "", float("-inf"), 1.5, 0.25, -1, -1, 0, best_span_text="Ada")
    row = answer_row(a)
    assert list(row) == _schema_names(ANSWER_BQ_SCHEMA)
    _check_row_against_schema(row, ANSWER_BQ_SCHEMA["fields"])
    assert row["top_k"] == [] and row["model_id"] is None  # no n-best, no provenance: empty / null
    assert row["is_no_answer"] is True and row["score"] is None and row["no_answer_score"] == 1.5
    json.dumps(row, allow_nan=False)
    r = reject("invalid_json", "the record is not valid JSON", "{x")
    rrow = rejection_row(r)
    assert list(rrow) == _schema_names(REJECTED_BQ_SCHEMA)
    assert rrow["reason_code"] == "invalid_json" and rrow["raw"] == "{x" and rrow["stage"] == "parse"
    required = {f["name"] for f in ANSWER_BQ_SCHEMA["fields"] if f["mode"] == "REQUIRED"}
    assert all(row[k] is not None for k in required)
