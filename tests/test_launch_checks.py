"""What the batch pipeline refuses before any data flows, and its exit codes (issue: every fault
found before data flows). Real files, the shared model, the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import qa_batch
from tests.conftest import REPO

SAMPLE = REPO / "samples" / "squad_sample.jsonl"


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> str:
    from trt_handler.engines.export import resolve_model_bundle

    return str(resolve_model_bundle(model_dir, test_cache))


def _main(capsys: pytest.CaptureFixture, *argv: str) -> tuple:
    try:
        code = qa_batch.main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "none-*.jsonl", "matches no file"),
    (lambda d: d / "missing.json", "does not exist"),
    (lambda d: d, "is a folder"),
])
def test_bad_inputs_exit_2_with_one_line(bundle: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         make_input: object, message: str) -> None:
    path = make_input(tmp_path)  # type: ignore[operator]
    code, _, err = _main(capsys, "--input", str(path), "--output", str(tmp_path / "o" / "a"), "--model", bundle)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_unwritable_output_exits_2(bundle: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _main(capsys, "--input", str(SAMPLE), "--output", str(blocker / "sub" / "a"), "--model", bundle)
    assert code == 2 and "cannot create the folder" in err


def test_a_tampered_bundle_is_refused_at_launch(bundle: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with open(copy / "model.onnx", "r+b") as f:  # change one byte of the weights
        f.seek(-100, 2)
        b = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    code, _, err = _main(capsys, "--input", str(SAMPLE), "--output", str(tmp_path / "o" / "a"), "--model", str(copy))
    assert code == 2 and "sha256" in err


def test_all_rejected_exits_1_and_stale_outputs_are_replaced(bundle: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o" / "answers"
    out.parent.mkdir()
    stale = [out.parent / "answers-00003-of-00004.jsonl", out.parent / "answers-rejected-00001-of-00002.jsonl",
             out.parent / "answers-metric.json"]
    for f in stale:
        f.write_text('{"stale": true}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\nnot json\n{"id": "b", "question": "", "context": "x"}\n')
    code, stdout, err = _main(capsys, "--input", str(bad), "--output", str(out), "--model", bundle)
    assert code == 1 and "every record was rejected" in err
    assert not any(f.exists() for f in stale), "an earlier run's files were left beside the new ones"
    rejected = [json.loads(line) for f in out.parent.glob("answers-rejected-*.jsonl") for line in f.read_text().splitlines()]
    assert len(rejected) == 3 and "summary: read 3 records from 1 file, answered 0, rejected 3" in stdout


def test_eval_counts_questions_without_gold_apart(bundle: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:6]
    records = [json.loads(line) for line in lines]
    for r in records[3:]:  # three questions lose their gold answers
        r.pop("answers", None)
        r.pop("is_impossible", None)
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    code, stdout, _ = _main(capsys, "--input", str(data), "--output", str(tmp_path / "o" / "a"), "--model", bundle,
                            "--eval")
    metric = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and metric["total"] == 3 and metric["unscored"] == 3
