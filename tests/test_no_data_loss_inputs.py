"""Every input file read and every question accounted for (issue 19): one real batch run (DirectRunner,
the bundled model) over a glob of a folder that mixes JSONL and SQuAD JSON files, some of them broken
the ways that used to lose questions without a word: repeated keys, UTF-16, gzip without its extension."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipelines import qa_batch
from pipelines.records import parse_record, split_squad_document
from tests.conftest import REPO
from trt_handler.qa.reading import DataFormatError, load_examples

SAMPLE = REPO / "samples" / "squad_sample.jsonl"


def _records() -> List[Dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def _squad(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A SQuAD document: one paragraph per record."""
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": []}]} for r in records]}]}


@pytest.fixture(scope="module")
def mixed_run(bundled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The folder, what each file holds, and the outcome of `--input 'folder/*'` over it."""
    records = _records()
    folder = tmp_path_factory.mktemp("mixed") / "in"
    folder.mkdir()
    # two JSONL files, the second with a record that repeats a key
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[0:3]), encoding="utf-8")
    repeated = json.dumps(records[4])[:-1] + ', "question": "a second question?"}'
    (folder / "b.jsonl").write_text(json.dumps(records[3]) + "\n" + repeated + "\n", encoding="utf-8")
    # a SQuAD document, and one whose second paragraph holds "qas" twice (readers keep the last list)
    (folder / "c.json").write_text(json.dumps(_squad(records[5:8])), encoding="utf-8")
    doc = json.dumps(_squad(records[8:10]))
    first_qas = json.dumps(_squad(records[10:11])["data"][0]["paragraphs"][0]["qas"])
    doc = doc.replace('"qas": [{"id": "' + records[9]["id"], f'"qas": {first_qas}, "qas": [{{"id": "' + records[9]["id"])
    (folder / "d.json").write_text(doc, encoding="utf-8")
    # a compressed SQuAD document named as such, a UTF-16 JSONL file, a gzip JSONL file without .gz
    (folder / "e.json.gz").write_bytes(gzip.compress(json.dumps(_squad(records[11:13])).encode()))
    (folder / "f.jsonl").write_bytes("".join(json.dumps(r) + "\n" for r in records[13:15]).encode("utf-16"))
    (folder / "g.jsonl").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records[15:18]).encode()))
    out = folder.parent / "out" / "answers"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = qa_batch.main(["--input", str(folder / "*"), "--output", str(out), "--model", str(bundled_model),
                              "--progress-every", "0"])
    rows = lambda tail: [json.loads(x) for f in sorted(out.parent.glob(f"answers{tail}"))  # noqa: E731
                         for x in f.read_text(encoding="utf-8").splitlines() if x]
    return {"code": code, "stdout": stdout.getvalue(), "records": records, "answers": rows("-0*-of-*.jsonl"), "rejected": rows("-rejected-*.jsonl")}


def test_a_glob_over_jsonl_and_squad_files_reads_every_file(mixed_run: Dict[str, Any]) -> None:
    """All 7 files are read, each in its own format (.json, .json.gz SQuAD; .jsonl JSONL); every good
    question is answered and every record has an outcome."""
    records = mixed_run["records"]
    assert mixed_run["code"] == 0
    good = records[0:4] + records[5:9] + records[11:13]
    assert sorted(a["id"] for a in mixed_run["answers"]) == sorted(r["id"] for r in good)
    summary = [line for line in mixed_run["stdout"].splitlines() if line.startswith("summary:")]
    # read: 10 answered + b's repeated record + d's paragraph + f and g as one rejection each
    assert summary and summary[-1].startswith("summary: read 14 records from 7 files, answered 10, rejected 4 ")
    assert "WARNING" not in summary[-1]


def test_repeated_keys_are_rejected_with_their_reason(mixed_run: Dict[str, Any]) -> None:
    records = mixed_run["records"]
    by_code = sorted((r["reason_code"], r["raw"]) for r in mixed_run["rejected"] if r["reason_code"] == "duplicate_key")
    assert len(by_code) == 2
    reasons = [r["reason"] for r in mixed_run["rejected"] if r["reason_code"] == "duplicate_key"]
    assert any("'question' more than once" in r for r in reasons)  # the JSONL record
    assert any("paragraph 1 of article 0" in r and "'qas' more than once" in r and "d.json" in r for r in reasons)
    raws = " ".join(raw for _, raw in by_code)  # both lists of the paragraph are in its dead letter
    assert records[9]["id"] in raws and records[10]["id"] in raws and "a second question?" in raws


def test_files_in_another_encoding_are_rejected_saying_which(mixed_run: Dict[str, Any]) -> None:
    encoding = [r["reason"] for r in mixed_run["rejected"] if r["reason_code"] == "invalid_encoding"]
    assert len(encoding) == 2, encoding
    [utf16] = [r for r in encoding if "f.jsonl" in r]
    [gz] = [r for r in encoding if "g.jsonl" in r]
    assert "UTF-16" in utf16 and "save it as UTF-8" in utf16
    assert "gzip-compressed" in gz and ".gz" in gz


def test_records_and_documents_name_repeated_keys_and_encodings() -> None:
    """The parsers alone: a JSONL record, a Pub/Sub message (bytes) and a SQuAD document."""
    rec = parse_record(b'{"id": "a", "question": "q?", "context": "c", "context": "other"}')
    assert rec.reason.startswith("duplicate_key:") and "'context'" in rec.reason
    nested = parse_record(b'{"id": "a", "question": "q?", "context": "c", "answers": [{"text": "c", "text": "d"}]}')
    assert nested.reason.startswith("duplicate_key:") and "'text'" in nested.reason
    utf16 = parse_record('{"id": "a"}'.encode("utf-16-le"))  # a line cut from a UTF-16 file: no byte-order mark
    assert utf16.reason.startswith("invalid_encoding:") and "UTF-16" in utf16.reason
    assert "gzip" in parse_record(gzip.compress(b'{"id": "a"}')).reason
    doc = '{"data": [{"title": "t", "paragraphs": []}], "data": [{"title": "u", "paragraphs": []}]}'
    [whole] = list(split_squad_document(doc.encode(), "x.json"))
    assert whole.reason.startswith("duplicate_key: the SQuAD document (x.json) holds the key 'data'")


def test_the_in_process_reader_refuses_repeated_keys_too(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"data": [{"paragraphs": [{"context": "c", "qas": [], "qas": []}]}]}')
    with pytest.raises(DataFormatError, match="'qas' more than once") as err:
        load_examples(str(path))
    assert err.value.code == "duplicate_key" and str(path) in str(err.value)
