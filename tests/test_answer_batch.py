"""answer_batch: the one path from questions' windows to answers (planning, model calls, answers).

Planning and running are checked with a stand-in runner whose logits are a function of its input
(start = token id, end = -token id, written into ONE reused buffer as an engine's outputs are),
so every window's logits can be traced back to it and every call's shape is recorded. Answers
are checked with the real MiniLM model on ONNX Runtime against a different path: each window run
alone, unpadded, and answered one question at a time by ``extract_answer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

import numpy as np
import pytest

from tests.helpers import coded_question, coded_window
from trt_handler.answer_batch import PlannedRunner, answer_batch, run_model_calls
from trt_handler.planning import BatchPlan, ModelCall, ProfileSpec, plan_model_calls
from trt_handler.qa.answers import AnswerConfig, extract_answer
from trt_handler.qa.types import Answer, ModelBatch, QAExample, QuestionWindows, Window

make_window, make_question = coded_window, coded_question


class EchoRunner:
    """start = ids, end = -ids (or +ids), in one reused output buffer; records every call's shape
    and mask. With end = +ids the best span is a question's last context token."""

    def __init__(self, end_sign: int = -1) -> None:
        self.end_sign = end_sign
        self.shapes: List[Tuple[int, int]] = []
        self.masks: List[np.ndarray] = []
        self._buffer = np.zeros((2, 512, 512), dtype=np.float32)

    def run(self, batch: ModelBatch, profile: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        b, s = batch.shape
        self.shapes.append((b, s))
        self.masks.append(batch.attention_mask.copy())
        self._buffer[0, :b, :s] = batch.input_ids
        self._buffer[1, :b, :s] = self.end_sign * batch.input_ids
        return self._buffer[0, :b, :s], self._buffer[1, :b, :s]


def plan(*profiles: ProfileSpec, max_batch: int = 64, pad_to: str = "longest") -> BatchPlan:
    return BatchPlan(tuple(profiles), max_batch=max_batch, pad_to=pad_to)


# --------------------------------------------------------------------------------------------
# planning


def test_calls_are_sorted_by_length_padded_to_the_longest_rounded_up_and_capped() -> None:
    p = BatchPlan.for_buckets((128, 256, 384), max_batch=2)
    lengths = [10, 300, 130, 20, 384, 129, 128, 5]
    calls = plan_model_calls(lengths, p)
    # sorted: 5(7) 10(0) | 20(3) 128(6) | 129(5) 130(2) | 300(1) 384(4); no call straddles a bucket
    assert [(c.indices, c.shape) for c in calls] == [
        ((0, 7), (2, 16)), ((3, 6), (2, 128)), ((2, 5), (2, 136)), ((1, 4), (2, 384))]
    bucket = plan_model_calls(lengths, BatchPlan.for_buckets((128, 256, 384), max_batch=2, pad_to="bucket"))
    assert [c.shape for c in bucket] == [(2, 128), (2, 128), (2, 256), (2, 384)]


def test_every_window_is_in_exactly_one_call_within_its_profile_limits() -> None:
    rng = np.random.default_rng(1)
    profiles = (ProfileSpec(1, 8, 48, 1, 128, 128), ProfileSpec(1, 8, 24, 129, 256, 256),
                ProfileSpec(2, 8, 16, 257, 384, 384))
    for trial in range(20):
        lengths = rng.integers(1, 385, size=int(rng.integers(1, 300))).tolist()
        calls = plan_model_calls(lengths, plan(*profiles, pad_to="longest" if trial % 2 else "bucket"))
        assert sorted(i for c in calls for i in c.indices) == list(range(len(lengths)))
        for c in calls:
            prof = profiles[c.profile]
            assert prof.accepts(c.rows, c.seq_len)
            assert all(lengths[i] <= c.seq_len for i in c.indices)
            assert len(c.indices) <= prof.max_batch and c.rows >= prof.min_batch


def test_token_budget_gives_short_buckets_more_rows() -> None:
    p = BatchPlan.for_buckets((128, 384), max_batch=256, max_tokens=128 * 64)
    assert [q.max_batch for q in p.profiles] == [64, 16]  # rows rounded down to a multiple of 8
    calls = plan_model_calls([100] * 70 + [300] * 30, p)
    assert [len(c.indices) for c in calls] == [64, 16, 16, 4]  # the second reaches into the 384 bucket: 16 rows


def test_filler_rows_meet_a_profiles_min_batch() -> None:
    p = plan(ProfileSpec(1, 2, 3, 1, 96, 128), ProfileSpec(2, 4, 8, 129, 300, 384), pad_to="bucket")
    runner = EchoRunner()
    windows = [make_window(f"q{i}", n, i) for i, n in enumerate([40, 200, 90, 10, 30, 120])]
    logits = run_model_calls(windows, plan_model_calls([w.length for w in windows], p), runner)
    # <=128: five windows, padded to opt 96 unless longer (120 is), split at max batch 3; 129-384:
    # one window padded to opt 300 plus one filler row (min batch 2) holding one unmasked token
    assert runner.shapes == [(3, 96), (2, 120), (2, 300)]
    assert runner.masks[-1][1].tolist()[:2] == [1, 0]
    for w, lg in zip(windows, logits):  # copies of the reused buffer, in input order
        np.testing.assert_array_equal(lg.start_logits, w.input_ids.astype(np.float32))
        np.testing.assert_array_equal(lg.end_logits, -w.input_ids.astype(np.float32))


def test_too_long_windows_and_unfit_profiles_are_errors() -> None:
    with pytest.raises(ValueError, match=r"window #1 has 400 tokens, more than the longest profile \(384\)"):
        plan_model_calls([100, 400], BatchPlan.for_buckets())
    # below every profile's min_seq: padded up to the smallest legal length; a min_batch above
    # max_batch gets filler rows
    assert [c.shape for c in plan_model_calls([100], plan(ProfileSpec(1, 1, 8, 129, 256, 384)))] == [(1, 129)]
    assert [c.shape for c in plan_model_calls([100], plan(ProfileSpec(4, 4, 8, 1, 128, 128), max_batch=2))] \
        == [(4, 104)]
    for bad in ({"max_batch": 0}, {"pad_to": "max"}):
        with pytest.raises(ValueError, match="max_batch must be a positive int|pad_to must be one of"):
            BatchPlan.for_buckets(**bad)


def test_bad_runner_output_is_reported() -> None:
    class Truncating(EchoRunner):
        def run(self, batch: ModelBatch, profile: int = 0) -> Tuple[np.ndarray, np.ndarray]:
            start, end = super().run(batch, profile)
            return start[:, :-1], end[:, :-1]

    with pytest.raises(RuntimeError, match=r"logits of shapes \(1, 7\).*input of shape \(1, 8\)"):
        answer_batch([make_question("q", 5)], PlannedRunner(Truncating(), BatchPlan.for_buckets()))


class Pending:
    def __init__(self, log: List[str], n: int, value: Tuple[np.ndarray, np.ndarray]) -> None:
        self._log, self._n, self._value = log, n, value

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        self._log.append(f"result{self._n}")
        return self._value


class AsyncRunner(EchoRunner):
    """A runner with submit(): the planner must pad and submit call k+1 before it waits for k."""

    def __init__(self) -> None:
        super().__init__(end_sign=1)
        self.log: List[str] = []

    def submit(self, batch: ModelBatch, profile: int = 0) -> Pending:
        n = len(self.shapes)
        start, end = self.run(batch, profile)
        self.log.append(f"submit{n}")
        return Pending(self.log, n, (start.copy(), end.copy()))


def test_a_submit_runner_overlaps_the_next_call_with_the_current_one() -> None:
    runner = AsyncRunner()
    questions = [make_question(f"q{i}", 10 + 100 * (i % 3)) for i in range(9)]
    recorded: List[Tuple[ModelCall, int, int]] = []
    outcomes = answer_batch(questions, PlannedRunner(runner, BatchPlan.for_buckets(max_batch=2),
                                                     record=lambda c, real, us: recorded.append((c, real, us))))
    # 5 calls: three of bucket 128 (lengths 10, 110), two of bucket 256 (length 210)
    assert runner.log == ["submit0", "submit1", "result0", "submit2", "result1", "submit3", "result2",
                          "submit4", "result3", "result4"]
    assert sum(real for _, real, _ in recorded) == sum(q.tokens for q in questions)
    assert all(isinstance(o, Answer) for o in outcomes)
    sync = answer_batch(questions, PlannedRunner(EchoRunner(end_sign=1), BatchPlan.for_buckets(max_batch=2)))
    assert [(a.text, a.score) for a in outcomes] == [(a.text, a.score) for a in sync]  # type: ignore[union-attr]


def test_a_bad_question_fails_alone() -> None:
    class NanForOne(EchoRunner):
        def run(self, batch: ModelBatch, profile: int = 0) -> Tuple[np.ndarray, np.ndarray]:
            start, end = super().run(batch, profile)
            start, end = start.copy(), end.copy()
            start[batch.input_ids == 1000 + 4] = np.nan  # token 4 of every window 0
            return start, end

    good, bad = make_question("good", 4), make_question("bad", 12)  # "good" has no token 4
    outcomes = answer_batch([good, bad, good], PlannedRunner(NanForOne(end_sign=1), BatchPlan.for_buckets()))
    assert isinstance(outcomes[0], Answer) and isinstance(outcomes[2], Answer)
    assert isinstance(outcomes[1], ValueError) and "bad" in str(outcomes[1])
    assert answer_batch([], PlannedRunner(EchoRunner(), BatchPlan.for_buckets())) == []


# --------------------------------------------------------------------------------------------
# answers with the real model


@pytest.fixture(scope="module")
def real_questions(model_dir: Path, b1_examples: List[QAExample]) -> Tuple[Any, List[QuestionWindows]]:
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    maker = WindowMaker(load_tokenizer(model_dir))
    contexts = list(dict.fromkeys(ex.context for ex in b1_examples))
    long = [QAExample(f"long{i}", b1_examples[i].question, " ".join(contexts[3 * i:3 * i + 3])) for i in range(4)]
    examples = b1_examples[:30] + long
    return maker, [QuestionWindows(ex, tuple(ws)) for ex, ws in zip(examples, maker.windows_many(examples))]


@pytest.fixture(scope="module")
def onnx_runner(model_dir: Path, test_cache: Path) -> Any:
    from trt_handler.backends.onnx_runner import OnnxRunner
    from trt_handler.engines.export import BUNDLE_ONNX, resolve_model_bundle

    return OnnxRunner(resolve_model_bundle(model_dir, test_cache) / BUNDLE_ONNX, intra_op_threads=1)


def _alone(runner: Any, w: Window) -> Any:
    from trt_handler.qa.types import WindowLogits

    start, end = runner.run(ModelBatch(w.input_ids[None], np.ones((1, w.length), np.int32), w.token_type_ids[None]))
    return WindowLogits(start[0], end[0])


@pytest.mark.parametrize("pad_to", ["longest", "bucket"])
def test_batched_answers_equal_one_question_at_a_time_unpadded(
        real_questions: Tuple[Any, List[QuestionWindows]], onnx_runner: Any, pad_to: str) -> None:
    _, questions = real_questions
    assert any(q.num_windows > 1 for q in questions)
    config = AnswerConfig()
    got = answer_batch(questions, PlannedRunner(onnx_runner, BatchPlan.for_buckets(max_batch=8, pad_to=pad_to)), config)
    for q, a in zip(questions, got):
        want = extract_answer(q.example, q.windows, [_alone(onnx_runner, w) for w in q.windows], config)
        assert isinstance(a, Answer)
        assert (a.id, a.text, a.window_index) == (want.id, want.text, want.window_index)
        assert a.score == pytest.approx(want.score, abs=1e-3)
        assert a.null_score == pytest.approx(want.null_score, abs=1e-3)


def test_one_profile_caps_every_call(real_questions: Tuple[Any, List[QuestionWindows]]) -> None:
    _, questions = real_questions
    runner = EchoRunner()
    answer_batch(questions, PlannedRunner(runner, plan(ProfileSpec(1, 4, 4, 1, 384, 384))))
    assert all(b <= 4 for b, _ in runner.shapes)
    assert sum(b for b, _ in runner.shapes) == sum(q.num_windows for q in questions)


def test_batches_of_cuts_consecutive_questions_by_window_count() -> None:
    from trt_handler.answer_batch import batches_of

    questions = [make_question(f"q{i}", *([10] * n)) for i, n in enumerate([1, 2, 3, 1, 1, 4, 2])]
    parts = batches_of(questions, 4)
    assert [[q.example.id for q in p] for p in parts] == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["q6"]]
    assert [q for p in parts for q in p] == questions and batches_of([], 4) == []
