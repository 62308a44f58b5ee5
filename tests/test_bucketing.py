"""Length buckets: the bucket helpers, context sharing in the features, batched vs one-by-one
answer extraction, and the acceptance: answers with bucketing on are IDENTICAL to bucketing off
(ONNX Runtime, shared model, a B1 subset with multi-window questions; the full B1 run is
``python -m benchmarks.check_bucketing_identical``). How a batch becomes model calls is tested in
tests/test_answer_batch.py.

Correctness only: no timing is asserted here (the figures come from ``benchmarks/``).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

from trt_handler.qa.batching import (
    padded_tokens,
    suggest_buckets,
    uniform_buckets,
)
from trt_handler.qa.types import QAExample, Window, WindowLogits

BUCKETS = (128, 256, 384)


def make_window(example_id: str, length: int, index: int = 0, num: int = 1) -> Window:
    ids = (np.arange(length, dtype=np.int32) + 1000 * (index + 1)) % 30000
    zeros = np.zeros(length, dtype=np.int32)
    return Window(example_id, index, ids, zeros, np.full((length, 2), -1, np.int32),
                  zeros.astype(bool), zeros.astype(bool))


# --------------------------------------------------------------------------------------------
# helpers in trt_handler.qa.batching


def test_uniform_and_padded_tokens() -> None:
    assert uniform_buckets(64, 384) == (64, 128, 192, 256, 320, 384)
    assert uniform_buckets(100, 384) == (100, 200, 300, 384)
    assert padded_tokens([1, 128, 129, 384], BUCKETS) == 128 + 128 + 256 + 384
    with pytest.raises(ValueError):
        padded_tokens([385], BUCKETS)


def test_suggest_buckets_is_the_optimum() -> None:
    rng = np.random.default_rng(3)
    lengths = [int(x) for x in np.clip(rng.normal(170, 60, 500), 20, 384)]
    cands = list(range(32, 384, 32))
    for count in (1, 2, 3, 4):
        got = suggest_buckets(lengths, count, 384, 32)
        assert got[-1] == 384 and len(got) <= count and all(b % 32 == 0 for b in got)
        brute = min(padded_tokens(lengths, (*c, 384)) for c in itertools.combinations(cands, count - 1))
        assert padded_tokens(lengths, got) == brute


# --------------------------------------------------------------------------------------------
# features: a context shared by several questions is tokenized once


def test_windows_many_tokenizes_a_shared_context_once(model_dir: Path) -> None:
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    maker = WindowMaker(load_tokenizer(model_dir))
    seen: List[List[str]] = []
    real = maker._tokenizer

    class Counting:
        def encode_batch(self, texts: List[str], **kw: Any) -> Any:
            seen.append(list(texts))
            return real.encode_batch(texts, **kw)

        def encode_batch_fast(self, texts: List[str], **kw: Any) -> Any:
            return real.encode_batch_fast(texts, **kw)

    context = "Ada Lovelace wrote the first program. She worked with Charles Babbage."
    examples = [QAExample(f"q{i}", q, context) for i, q in enumerate(["Who wrote it?", "With whom?", "What?"])]
    examples.append(QAExample("other", "Who?", "Someone else entirely."))
    expected = [maker.windows(ex) for ex in examples]
    maker._tokenizer = Counting()  # type: ignore[assignment]
    got = maker.windows_many(examples)
    assert seen == [[context, "Someone else entirely."]]  # one batched call, each context once
    for ws, ref in zip(got, expected):
        assert isinstance(ws, list)
        for a, b in zip(ws, ref):
            np.testing.assert_array_equal(a.input_ids, b.input_ids)
            np.testing.assert_array_equal(a.offsets, b.offsets)


# --------------------------------------------------------------------------------------------
# answers: the batched extraction gives the same answers


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return bool(a == b)


def test_extract_answers_equals_extract_answer_on_real_windows(model_dir: Path, squad_b1: Path) -> None:
    from trt_handler.qa.answers import AnswerConfig, extract_answer, extract_answers
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    examples = load_examples(squad_b1)[:400]
    windows = WindowMaker(load_tokenizer(model_dir)).windows_many(examples)
    rng = np.random.default_rng(0)
    items = [(ex, ws, [WindowLogits(rng.normal(size=w.length).astype(np.float32) * 3,
                                    rng.normal(size=w.length).astype(np.float32) * 3) for w in ws])
             for ex, ws in zip(examples, windows)]
    for config in (AnswerConfig(), AnswerConfig(n_best=1), AnswerConfig(n_best=5, max_answer_length=3),
                   AnswerConfig(version_2_with_negative=False)):
        one = []
        for ex, ws, lg in items:
            try:
                one.append(extract_answer(ex, ws, lg, config))
            except ValueError as err:
                one.append(err)
        many = [a for i in range(0, len(items), 64) for a in extract_answers(items[i:i + 64], config)]
        assert all(_same(a, b) for a, b in zip(one, many))


def test_extract_answers_equals_extract_answer_with_ties_and_repeated_texts() -> None:
    """Integer logits (many ties) over contexts of repeated words (many equal texts)."""
    from trt_handler.qa.answers import AnswerConfig, extract_answer, extract_answers

    rng = np.random.default_rng(1)
    pick = random.Random(0)
    items = []
    for q in range(400):
        n_tok, n_win = pick.randint(1, 60), pick.choice([1, 1, 2, 3])
        words = [pick.choice(["cat", "and", "dog", "the", "a"]) for _ in range(n_tok)]
        spans, at = [], 0
        for word in words:
            spans.append((at, at + len(word)))
            at += len(word) + 1
        windows, logits = [], []
        for i in range(n_win):
            length = 4 + n_tok + 1
            offsets = np.full((length, 2), -1, np.int32)
            offsets[4:-1] = spans
            is_context = np.zeros(length, bool)
            is_context[4:-1] = True
            max_context = is_context.copy()
            if n_win > 1:
                max_context[4:-1] = rng.random(n_tok) < 0.5
            windows.append(Window(f"q{q}", i, np.arange(length, dtype=np.int32), np.zeros(length, np.int32),
                                  offsets, is_context, max_context))
            logits.append(WindowLogits(rng.integers(-3, 4, length).astype(np.float32),
                                       rng.integers(-3, 4, length).astype(np.float32)))
        order = list(range(n_win))
        pick.shuffle(order)  # any window order
        items.append((QAExample(f"q{q}", "?", " ".join(words)), [windows[i] for i in order], [logits[i] for i in order]))
    for config in (AnswerConfig(), AnswerConfig(n_best=3), AnswerConfig(n_best=1, max_answer_length=2)):
        one = []
        for ex, ws, lg in items:
            try:
                one.append(extract_answer(ex, ws, lg, config))
            except ValueError as err:
                one.append(err)
        many = [a for i in range(0, len(items), 37) for a in extract_answers(items[i:i + 37], config)]
        assert all(_same(a, b) for a, b in zip(one, many))


def test_extract_answers_isolates_bad_questions() -> None:
    from trt_handler.qa.answers import extract_answers

    ex = QAExample("a", "?", "cat and dog")
    w = Window("a", 0, np.arange(8, dtype=np.int32), np.zeros(8, np.int32),
               np.array([[-1, -1]] * 4 + [[0, 3], [4, 7], [8, 11], [-1, -1]], np.int32),
               np.array([0, 0, 0, 0, 1, 1, 1, 0], bool), np.array([0, 0, 0, 0, 1, 1, 1, 0], bool))
    good = WindowLogits(np.arange(8, dtype=np.float32), np.arange(8, dtype=np.float32))
    nan = WindowLogits(np.full(8, np.nan, np.float32), np.zeros(8, np.float32))
    out = extract_answers([(ex, [w], [good]), (ex, [w], [nan]), (ex, [w], []), (ex, [w], [good])])
    assert out[0] == out[3] and out[0].text == "dog"
    assert isinstance(out[1], ValueError) and "NaN" in str(out[1])
    assert isinstance(out[2], ValueError) and "1 windows but 0 logits" in str(out[2])


# --------------------------------------------------------------------------------------------
# acceptance: identical answers with bucketing on and off (ONNX Runtime, shared model)


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> Path:
    from trt_handler.engines.export import resolve_model_bundle

    return resolve_model_bundle(model_dir, test_cache)


def test_bucketed_answers_identical_to_padded_on_b1_subset(bundle: Path, squad_b1: Path, test_cache: Path) -> None:
    from benchmarks.check_bucketing_identical import check

    results = check(str(squad_b1), str(bundle), str(test_cache), limit=150, multi=20, batch=64,
                    fine="128,160,192,224,288,384")
    assert [r["mode"] for r in results] == ["on", "on_fine"]
    for r in results:
        assert r["compared"] == 150 and r["multi_window_questions"] == 20
        assert r["engine_tokens_on"] < r["engine_tokens_off"]  # bucketing really padded less
        assert r["text_mismatches"] == 0, r["mismatched_ids"]
        assert r["best_span_mismatches"] == 0
        assert r["max_abs_logit_diff"] < 1e-3
