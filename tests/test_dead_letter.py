"""Dead letters through the whole batch pipeline: every record ends as exactly one answer or one
rejection with a reason and its raw input (malformed corpus, duplicate ids, feature errors and
inference failures)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from pipelines import qa_batch
from tests.conftest import REPO

SAMPLE = REPO / "samples" / "squad_sample.jsonl"


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> str:
    from trt_handler.engines.export import resolve_model_bundle

    return str(resolve_model_bundle(model_dir, test_cache))


def _good_lines() -> List[str]:
    return SAMPLE.read_text(encoding="utf-8").splitlines()


def _read_jsonl(prefix: Path, rejected: bool) -> List[Dict[str, Any]]:
    pattern = f"{prefix.name}-rejected-*.jsonl" if rejected else f"{prefix.name}-0*-of-*.jsonl"
    rows: List[Dict[str, Any]] = []
    for f in sorted(prefix.parent.glob(pattern)):
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]
    return rows


def _bad_records(good_line: str) -> List[Tuple[bytes, str]]:
    """(raw line, expected reason code): 22 kinds of bad record."""
    serial = itertools.count()

    def rec(**changes: Any) -> bytes:
        r = {"id": f"bad-{next(serial)}", "question": "Who?", "context": "Ada wrote it."}
        r.update(changes)
        return json.dumps({k: v for k, v in r.items() if v is not _DROP}).encode()

    return [
        (b'{"id": "enc", "question": "Who?", "context": "caf\xe9"}', "invalid_encoding"),
        (b"", "empty_record"),
        (b"   \t ", "empty_record"),
        (b'{"id": "trunc", "question": "Who', "invalid_json"),
        (b"{'id': 'single-quotes', 'question': 'Who?', 'context': 'x'}", "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (rec(id=_DROP), "missing_field"),
        (rec(question=_DROP), "missing_field"),
        (rec(context=None), "missing_field"),
        (rec(id=["a", "list"]), "wrong_type"),
        (rec(question=3.5), "wrong_type"),
        (rec(context={"text": "nested"}), "wrong_type"),
        (rec(id=" "), "empty_field"),
        (rec(question=""), "empty_field"),
        (rec(context=" \n "), "empty_field"),
        (rec(context="long " * 700), "too_long"),
        (rec(question="why " * 100), "too_long"),
        (rec(answers="Ada"), "bad_answers"),
        (rec(is_impossible="maybe"), "bad_is_impossible"),
        (rec(context="\u200b\u200b\u200b"), "feature_error"),  # only zero-width chars: no tokens
        # Same id as a good record: one of the two is answered, the other rejected.
        ((good_line + " ").encode(), "duplicate_id"),
    ]


_DROP = object()


def test_malformed_corpus_every_record_has_one_outcome(bundle: str, tmp_path: Path) -> None:
    good_lines = _good_lines()
    good_ids = [json.loads(line)["id"] for line in good_lines]
    bad = _bad_records(good_lines[0])
    assert len(bad) >= 15 and len({code for _, code in bad}) == 12  # every code a JSONL line can earn
    # Interleave bad records between the good ones.
    lines: List[bytes] = []
    for i, line in enumerate(good_lines):
        lines.append(line.encode())
        lines += [raw for raw, _ in bad[i::len(good_lines)]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out" / "answers"

    outcome = qa_batch.run(["--input", str(path), "--output", str(out), "--model", bundle,
                            "--max-context-chars", "3000", "--max-question-chars", "300"])

    answers = _read_jsonl(out, rejected=False)
    rejected = _read_jsonl(out, rejected=True)
    assert len(lines) == len(answers) + len(rejected)
    assert sorted(a["id"] for a in answers) == sorted(good_ids)  # every good record answered, once
    expected = Counter(code for _, code in bad)
    assert Counter(r["reason_code"] for r in rejected) == expected
    for r in rejected:
        assert r["reason"].startswith(r["reason_code"] + ": ") and len(r["reason"]) > len(r["reason_code"]) + 10
    # Each rejection carries its raw record (invalid UTF-8 shown with backslash escapes); of the two
    # records of one id, either may be the one rejected.
    raws = {raw.decode("utf-8", errors="backslashreplace") for raw, code in bad if code != "duplicate_id"}
    (duplicate,) = [r["raw"] for r in rejected if r["reason_code"] == "duplicate_id"]
    assert {r["raw"] for r in rejected if r["reason_code"] != "duplicate_id"} == raws
    assert duplicate in (good_lines[0], good_lines[0] + " ")
    counts = outcome["counters"]
    assert counts["records_read"] == len(lines) == counts["answered"] + counts["rejected"]
    assert counts["rejected.duplicate_id"] == 1 and counts["rejected.feature_error"] == 1
    assert "WARNING" not in qa_batch.summary_line(counts, outcome["seconds"])


def _failing_handler(base: Any, fail: set, sleep_secs: float = 0.0) -> Any:
    """``base`` that raises (or, with ``sleep_secs``, hangs that long first) for any batch
    holding one of the question ids in ``fail``."""
    import time

    from apache_beam.ml.inference.base import ModelHandler

    class Failing(ModelHandler):
        def load_model(self) -> Any:
            return base.load_model()

        def run_inference(self, batch: Any, model: Any, inference_args: Any = None) -> Any:
            hit = sorted(q.example.id for q in batch if q.example.id in fail)
            if hit and sleep_secs:
                time.sleep(sleep_secs)
            elif hit:
                raise RuntimeError(f"simulated GPU failure on {hit}")
            return base.run_inference(batch, model, inference_args)

        def batch_elements_kwargs(self) -> Any:
            return base.batch_elements_kwargs()

    return Failing()


def _one_and_two_window_ids(bundle: str, records: List[Dict[str, Any]]) -> Tuple[str, str, Dict[str, int]]:
    from trt_handler.qa.types import QAExample
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    maker = WindowMaker(load_tokenizer(bundle))
    counts = {r["id"]: len(maker.windows(QAExample(r["id"], r["question"], r["context"]))) for r in records}
    return next(i for i, n in counts.items() if n == 1), next(i for i, n in counts.items() if n == 2), counts


def test_inference_failure_is_dead_lettered_once_per_question(bundle: str, tmp_path: Path) -> None:
    """The batches holding a two-window question and a one-window question fail: both questions
    are rejected once as inference_failed (with their raw record), all others answered."""
    from pipelines.options import QASettings
    from pipelines.transforms import make_handler

    lines = _good_lines()
    records = [json.loads(line) for line in lines]
    one, two, counts = _one_and_two_window_ids(bundle, records)
    # one window per batch: a failing batch holds exactly the question it names
    handler = _failing_handler(make_handler(QASettings(model_dir=bundle, batch_windows=1)), {one, two})
    out = tmp_path / "answers"
    outcome = qa_batch.run(["--input", str(SAMPLE), "--output", str(out), "--model", bundle], handler=handler)
    answers = _read_jsonl(out, rejected=False)
    rejected = _read_jsonl(out, rejected=True)
    assert sorted(a["id"] for a in answers) == sorted(set(counts) - {one, two})
    assert sorted((r["id"], r["reason_code"], r["stage"]) for r in rejected) == sorted(
        [(one, "inference_failed", "inference"), (two, "inference_failed", "inference")])
    assert all("simulated GPU failure" in r["reason"] for r in rejected)
    assert {r["raw"] for r in rejected} == {line for line, rec in zip(lines, records) if rec["id"] in (one, two)}
    assert outcome["counters"]["records_read"] == len(lines)


def test_a_stuck_model_call_times_out_into_dead_letters(bundle: str, tmp_path: Path) -> None:
    """A batch that hangs past --inference-timeout-secs is abandoned: its question is rejected as
    inference_timeout and the run goes on (the sleep is real: the test takes a few seconds)."""
    import time

    from pipelines.options import QASettings
    from pipelines.transforms import make_handler

    lines = _good_lines()
    records = [json.loads(line) for line in lines]
    one, _, counts = _one_and_two_window_ids(bundle, records)
    handler = _failing_handler(make_handler(QASettings(model_dir=bundle, batch_windows=1)), {one}, sleep_secs=30)
    out = tmp_path / "answers"
    t0 = time.perf_counter()
    qa_batch.run(["--input", str(SAMPLE), "--output", str(out), "--model", bundle,
                  "--inference-timeout-secs", "3"], handler=handler)
    assert time.perf_counter() - t0 < 30, "the stuck call was waited for instead of abandoned"
    rejected = _read_jsonl(out, rejected=True)
    assert [(r["id"], r["reason_code"]) for r in rejected] == [(one, "inference_timeout")]
    assert sorted(a["id"] for a in _read_jsonl(out, rejected=False)) == sorted(set(counts) - {one})
