"""Reading SQuAD JSON and JSONL into QAExamples, and the errors for malformed files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from trt_handler.qa.reading import (
    DataFormatError,
    example_from_record,
    load_examples,
    read_jsonl,
)
from trt_handler.qa.types import QAExample

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "squad_sample.jsonl"


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def squad_doc(qas, context="Paris is in France."):
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_squad_b1_counts_match_the_model_card(squad_b1):
    # MODEL_CARD.md: B1 has 4,194 questions, 3,037 answerable and 1,157 unanswerable.
    examples = load_examples(str(squad_b1))
    assert len(examples) == 4194
    assert sum(ex.is_impossible is True for ex in examples) == 1157
    assert sum(bool(ex.answers) for ex in examples) == 3037
    raw = json.loads(squad_b1.read_text(encoding="utf-8"))["data"][0]["paragraphs"][0]
    first = examples[0]
    assert first.id == raw["qas"][0]["id"] and first.context == raw["context"]
    assert first.answers == tuple(a["text"] for a in raw["qas"][0]["answers"])
    assert len({ex.id for ex in examples}) == len(examples)


def test_v1_file_without_is_impossible(tmp_path):
    doc = squad_doc([{"id": "a", "question": "Where is Paris?",
                      "answers": [{"text": "France", "answer_start": 12}, {"text": "in France"}]}])
    doc["version"] = "1.1"
    (ex,) = load_examples(write(tmp_path / "v1.json", json.dumps(doc)))
    assert ex.answers == ("France", "in France") and ex.is_impossible is False
    assert ex.context == "Paris is in France."


def test_v2_unanswerable_ignores_plausible_answers(tmp_path):
    doc = squad_doc([{"id": "u", "question": "Where is Rome?", "answers": [], "is_impossible": True,
                      "plausible_answers": [{"text": "France", "answer_start": 12}]}])
    (ex,) = load_examples(write(tmp_path / "v2.json", json.dumps(doc)))
    assert ex.answers == () and ex.is_impossible is True


def test_sample_jsonl(tmp_path):
    # samples/README.md: 20 questions, 5 of them unanswerable.
    examples = read_jsonl(str(SAMPLE))
    assert len(examples) == 20 and sum(ex.is_impossible for ex in examples) == 5
    assert all(ex.answers for ex in examples if not ex.is_impossible)
    assert load_examples(str(SAMPLE)) == examples


def test_jsonl_answer_forms_and_defaults(tmp_path):
    lines = [
        {"id": 1, "question": "q", "context": "c"},                                  # no gold
        {"id": "s", "question": "q", "context": "c", "answers": ["x", "y"]},         # strings
        {"id": "d", "question": "q", "context": "c", "answers": [{"text": "x"}]},    # SQuAD dicts
        {"id": "h", "question": "q", "context": "c", "answers": {"text": ["x"], "answer_start": [0]}},
        {"id": "e", "question": "q", "context": "c", "answers": []},                 # unanswerable
    ]
    text = "\n".join(json.dumps(r) for r in lines[:3]) + "\n\n" + "\n".join(json.dumps(r) for r in lines[3:])
    got = read_jsonl(write(tmp_path / "in.jsonl", text))
    assert [(e.id, e.answers, e.is_impossible) for e in got] == [
        ("1", (), None), ("s", ("x", "y"), False), ("d", ("x",), False), ("h", ("x",), False),
        ("e", (), True)]


def test_example_from_record_is_the_rule_for_one_record():
    """The per-record rules the readers and pipelines.records share; errors name the field."""
    ex = example_from_record({"id": 3, "question": "q", "answers": [], "title": "ignored"}, "ctx")
    assert ex == QAExample("3", "q", "ctx", (), True)
    nulls = example_from_record({"id": "a", "question": "q", "context": "c", "answers": None, "is_impossible": None})
    assert (nulls.answers, nulls.is_impossible) == ((), None)  # a null optional field is an absent one
    with pytest.raises(DataFormatError, match=r"^missing field 'question'$") as info:
        example_from_record({"id": "a", "context": "c"})
    assert (info.value.field, info.value.missing) == ("question", True)
    with pytest.raises(DataFormatError, match=r"^qas\[0\]: answer 1 should be a string") as info:
        example_from_record({"id": "a", "question": "q", "answers": ["x", 3]}, "c", where="qas[0]")
    assert (info.value.field, info.value.missing) == ("answers", False)


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    record = {"id": "u", "question": "q", "context": "a\u2028b\u0085c"}
    path = write(tmp_path / "u.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
    assert read_jsonl(path)[0].context == "a\u2028b\u0085c"


def test_load_examples_tells_formats_apart(tmp_path, squad_b1):
    one = write(tmp_path / "one.txt", json.dumps({"id": "x", "question": "q", "context": "c"}))
    assert [e.id for e in load_examples(one)] == ["x"]
    with pytest.raises(DataFormatError, match="neither SQuAD JSON"):
        load_examples(write(tmp_path / "list.json", "[1, 2]"))


def test_gzip_files_are_read_through_beam(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    assert load_examples(str(path)) == read_jsonl(str(SAMPLE))


@pytest.mark.parametrize("text, message", [
    ('{"id": "a", "question": "q", "context": "c"}\n{"id": "b", "question": ', "line 2: not valid JSON"),
    ('{"id": "a", "question": "q"}', "line 1: missing field 'context'"),
    ('{"id": "a", "question": 3, "context": "c"}', "field 'question' should be a str"),
    ('{"id": "a", "question": "q", "context": "c", "answers": "x"}', "'answers' should be a list"),
    ('{"id": "a", "question": "q", "context": "c", "is_impossible": "no"}', "'is_impossible' should be"),
])
def test_malformed_jsonl_says_where_and_why(tmp_path, text, message):
    path = write(tmp_path / "bad.jsonl", text)
    with pytest.raises(DataFormatError, match=message):
        read_jsonl(path)


def test_malformed_squad_json_says_where(tmp_path):
    doc = squad_doc([{"id": "a", "question": "q", "answers": []}, {"question": "q", "answers": []}])
    with pytest.raises(DataFormatError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[1\]: missing field 'id'"):
        load_examples(write(tmp_path / "bad.json", json.dumps(doc)))
    with pytest.raises(DataFormatError, match="not valid JSON"):
        load_examples(write(tmp_path / "broken.json", '{"data": ['))


def test_non_utf8_and_missing_files(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"id": "a", "question": "où", "context": "c"}'.encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8"):
        read_jsonl(str(bad))
    with pytest.raises(FileNotFoundError):
        load_examples(str(tmp_path / "missing.json"))
