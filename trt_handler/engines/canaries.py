"""Canary questions: a few questions an export answers with its checkpoint and records, so that a model
loaded later (bundle, engine, checkpoint) is proven to answer them the same before data flows.

A record (``export.json`` / engine sidecar, key ``"canaries"``) holds the sha256 of the token ids the
tokenizer made of every candidate question (which proves the tokenizer without running the model) and
up to :data:`MAX_CANARIES` questions with the answer the checkpoint gave, chosen where that answer wins
by a clear margin (so fp16 or int8 arithmetic does not flip it). A shuffled vocabulary, a tokenizer that
lowercases differently or other weights change the ids or the answers; :func:`replay` says which.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from trt_handler.qa.answers import AnswerConfig, extract_answers
from trt_handler.qa.batching import pad_windows
from trt_handler.qa.types import Answer, ModelBatch, QAExample, QuestionWindows, WindowLogits
from trt_handler.qa.windows import FeatureConfig, WindowMaker

__all__ = ["CANDIDATES", "MAX_CANARIES", "CanaryError", "canary_questions", "make_record", "onnx_answers",
           "padded_answers", "replay"]

MAX_CANARIES = 4
# The winning answer's score must beat the runner-up (another text, or no answer) by this many logits.
MARGIN = 1.5

# (id, question, context): short passages written for this check, with proper names (case matters).
CANDIDATES: tuple[tuple[str, str, str], ...] = (
    ("canary-curie", "In which city was Marie Curie born?",
     "Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics and chemistry, and she later "
     "won two Nobel Prizes."),
    ("canary-kilimanjaro", "In which country is Mount Kilimanjaro?",
     "Mount Kilimanjaro is the highest mountain in Africa. It lies in Tanzania, close to the border with Kenya, "
     "and its summit is covered by glaciers."),
    ("canary-apollo", "Who walked on the Moon with Neil Armstrong?",
     "The first Moon landing took place in July 1969, when Neil Armstrong and Buzz Aldrin of the Apollo 11 crew "
     "walked on the lunar surface while Michael Collins stayed in orbit."),
    ("canary-boiling", "At what temperature does water boil at sea level?",
     "Water boils at 100 degrees Celsius at sea level. Higher up the air pressure is lower, so in the mountains "
     "water boils at a lower temperature."),
    ("canary-amazon", "Which ocean does the Amazon River flow into?",
     "The Amazon River rises in the Andes of Peru and flows east through Brazil into the Atlantic Ocean. It "
     "carries more water than any other river on Earth."),
    ("canary-ming", "During which dynasty were the best-known parts of the Great Wall built?",
     "The Great Wall of China was built over many centuries to protect Chinese states from raids. Its best-known "
     "parts were built during the Ming dynasty, mostly of brick and stone."),
    ("canary-bell", "Who is credited with inventing the telephone?",
     "Alexander Graham Bell is credited with inventing the telephone in 1876. He was born in Edinburgh, Scotland, "
     "and later lived in Canada and the United States."),
    ("canary-everest", "How high is the summit of Mount Everest?",
     "Mount Everest, on the border between Nepal and China, is the highest mountain above sea level. Its summit "
     "is 8,849 metres high."),
    ("canary-athens", "Where were the first modern Olympic Games held?",
     "The first modern Olympic Games were held in Athens in 1896. Athletes from fourteen nations took part in "
     "them."),
    ("canary-library", "How many books does the library hold?",
     "The town library opens at nine in the morning and closes at six in the evening on weekdays. On Saturdays "
     "it closes at noon."),
)

# Windows are made with these settings whatever a run uses (the contexts fit one window).
_FEATURES = FeatureConfig(max_seq_length=384, doc_stride=128, max_query_length=64)
_ANSWERS = AnswerConfig()

# Padded batch -> (start logits, end logits), each float32 [batch, seq].
RunBatch = Callable[[ModelBatch], tuple[Any, Any]]
# Questions -> their answers (or the exception one raised), in order: answer_batch's contract.
AnswerFn = Callable[[Sequence[QuestionWindows]], Sequence[Any]]


class CanaryError(ValueError):
    """A model or tokenizer that does not give the recorded canary answers; the message says which differ."""


def canary_questions(tokenizer: Any, candidates: Sequence[tuple[str, str, str]] = CANDIDATES) -> list[QuestionWindows]:
    """The candidate questions as QuestionWindows, made by ``tokenizer`` (a fast tokenizer)."""
    examples = [QAExample(qid, question, context) for qid, question, context in candidates]
    out = []
    for ex, windows in zip(examples, WindowMaker(tokenizer, _FEATURES).windows_many(examples)):
        if isinstance(windows, Exception):
            raise CanaryError(f"the tokenizer cannot make windows of canary question {ex.id!r}: {windows}")
        out.append(QuestionWindows(ex, tuple(windows), raw=ex.id))
    return out


def ids_sha256(questions: Sequence[QuestionWindows]) -> str:
    """sha256 of the questions' token ids and type ids, window by window."""
    h = hashlib.sha256()
    for q in questions:
        for w in q.windows:
            h.update(np.asarray(w.input_ids, dtype=np.int32).tobytes())
            h.update(np.asarray(w.token_type_ids, dtype=np.int32).tobytes())
            h.update(b"|")
    return h.hexdigest()


