"""Shared fixtures. The suite runs on a fresh clone: with ../shared (SQuAD splits, the MiniLM QA
checkpoint) it uses those; without it, it falls back to what the repository carries:

==============  =============================================  ==============================================
fixture         with ../shared                                 without (fresh clone)
==============  =============================================  ==============================================
model_dir       shared fp16 checkpoint minilm-l6-squad2        a float32 checkpoint rebuilt from the bundled
                                                               int8 model (models/bundle_to_checkpoint.py),
                                                               cached under TEST_CACHE/checkpoints/
tokenizer       shared checkpoint's tokenizer                  the bundled model's tokenizer (same files)
squad_b1        squad_B1.json (12 articles, 4,194 questions)   tests/data/squad_B1_sample.json (2 B1 articles)
b1_examples     its questions as QAExamples                    the same, from the sample
squad_a         squad_A.json                                   tests/data/squad_A_sample.json (12 paragraphs)
shared_*        the shared files                               skip: "needs ../shared"
==============  =============================================  ==============================================

Tests over a *whole* split (counts, accuracy vs the model card) cannot run on a sample: they are
listed in WHOLE_SPLIT_TESTS (or marked ``needs_shared``) and skip with that reason when ../shared
is missing. Set TRT_QA_SHARED=/nonexistent to see how a fresh clone runs. The product never reads
../shared.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRT_QA_SHARED", REPO.parent / "shared"))
MODEL_DIR = SHARED / "models" / "minilm-l6-squad2"
SQUAD_A = SHARED / "data" / "squad" / "squad_A.json"
SQUAD_B1 = SHARED / "data" / "squad" / "squad_B1.json"
# Committed with the repository (see tests/data/README.md and models/minilm-l6-squad2/MODEL_CARD.md).
DATA = REPO / "tests" / "data"
SQUAD_A_SAMPLE = DATA / "squad_A_sample.json"
SQUAD_B1_SAMPLE = DATA / "squad_B1_sample.json"
BUNDLED_MODEL = REPO / "models" / "minilm-l6-squad2"
# Exports and engines made from the shared model are cached here across test sessions.
TEST_CACHE = Path(os.environ.get("TRT_QA_TEST_CACHE", REPO / "cache" / "tests"))

# Tests whose assertions are about a whole shared split (question counts, model-card accuracy);
# on the committed samples they would be meaningless, so without ../shared they skip.
WHOLE_SPLIT_TESTS = {
    "test_squad_b1_counts_match_the_model_card",  # test_squad_data.py: B1 has 4,194 questions
    "test_b1_metric_matches_model_card",  # test_accuracy_full.py: EM/F1 on all of B1 vs eval.json
}
_NEEDS_SHARED = f"needs the whole shared split / checkpoint at {SHARED} (set TRT_QA_SHARED)"


def have_shared() -> bool:
    return MODEL_DIR.is_dir() and SQUAD_B1.is_file()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_shared: needs ../shared (whole SQuAD splits, the shared checkpoint)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if have_shared():
        return
    skip = pytest.mark.skip(reason=_NEEDS_SHARED)
    for item in items:
        if item.originalname in WHOLE_SPLIT_TESTS or item.get_closest_marker("needs_shared"):
            item.add_marker(skip)


def _shared_or(path: Path, fallback: Path) -> Path:
    if path.exists():
        return path
    if not fallback.exists():
        pytest.skip(f"neither shared data at {path} nor the committed fallback {fallback}")
    return fallback


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set TRT_QA_SHARED)")
    return path


def load_models_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bundled_{name}", REPO / "models" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def test_cache() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The repository's int8 ONNX model bundle (the default MODEL of `make run`)."""
    if not (BUNDLED_MODEL / "model.onnx").is_file():
        pytest.skip(f"bundled model missing at {BUNDLED_MODEL}")
    return BUNDLED_MODEL


@pytest.fixture(scope="session")
def shared_model_dir() -> Path:
    """The shared fp16 Hugging Face checkpoint itself (with its eval.json); skips without ../shared."""
    return _need(MODEL_DIR)


@pytest.fixture(scope="session")
def model_dir(test_cache: Path) -> Path:
    """A Hugging Face QA checkpoint folder (weights + config + tokenizer).

    The shared checkpoint when ../shared exists; otherwise a float32 checkpoint rebuilt from the
    bundled int8 model's weights (same architecture and vocabulary, int8-rounded weights; no
    eval.json, so model-card accuracy does not apply to it).
    """
    if MODEL_DIR.is_dir():
        return MODEL_DIR
    if not (BUNDLED_MODEL / "model.onnx").is_file():
        pytest.skip(f"no shared checkpoint at {MODEL_DIR} and no bundled model at {BUNDLED_MODEL}")
    pytest.importorskip("torch", reason="rebuilding a checkpoint from the bundled model needs torch")
    rebuild = load_models_module("bundle_to_checkpoint")
    return rebuild.checkpoint_from_bundle(BUNDLED_MODEL, test_cache / "checkpoints" / "minilm-l6-squad2-int8-rebuilt")


@pytest.fixture(scope="session")
def squad_a() -> Path:
    return _shared_or(SQUAD_A, SQUAD_A_SAMPLE)


@pytest.fixture(scope="session")
def squad_b1() -> Path:
    return _shared_or(SQUAD_B1, SQUAD_B1_SAMPLE)


@pytest.fixture(scope="session")
def shared_squad_b1() -> Path:
    """All of split B1; skips without ../shared (for whole-split runs)."""
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
def tokenizer():
    """The MiniLM model's fast tokenizer (shared checkpoint, else the bundled model's identical files)."""
    from trt_handler.qa.windows import load_tokenizer

    if MODEL_DIR.is_dir():
        return load_tokenizer(MODEL_DIR)
    if not (BUNDLED_MODEL / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer: neither {MODEL_DIR} nor {BUNDLED_MODEL}")
    return load_tokenizer(BUNDLED_MODEL)
