"""Tests for the GPU acceptance check (``python -m trt_handler.gpu_check``).

The check itself needs a GPU, TensorRT and ONNX Runtime; here we test that it refuses, saying
exactly what is missing, wherever something is, and that its comparison and report are right
with stand-in runners on real SQuAD windows (shared model's tokenizer).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trt_handler import gpu_check
from trt_handler.engines import cuda_runtime as cr
from trt_handler.planning import ProfileSpec, profiles_for_buckets
from trt_handler.qa.types import ModelBatch

REPO = Path(__file__).resolve().parents[1]
EXISTING = str(REPO / "README.md")  # any file that exists: --engine/--onnx/--data are checked for existence first


def _run_main(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    args = ["--engine", EXISTING, "--onnx", EXISTING, "--model", "unused", "--data", EXISTING, *extra]
    code = gpu_check.main(args)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def _tensorrt_missing() -> bool:
    return importlib.util.find_spec("tensorrt") is None and importlib.util.find_spec("tensorrt_rtx") is None


def test_refuses_and_names_everything_missing(capsys: pytest.CaptureFixture[str]) -> None:
    missing = gpu_check.missing_requirements()
    if not missing:
        pytest.skip("this machine has a GPU, TensorRT and ONNX Runtime: the refusal path does not apply")
    code, records, err = _run_main(capsys)
    assert code == gpu_check.EXIT_MISSING
    assert records == [{"event": "gpu_check", "status": "missing", "missing": missing}]
    assert "cannot run here, so nothing was measured" in err
    for line in missing:
        assert f"  - {line}" in err
    assert any(line.startswith("GPU: ") for line in missing) == (cr.unavailable_reason() is not None)


@pytest.mark.skipif(cr.unavailable_reason() is None, reason="this machine has a GPU")
def test_without_a_gpu_it_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_main(capsys)
    assert code == gpu_check.EXIT_MISSING
    assert "- GPU: " in err and ("NVIDIA driver" in err or "CUDA GPU" in err or "cuda-python" in err)


@pytest.mark.gpu
@pytest.mark.skipif(cr.unavailable_reason() is not None, reason=f"needs a CUDA GPU: {cr.unavailable_reason()}")
@pytest.mark.skipif(not _tensorrt_missing(), reason="TensorRT is installed here; the check would run for real")
def test_on_a_gpu_without_tensorrt_it_names_tensorrt(capsys: pytest.CaptureFixture[str]) -> None:
    code, records, _ = _run_main(capsys)
    assert code == gpu_check.EXIT_MISSING
    missing = records[0]["missing"]
    assert any(line.startswith("TensorRT: TensorRT is not installed") for line in missing)
    assert not any(line.startswith("GPU: ") for line in missing)


def test_missing_files_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["--engine", str(tmp_path / "e.engine"), "--onnx", EXISTING, "--model", "m", "--data", EXISTING]
    code = gpu_check.main(args)
    _, err = capsys.readouterr()
    assert code == gpu_check.EXIT_MISSING
    assert f"file: --engine {tmp_path / 'e.engine'} does not exist" in err


class Reference:
    """Deterministic stand-in logits: a fixed function of the token ids."""

    def run(self, batch: ModelBatch, profile: int = 0) -> tuple[np.ndarray, np.ndarray]:
        ids = batch.input_ids.astype(np.float32)
        return np.sin(ids * 0.37) * 5, np.cos(ids * 0.11) * 5


class ScaledSession(Reference):
    """The reference scaled by (1 + 1e-3): rel. error 1e-3, and every answer ranking unchanged."""

    profiles: list[ProfileSpec] = profiles_for_buckets((128, 256, 384), 1, 8, 16)
    max_batch = 16

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def run(self, batch: ModelBatch, profile: int = 0) -> tuple[np.ndarray, np.ndarray]:
        self.shapes.append(batch.shape)
        start, end = super().run(batch, profile)
        return start * 1.001, end * 1.001


def test_run_check_reports_error_agreement_and_speed(model_dir: Path, squad_a: Path) -> None:
    pytest.importorskip("transformers")
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    examples = load_examples(str(squad_a))[:6]
    session = ScaledSession()
    records = gpu_check.run_check(session, Reference(), WindowMaker(load_tokenizer(model_dir)), examples, repeats=1)
    accuracy, answers, speed = records
    assert accuracy["event"] == "accuracy" and accuracy["windows"] >= 6
    assert accuracy["rel_err"] == pytest.approx(1e-3, rel=1e-3)
    assert answers["questions"] == 6 and answers["agreement"] == 1.0
    assert answers["engine_scores"] == answers["reference_scores"]
    assert speed["engine_windows_per_s"] > 0 and speed["pipeline_questions_per_s"] > 0
    assert all(s[0] <= 16 and s[1] <= 384 and s[1] % 8 == 0 for s in session.shapes)  # planned: longest, x8
