"""Shared fixtures. Tests may read ../shared (SQuAD splits, the MiniLM QA model); the product never does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRT_QA_SHARED", REPO.parent / "shared"))
MODEL_DIR = SHARED / "models" / "minilm-l6-squad2"
SQUAD_A = SHARED / "data" / "squad" / "squad_A.json"
SQUAD_B1 = SHARED / "data" / "squad" / "squad_B1.json"
# Exports and engines made from the shared model are cached here across test sessions.
TEST_CACHE = Path(os.environ.get("TRT_QA_TEST_CACHE", REPO / "cache" / "tests"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set TRT_QA_SHARED)")
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return _need(MODEL_DIR)


@pytest.fixture(scope="session")
def squad_a() -> Path:
    return _need(SQUAD_A)


@pytest.fixture(scope="session")
def squad_b1() -> Path:
    return _need(SQUAD_B1)


@pytest.fixture(scope="session")
def b1_examples(squad_b1: Path) -> list:
    """B1's questions as QAExamples (with gold answers), read with plain json rather than
    trt_handler.qa.reading, so tests of features and answers do not depend on the reader."""
    from trt_handler.qa.types import QAExample

    doc = json.loads(squad_b1.read_text(encoding="utf-8"))
    return [QAExample(qa["id"], qa["question"], para["context"],
                      tuple(a["text"] for a in qa["answers"]), qa.get("is_impossible"))
            for art in doc["data"] for para in art["paragraphs"] for qa in para["qas"]]


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    """The shared MiniLM model's fast tokenizer."""
    from trt_handler.qa.windows import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture(scope="session")
def test_cache() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE
