"""What the batch pipeline writes for users: top-k candidates with scores and probabilities,
provenance on every row, the learned no-answer threshold (saved with --eval --save-threshold,
applied by later runs, overridden by --null-threshold), whole-word answers and the progress line.
Real B1 questions, the repository's int8 bundle (copied, so the threshold lands in a temporary
bundle), DirectRunner and ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipelines import qa_batch
from tests.conftest import SQUAD_B1_SAMPLE
from tests.helpers import link_bundle

_bundle_copy = link_bundle


def _b1_subset(path: Path, paragraphs: int = 4) -> Path:
    """The first paragraphs of B1 (committed sample) as a SQuAD v2 file with gold answers."""
    doc = json.loads(SQUAD_B1_SAMPLE.read_text(encoding="utf-8"))
    article = doc["data"][0]
    doc["data"] = [{**article, "paragraphs": article["paragraphs"][:paragraphs]}]
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _rows(prefix: Path) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for f in sorted(prefix.parent.glob(prefix.name + "-0*-of-*.jsonl")):
        out += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]
    return out


@pytest.fixture(scope="module")
def work(bundled_model: Path, tmp_path_factory: Any) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("answers")
    return {"bundle": _bundle_copy(bundled_model, root / "bundle"), "data": _b1_subset(root / "b1.json"),
            "root": root}


def _run(work: Dict[str, Path], name: str, *extra: str) -> Dict[str, Any]:
    out = work["root"] / name / "answers"
    outcome = qa_batch.run(["--input", str(work["data"]), "--output", str(out), "--model", str(work["bundle"]),
                            "--backend", "onnx", "--progress-every", "0", *extra])
    outcome["rows"] = _rows(out)
    return outcome


def test_save_threshold_then_apply_it_then_override_it(work: Dict[str, Path], capsys: Any) -> None:
    from trt_handler.engines.export import check_model_bundle, verify_bundle

    export = work["bundle"] / "export.json"
    before = json.loads(export.read_text(encoding="utf-8"))
    assert "null_threshold" not in before
    first = _run(work, "learn", "--eval", "--save-threshold")
    metric = first["metric"]
    assert metric["total"] == len(first["rows"]) > 20
    saved = json.loads(export.read_text(encoding="utf-8"))
    assert saved["null_threshold"]["value"] == metric["best_f1_thresh"]
    assert saved["null_threshold"]["best_f1"] == metric["best_f1"]
    assert {k: v for k, v in saved.items() if k != "null_threshold"} == before  # nothing else changed
    verify_bundle(work["bundle"])  # the hash covers model.onnx only: still verified
    check_model_bundle(work["bundle"])
    assert all(r["threshold_source"] == "default" and r["null_threshold"] == 0.0 for r in first["rows"])

    # the next run applies it, says so, and scores best_f1 at it
    applied = _run(work, "apply", "--eval")
    t = metric["best_f1_thresh"]
    assert "saved with the model" in applied["threshold"] and f"{t:g}" in applied["threshold"]
    assert all(r["threshold_source"] == "model" and r["null_threshold"] == pytest.approx(t) for r in applied["rows"])
    for r in applied["rows"]:
        assert r["is_no_answer"] == (r["no_answer_score"] - r["score"] > t)
    assert applied["metric"]["f1"] == pytest.approx(metric["best_f1"], abs=1e-6)
    assert qa_batch.main(["--input", str(work["data"]), "--output", str(work["root"] / "main" / "a"),
                          "--model", str(work["bundle"]), "--progress-every", "0"]) == 0
    assert "no-answer threshold" in capsys.readouterr().out

    # --null-threshold overrides the saved one
    flagged = _run(work, "flag", "--null-threshold", "-1000")
    assert all(r["threshold_source"] == "flag" and r["is_no_answer"] for r in flagged["rows"])
    assert "from --null-threshold" in flagged["threshold"]


def test_rows_carry_top_k_and_provenance(work: Dict[str, Path], bundled_model: Path) -> None:
    out = _run(work, "topk", "--top-k", "3", "--null-threshold", "0", "--show", "2")
    meta = json.loads((bundled_model / "export.json").read_text(encoding="utf-8"))
    rows = out["rows"]
    assert rows
    for r in rows:
        assert 1 <= len(r["top_k"]) <= 3 and len(r["top_k"]) == 3 or len(r["top_k"]) < 3
        probs = [c["probability"] for c in r["top_k"]]
        scores = [c["score"] for c in r["top_k"]]
        assert scores == sorted(scores, reverse=True) and all(0 < p <= 1 for p in probs)
        assert r["answer"] in [c["answer"] for c in r["top_k"]] or r["top_k"][0]["answer"] == r["best_span"]
        assert r["model_id"] == str(work["bundle"]) and r["backend"] == "onnx"
        assert r["model_sha256"] == meta["sha256"][:12] and r["precision"] == "int8-weight-only"
    assert sum(len(r["top_k"]) == 3 for r in rows) > len(rows) // 2
    assert all(len(s["top_k"]) == 3 or len(s["top_k"]) < 3 for s in out["shown"]) and len(out["shown"]) == 2


def test_align_to_words_in_the_pipeline(work: Dict[str, Path]) -> None:
    from trt_handler.qa.answers import _is_word_char
    from trt_handler.qa.reading import load_examples

    contexts = {ex.id: ex.context for ex in load_examples(str(work["data"]))}
    rows = _run(work, "align", "--align-to-words", "--null-threshold", "0", "--top-k", "5")["rows"]
    for r in rows:
        ctx = contexts[r["id"]]
        for c in r["top_k"]:
            s, e = c["start_char"], c["end_char"]
            if s < 0:
                continue
            assert ctx[s:e] == c["answer"]
            assert s == 0 or not (_is_word_char(ctx[s - 1]) and _is_word_char(ctx[s]))
            assert e == len(ctx) or not (_is_word_char(ctx[e - 1]) and _is_word_char(ctx[e]))


def test_progress_lines_during_a_local_run(work: Dict[str, Path], capsys: Any) -> None:
    out = work["root"] / "progress" / "answers"
    outcome = qa_batch.run(["--input", str(work["data"]), "--output", str(out), "--model", str(work["bundle"]),
                            "--progress-every", "0.2"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 2, err[-2000:]
    c = outcome["counters"]
    # the last line is written after the run: it has the final counts
    assert lines[-1].startswith(f"progress: read {c['records_read']}, answered {c['answered']}, "
                                f"rejected {c.get('rejected', 0)};")
    reads = [int(line.split("read ")[1].split(",")[0]) for line in lines]
    assert reads == sorted(reads)


def test_save_threshold_needs_eval_and_a_local_bundle(work: Dict[str, Path], capsys: Any) -> None:
    with pytest.raises(SystemExit):
        qa_batch.run(["--input", str(work["data"]), "--output", str(work["root"] / "x" / "a"),
                      "--model", str(work["bundle"]), "--save-threshold"])
    assert "--save-threshold needs --eval" in capsys.readouterr().err