def padded_answers(run: RunBatch) -> AnswerFn:
    """An AnswerFn over a runner that takes any shape (PyTorch, ONNX Runtime): all windows in one call."""

    def answer(questions: Sequence[QuestionWindows]) -> list[Any]:
        windows = [w for q in questions for w in q.windows]
        start, end = (np.asarray(x, dtype=np.float32) for x in run(pad_windows(windows)))
        logits = iter(WindowLogits(start[i, :w.length].copy(), end[i, :w.length].copy()) for i, w in enumerate(windows))
        return extract_answers([(q.example, q.windows, [next(logits) for _ in q.windows]) for q in questions], _ANSWERS)

    return answer


def onnx_answers(onnx_path: str) -> AnswerFn:
    """An AnswerFn over ONNX Runtime on the CPU (a bundle's model.onnx)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    from trt_handler.qa.types import OUTPUT_NAMES

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return padded_answers(lambda batch: tuple(session.run(list(OUTPUT_NAMES), batch.as_feed())))


def _margin(answer: Answer) -> float:
    """How far the answer beats the best other text and the no-answer choice (logits)."""
    others = [c["score"] for c in answer.n_best if c["text"] != answer.text and c["text"]]
    null_gap = abs(answer.score - answer.null_score)
    runner_up = answer.score - max(others) if others and not answer.is_no_answer else float("inf")
    return float(min(null_gap, runner_up))


def make_record(tokenizer: Any, answer_fn: AnswerFn, made_with: str) -> dict[str, Any]:
    """The canary record of a model: the candidates' ids sha256 and the clear-margin answers ``answer_fn`` gives."""
    questions = canary_questions(tokenizer)
    answers = answer_fn(questions)
    chosen: list[dict[str, Any]] = []
    for q, a in zip(questions, answers):
        if isinstance(a, Answer) and _margin(a) >= MARGIN and len(chosen) < MAX_CANARIES:
            chosen.append({"id": q.example.id, "question": q.example.question, "context": q.example.context,
                           "answer": a.text, "start_char": a.start_char, "end_char": a.end_char})
    return {
        "ids_sha256": ids_sha256(questions),
        "candidates": [list(c) for c in CANDIDATES],
        "feature_config": {"max_seq_length": _FEATURES.max_seq_length, "doc_stride": _FEATURES.doc_stride,
                           "max_query_length": _FEATURES.max_query_length},
        "questions": chosen,
        "made_with": made_with,
    }


def replay(record: Mapping[str, Any], tokenizer: Any, answer_fn: AnswerFn | None, where: str) -> int:
    """CanaryError unless ``tokenizer`` makes the recorded token ids and (``answer_fn`` given) the model
    gives the recorded answers; returns how many answers were compared."""
    if not isinstance(record, Mapping) or not isinstance(record.get("questions"), list):
        raise CanaryError(f"{where} has an unreadable canary record; export or build the model again")
    candidates = record.get("candidates")
    if isinstance(candidates, list) and candidates:
        got = ids_sha256(canary_questions(tokenizer, [tuple(c) for c in candidates]))
        if got != record.get("ids_sha256"):
            raise CanaryError(
                f"the tokenizer does not make the token ids {where} recorded for its canary questions (sha256 "
                f"{got[:12]}..., recorded {str(record.get('ids_sha256'))[:12]}...): it is not the tokenizer the model "
                "was exported with (another vocabulary order, other casing or normalization, another version of it). "
                "Fix: use the tokenizer files the model was exported with."
            )
    if answer_fn is None or not record["questions"]:
        return 0
    recorded = record["questions"]
    questions = canary_questions(tokenizer, [(r["id"], r["question"], r["context"]) for r in recorded])
    differ = []
    for r, a in zip(recorded, answer_fn(questions)):
        text, span = (a.text, (a.start_char, a.end_char)) if isinstance(a, Answer) else (f"<{a}>", None)
        if text != r["answer"] or span != (r["start_char"], r["end_char"]):
            differ.append(f"{r['question']!r} -> {text!r}, recorded {r['answer']!r}")
    if differ:
        raise CanaryError(
            f"the model does not give the answers {where} recorded for its canary questions ({len(differ)} of "
            f"{len(recorded)} differ: {'; '.join(differ)}); its weights or its tokenizer are not the ones it was "
            "exported with. Fix: use the model files and tokenizer as exported, or export / build it again."
        )
    return len(recorded)
