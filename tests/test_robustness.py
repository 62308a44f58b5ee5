"""No input crashes parsing: generated hostile records all end as a QAExample or a Rejection whose
texts UTF-8 can write; one bad SQuAD question costs only itself; huge records are refused unparsed."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time

import pytest

from pipelines.records import (
    DEAD_LETTER_RAW_CHARS,
    REASON_CODES,
    RecordLimits,
    parse_record,
    raw_text,
    reason_code,
    rejection_row,
    split_squad_document,
    utf8_safe,
)
from trt_handler.qa.reading import DataFormatError, load_examples, read_jsonl
from trt_handler.qa.types import QAExample, Rejection

DIGIT_LIMIT = sys.get_int_max_str_digits()


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 8))) for _ in range(n))


def _record(rng: random.Random) -> dict:
    context = _words(rng, rng.randint(3, 30))
    return {"id": f"q{rng.randint(0, 10**6)}", "question": _words(rng, rng.randint(1, 6)) + "?",
            "context": context, "answers": [context.split()[0]]}


def _surrogate_escape(rng: random.Random) -> str:
    return "\\u" + rng.choice("dD") + rng.choice("89abAB") + "".join(rng.choice("0123456789abcdef") for _ in range(2))


def _long_int(rng: random.Random) -> str:
    return rng.choice(["", "-"]) + str(rng.randint(1, 9)) + "".join(
        rng.choice("0123456789") for _ in range(DIGIT_LIMIT + rng.randint(0, 300)))


def _assert_writable(out: object) -> None:
    assert isinstance(out, (QAExample, Rejection)), out
    if isinstance(out, Rejection):
        assert reason_code(out) in REASON_CODES
        line = json.dumps(rejection_row(out), ensure_ascii=False)
        line.encode("utf-8")  # a dead-letter line can always be written
    else:
        for text in (out.id, out.question, out.context, *out.answers):
            text.encode("utf-8")  # an accepted example can be keyed and written


def test_lone_surrogate_in_each_text_field_is_invalid_text() -> None:
    rng = random.Random(1)
    for field in ("id", "question", "context"):
        for _ in range(20):
            rec = _record(rng)
            escape = _surrogate_escape(rng)
            cut = rng.randint(0, len(rec[field]))
            line = json.dumps(rec)
            marker = f'"{field}": ' + json.dumps(rec[field])
            value = rec[field]
            line = line.replace(marker, f'"{field}": "' + value[:cut] + escape + value[cut:] + '"')
            out = parse_record(line)
            assert isinstance(out, Rejection), line
            assert out.reason.startswith(f"invalid_text: lone surrogate at character {cut} of '{field}'"), out.reason
            _assert_writable(out)
            assert escape.lower() in out.raw.lower()  # the raw keeps the escape, as text
            # the same record as a str holding the surrogate itself (not the escape) is refused the same way
            decoded = json.loads(line)
            out2 = parse_record(json.dumps(decoded, ensure_ascii=False))
            assert isinstance(out2, Rejection) and reason_code(out2) == "invalid_text"
            _assert_writable(out2)


def test_lone_surrogate_in_gold_answers_is_invalid_text() -> None:
    out = parse_record('{"id": "a", "question": "q?", "context": "c", "answers": [{"text": "x\\udfff"}]}')
    assert isinstance(out, Rejection) and reason_code(out) == "invalid_text" and "'answers'" in out.reason


def test_a_surrogate_pair_escape_is_fine() -> None:
    out = parse_record('{"id": "a\\ud83d\\ude00", "question": "q?", "context": "smile \\ud83d\\ude00"}')
    assert isinstance(out, QAExample) and out.id == "a\U0001F600" and out.context.endswith("\U0001F600")


@pytest.mark.parametrize("field", ["id", "answers", "is_impossible", "context"])
def test_integer_longer_than_python_reads_is_number_too_long(field: str) -> None:
    rng = random.Random(field)
    rec = _record(rng)
    rec[field] = "PLACEHOLDER"
    digits = _long_int(rng)
    line = json.dumps(rec).replace('"PLACEHOLDER"', digits if field != "answers" else f"[{digits}]")
    out = parse_record(line)
    assert isinstance(out, Rejection), out
    assert reason_code(out) == "number_too_long" and repr(field) in out.reason
    assert f"{len(digits.lstrip('-'))} digits" in out.reason
    assert out.raw == line
    _assert_writable(out)


def test_long_integer_in_an_ignored_key_does_not_reject() -> None:
    rec = _record(random.Random(3))
    line = json.dumps(rec)[:-1] + ', "extra": ' + "7" * (DIGIT_LIMIT + 5) + "}"
    assert isinstance(parse_record(line), QAExample)


def test_generated_hostile_records_never_raise() -> None:
    """Seeded random damage to good records: byte flips, cuts, surrogates, long numbers, nesting."""
    rng = random.Random(20261201)
    codes = set()
    for _ in range(3000):
        line = json.dumps(_record(rng), ensure_ascii=rng.random() < 0.5)
        kind = rng.randrange(6)
        if kind == 0:  # random bytes changed
            b = bytearray(line.encode())
            for _ in range(rng.randint(1, 5)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            raw: object = bytes(b)
        elif kind == 1:  # cut anywhere
            raw = line[: rng.randrange(len(line) + 1)]
        elif kind == 2:  # a surrogate escape anywhere
            i = rng.randrange(len(line) + 1)
            raw = line[:i] + _surrogate_escape(rng) + line[i:]
        elif kind == 3:  # a long integer as the value of a field, or anywhere
            rec = _record(rng)
            rec[rng.choice(sorted(rec))] = "PLACEHOLDER"
            raw = json.dumps(rec).replace('"PLACEHOLDER"', _long_int(rng))
            if rng.random() < 0.3:
                i = rng.randrange(len(raw) + 1)
                raw = raw[:i] + _long_int(rng) + raw[i:]
        elif kind == 4:  # deep nesting in a field
            depth = rng.choice([10, 5000, 200_000])
            raw = line[:-1] + ', "answers": ' + "[" * depth + "]" * depth + "}"
        else:  # a raw str holding lone surrogate characters
            i = rng.randrange(len(line) + 1)
            raw = line[:i] + chr(rng.randint(0xD800, 0xDFFF)) + line[i:]
        out = parse_record(raw)  # type: ignore[arg-type]
        _assert_writable(out)
        if isinstance(out, Rejection):
            codes.add(reason_code(out))
            if reason_code(out) != "too_long":  # the whole raw text, or (deep nesting) its bounded prefix
                whole = raw_text(raw)  # type: ignore[arg-type]
                assert whole == out.raw or (len(out.raw) == DEAD_LETTER_RAW_CHARS and whole.startswith(out.raw))
                assert out.raw_chars == len(whole)
                assert out.raw_sha256 == hashlib.sha256(whole.encode("utf-8")).hexdigest()
    assert {"invalid_text", "number_too_long", "invalid_json", "invalid_encoding"} <= codes
    assert "parse_error" not in codes, "an unforeseen exception: see the reason"


def _squad_doc(rng: random.Random, n_questions: int) -> dict:
    paragraphs = []
    for p in range(3):
        rec = _record(rng)
        qas = [{"id": f"p{p}q{q}", "question": _words(rng, 3) + "?", "answers": [{"text": rec["answers"][0],
                "answer_start": 0}]} for q in range(n_questions)]
        paragraphs.append({"context": rec["context"], "qas": qas})
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": paragraphs}]}


def test_one_bad_squad_question_rejects_only_itself() -> None:
    rng = random.Random(7)
    doc = _squad_doc(rng, 4)
    text = json.dumps(doc)
    # damage question p1q2 twice over: a surrogate in its question, a long number in its answer_start;
    # and question p2q0's id gets a surrogate
    qa = json.dumps(doc["data"][0]["paragraphs"][1]["qas"][2])
    bad = qa.replace('"question": "', '"question": "\\udc80').replace('"answer_start": 0', '"answer_start": ' + _long_int(rng))
    assert bad != qa and text.count(qa) == 1
    text = text.replace(qa, bad).replace('"id": "p2q0"', '"id": "p2\\ud800q0"')
    for raw in (text, text.encode()):
        items = list(split_squad_document(raw, "doc.json"))
        assert len(items) == 12
        outs = [parse_record(i) if isinstance(i, str) else i for i in items]
        for out in outs:
            _assert_writable(out)
        for i in items:
            if isinstance(i, str):
                i.encode("utf-8")
        rejected = {(o.example_id, reason_code(o)) for o in outs if isinstance(o, Rejection)}
        assert rejected == {("p1q2", "number_too_long"), (None, "invalid_text")}, rejected
        assert sum(isinstance(o, QAExample) for o in outs) == 10


def test_long_number_outside_questions_does_not_reject_the_document() -> None:
    doc = _squad_doc(random.Random(8), 2)
    text = json.dumps(doc).replace('"version": "v2.0"', '"version": ' + "9" * (DIGIT_LIMIT + 1))
    outs = [parse_record(i) for i in split_squad_document(text)]
    assert len(outs) == 6 and all(isinstance(o, QAExample) for o in outs)


def test_file_readers_say_where_a_long_number_or_surrogate_is(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    good = json.dumps(_record(random.Random(9)))
    path.write_text(good + "\n" + '{"id": "x", "question": "\\ud800?", "context": "c"}\n')
    with pytest.raises(DataFormatError, match=r"line 2: lone surrogate at character 0 of 'question'") as err:
        read_jsonl(str(path))
    assert err.value.code == "invalid_text"
    path.write_text(good + "\n" + '{"id": ' + "1" * (DIGIT_LIMIT + 1) + ', "question": "q", "context": "c"}\n')
    for reader in (read_jsonl, load_examples):
        with pytest.raises(DataFormatError, match="line 2: 'id' is an integer of") as err:
            reader(str(path))
        assert err.value.code == "number_too_long"


def test_utf8_safe_escapes_only_lone_surrogates() -> None:
    assert utf8_safe("plain") == "plain"
    assert utf8_safe("café \U0001F600") == "café \U0001F600"
    assert utf8_safe("a\ud800b\udfffc") == "a\\ud800b\\udfffc"


def _big_line(n_chars: int) -> str:
    head = '{"id": "big", "question": "What?", "context": "'
    body = ("ab " * (n_chars // 3 + 1))[: n_chars - len(head) - 2]
    line = head + body + '"}'
    assert len(line) == n_chars
    return line


def test_record_size_is_checked_before_parsing() -> None:
    limits = RecordLimits()
    assert limits.record_chars_limit == 12 * (100_000 + 4_000 + 512) + (1 << 20)
    line = _big_line(50_000_000)
    for raw in (line, line.encode()):
        t0 = time.perf_counter()
        out = parse_record(raw, limits)
        seconds = time.perf_counter() - t0
        assert isinstance(out, Rejection) and reason_code(out) == "too_long"
        assert f"the record is {len(raw):,} " in out.reason and "not parsed" in out.reason
        assert len(out.raw) == 10_000 and out.raw == line[:10_000]
        assert seconds < 0.05, f"{seconds:.3f} s: the size check must not parse"
    # a record at the derived limit is still parsed (and then judged by its fields)
    near = _big_line(limits.record_chars_limit)
    out = parse_record(near, limits)
    assert isinstance(out, Rejection) and "'context' has" in out.reason
    # the record limit follows the field limits, and can be set or switched off
    assert RecordLimits(max_context_chars=None).record_chars_limit is None
    assert isinstance(parse_record(_big_line(3_000_000), RecordLimits(max_context_chars=None)), QAExample)
    small = RecordLimits(max_record_chars=100)
    assert reason_code(parse_record(_big_line(101), small)) == "too_long"
    assert isinstance(parse_record(_big_line(100), small), QAExample)
    with pytest.raises(ValueError, match="max_record_chars"):
        RecordLimits(max_record_chars=0)
    with pytest.raises(ValueError, match="max_record_chars"):
        RecordLimits(max_record_chars="big")


def test_feature_rejection_uses_the_errors_code() -> None:
    from pipelines.records import feature_rejection, reject
    from trt_handler.qa.windows import FeatureError

    many = feature_rejection(FeatureError("context needs 900 windows", code="too_many_windows"), "raw", "q1")
    assert reason_code(many) == "too_many_windows" and many.stage == "features" and many.example_id == "q1"
    assert reason_code(feature_rejection(FeatureError("no tokens"), "raw")) == "feature_error"
    assert reason_code(feature_rejection(ValueError("odd"), "raw")) == "feature_error"
    r = reject("invalid_text", "bad \ud800 text", "raw \udfff", example_id="id\ud801")
    assert (r.reason, r.raw, r.example_id) == ("invalid_text: bad \\ud800 text", "raw \\udfff", "id\\ud801")
