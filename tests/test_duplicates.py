"""Duplicate ids in batch jobs: every record ends as one answer or one rejection, with only the ids
counted across workers (pipelines.transforms.RejectDuplicateIds); --allow-duplicate-ids answers all."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipelines import qa_batch
from tests.conftest import REPO

SAMPLE = REPO / "samples" / "squad_sample.jsonl"


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> str:
    from trt_handler.engines.export import resolve_model_bundle

    return str(resolve_model_bundle(model_dir, test_cache))


def _rows(prefix: Path, rejected: bool) -> List[Dict[str, Any]]:
    pattern = f"{prefix.name}-rejected-*.jsonl" if rejected else f"{prefix.name}-[0-9]*.jsonl"
    return [json.loads(line) for f in prefix.parent.glob(pattern) for line in f.read_text().splitlines() if line]


def _input(tmp_path: Path) -> tuple:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:6]
    records = [json.loads(line) for line in lines]
    changed = dict(records[1], question=records[1]["question"] + " (asked again)")
    extra = [lines[0], lines[0], json.dumps(changed)]  # an exact duplicate twice, a differing one once
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    return path, records, lines + extra


def _answered_once(bundle: str, path: Path, out: Path, records: List[Dict[str, Any]], all_lines: List[str]) -> str:
    """Run the batch pipeline; check each id is answered once and the rest rejected; return the raw text
    answered of the id whose records differ."""
    outcome = qa_batch.run(["--input", str(path), "--output", str(out), "--model", bundle])
    answers, rejected = _rows(out, False), _rows(out, True)
    assert sorted(a["id"] for a in answers) == sorted(r["id"] for r in records)  # every id exactly once
    assert Counter((r["id"], r["reason_code"]) for r in rejected) == {
        (records[0]["id"], "duplicate_id"): 2, (records[1]["id"], "duplicate_id"): 1}
    assert all(r["reason"].startswith(f"duplicate_id: id {r['id']!r} appears") for r in rejected)
    assert len(answers) + len(rejected) == len(all_lines) == outcome["counters"]["records_read"]
    differing = [line for line in all_lines if json.loads(line)["id"] == records[1]["id"]]
    (left,) = {r["raw"] for r in rejected if r["id"] == records[1]["id"]}
    assert left in differing
    (kept,) = set(differing) - {left}
    return kept


def test_each_duplicated_id_is_answered_once_and_the_rest_rejected(bundle: str, tmp_path: Path) -> None:
    path, records, all_lines = _input(tmp_path)
    kept = _answered_once(bundle, path, tmp_path / "answers", records, all_lines)
    # the record answered of an id does not depend on the order of the input
    reversed_path = tmp_path / "reversed.jsonl"
    reversed_path.write_text("\n".join(reversed(all_lines)) + "\n", encoding="utf-8")
    assert _answered_once(bundle, reversed_path, tmp_path / "again", records, all_lines) == kept


def test_allow_duplicate_ids_answers_every_record(bundle: str, tmp_path: Path) -> None:
    path, records, all_lines = _input(tmp_path)
    out = tmp_path / "answers"
    qa_batch.run(["--input", str(path), "--output", str(out), "--model", bundle, "--allow-duplicate-ids"])
    answers = _rows(out, False)
    assert len(answers) == len(all_lines) and not _rows(out, True)
    assert Counter(a["id"] for a in answers)[records[0]["id"]] == 3


def test_an_id_repeated_many_times_keeps_one_record(bundle: str, tmp_path: Path) -> None:
    """25 records of one id (12 byte-identical, 13 differing): the id counts are combined in partial
    results (Beam compacts a combine's inputs ten at a time), and still exactly one record is kept."""
    line = SAMPLE.read_text(encoding="utf-8").splitlines()[0]
    record = json.loads(line)
    lines = [line] * 12 + [json.dumps(dict(record, question=f"{record['question']} ({i})")) for i in range(13)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "answers"
    outcome = qa_batch.run(["--input", str(path), "--output", str(out), "--model", bundle])
    answers, rejected = _rows(out, False), _rows(out, True)
    assert [a["id"] for a in answers] == [record["id"]]
    assert len(rejected) == 24 and {r["reason_code"] for r in rejected} == {"duplicate_id"}
    assert all("appears 25 times" in r["reason"] for r in rejected)
    kept = Counter(lines) - Counter(r["raw"] for r in rejected)  # the one record not rejected
    assert sum(kept.values()) == 1 and not Counter(r["raw"] for r in rejected) - Counter(lines)
    assert outcome["counters"]["records_read"] == 25
