"""Start/end logits of all windows of one question -> the answer (SQuAD v1.1 and v2.0).

Follows BERT's ``run_squad.py`` ``write_predictions``: candidate spans from each window's ``n_best`` top
start and end logits, scored start + end logit; the v2 null score is the minimum over windows of the
[CLS] start + end logits; the answer is "" when null score - best span score > ``null_threshold``.
Deviations, on purpose: positions that cannot start/end a valid span are masked out BEFORE the top
``n_best`` (question tokens cannot crowd valid spans out); the text is the context slice between the
first token's start and the last token's end offset (as transformers, not ``get_final_text``); a
question without any valid span raises ValueError; ties at the top-``n_best`` cut keep the earliest
positions, so answers are deterministic.
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Tuple

import numpy as np

from trt_handler.qa.types import Answer, QAExample, Window, WindowLogits

__all__ = ["AnswerConfig", "Provenance", "QuestionLogits", "ServedAnswer", "align_span_to_words", "answers_from_logits",
           "extract_answer", "extract_answers", "with_provenance"]


@dataclass(frozen=True)
class AnswerConfig:
    """Answer selection settings; defaults are those of BERT's and transformers' SQuAD scripts.

    ``n_best``: candidate starts and ends per window, and the n-best list's size. ``null_threshold`` only
    matters for v2 (``version_2_with_negative``; False never answers ""). ``align_to_words`` widens every
    candidate span to whole words of the context (as Hugging Face's QA pipeline): "ashing" -> "Washington".
    """

    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0
    version_2_with_negative: bool = True
    align_to_words: bool = False

    def __post_init__(self) -> None:
        for name in ("n_best", "max_answer_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.align_to_words, bool):
            raise ValueError(f"align_to_words must be True or False, got {self.align_to_words!r}")
        if not math.isfinite(float(self.null_threshold)):
            raise ValueError(f"null_threshold must be a finite number, got {self.null_threshold!r}")


# Candidate rows converted to Python per question at a time: n_best + _CHUNK_EXTRA nearly always
# holds n_best distinct texts (only different tokens of the same character span share one).
_CHUNK_EXTRA = 4

Item = Tuple[QAExample, Sequence[Window], Sequence[WindowLogits]]
Pairs = list[Tuple[Window, WindowLogits]]


def _ordered(example: QAExample, windows: Sequence[Window], logits: Sequence[WindowLogits]) -> Pairs:
    """(window, logits) sorted by window_index, after checking they belong together (ValueError)."""
    if len(windows) != len(logits):
        raise ValueError(f"question {example.id!r}: got {len(windows)} windows but {len(logits)} "
                         "logits; pass one WindowLogits per window, in the same order")
    if not windows:
        raise ValueError(f"question {example.id!r}: no windows to answer from")
    pairs = sorted(zip(windows, logits), key=lambda p: p[0].window_index)
    if any(w.window_index != i for i, (w, _) in enumerate(pairs)):
        indices = [w.window_index for w, _ in pairs]
        raise ValueError(f"question {example.id!r}: got windows {indices}; pass all {len(pairs)} windows of a "
                         "question, numbered 0 .. n-1, to answer it")
    for w, lg in pairs:
        if w.example_id != example.id:
            raise ValueError(f"window of question {w.example_id!r} passed with question {example.id!r}")
        length = w.input_ids.shape[0]
        s_shape, e_shape = np.shape(lg.start_logits), np.shape(lg.end_logits)
        if s_shape != (length,) or e_shape != (length,):
            raise ValueError(f"question {example.id!r} window {w.window_index}: logits of shapes "
                             f"{s_shape}/{e_shape} for a window of {length} tokens; cut the "
                             "model output to the window's length")
    return pairs


def _top_k_sorted(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices of the ``k`` largest values, in ascending column order (of equal
    finite values at the cut, the earliest columns), and those values."""
    rows = np.arange(values.shape[0])[:, None]
    width = values.shape[1]
    if width <= k:
        return np.broadcast_to(np.arange(width), values.shape), values
    idx = np.argpartition(values, width - k, axis=1)[:, width - k:]
    kth = values[rows[:, 0], idx[:, 0]]
    # a value left out ties with the k-th exactly when more than k values are >= the k-th
    ties = np.isfinite(kth) & ((values >= kth[:, None]).sum(axis=1) > k)
    for row in np.flatnonzero(ties):  # rare: redo the row with a stable sort
        idx[row] = np.argsort(-values[row], kind="stable")[:k]
    idx.sort(axis=1)
    return idx, values[rows, idx]


class _Batch:
    """The windows of several questions, concatenated, with every valid candidate span, in (question,
    window, start, end token) order for stable tie-breaking. A window whose logits hold NaN or inf
    gives no candidates (its question is refused through ``finite``) and leaves the others alone."""

    def __init__(self, questions: list[tuple[QAExample, Pairs]], config: AnswerConfig):
        windows = [w for _, pairs in questions for w, _ in pairs]
        logits = [lg for _, pairs in questions for _, lg in pairs]
        m, n_q = len(windows), len(questions)
        lengths = np.fromiter((w.input_ids.shape[0] for w in windows), dtype=np.int64, count=m)
        row_start = np.cumsum(lengths) - lengths
        start = np.concatenate([lg.start_logits for lg in logits]).astype(np.float64, copy=False)
        end = np.concatenate([lg.end_logits for lg in logits]).astype(np.float64, copy=False)
        # per window: a sum of float32-range values is finite unless one of them is NaN or inf
        self.finite: list[bool] = np.isfinite(np.add.reduceat(start + end, row_start)).tolist()
        is_context = np.concatenate([w.is_context for w in windows])
        offsets = np.concatenate([w.offsets for w in windows])
        # [CLS] start and end logits of every window (the null candidates)
        self.null_start: list[float] = start[row_start].tolist()
        self.null_end: list[float] = end[row_start].tolist()
        # [start / end, window, token] logits, -inf where a token cannot start / end a span or is padding
        pad = np.full((2, m, int(lengths.max())), -np.inf)
        real = np.arange(pad.shape[2]) < lengths[:, None]
        pad[0][real] = np.where(is_context & np.concatenate([w.max_context for w in windows]), start, -np.inf)
        pad[1][real] = np.where(is_context, end, -np.inf)
        idx, val = _top_k_sorted(pad.reshape(2 * m, -1), config.n_best)
        (s_idx, e_idx), (s_val, e_val) = idx.reshape(2, m, -1), val.reshape(2, m, -1)
        # valid spans: 0 <= end - start < max_answer_length (one unsigned comparison), both ends finite
        span = (e_idx[:, None, :] - s_idx[:, :, None]).view(np.uint64)
        valid = (span < config.max_answer_length) & np.isfinite(s_val)[:, :, None] & np.isfinite(e_val)[:, None, :]
        win, i, j = np.nonzero(valid)  # row-major: (window, start token, end token) order
        s_logit = s_val[win, i]
        e_logit = e_val[win, j]
        token_row = row_start[win]
        per_question = np.fromiter((len(pairs) for _, pairs in questions), dtype=np.int64, count=n_q)
        first_window = np.cumsum(per_question) - per_question
        question = np.repeat(np.arange(n_q, dtype=np.int32), per_question)[win]
        self.first_window: list[int] = first_window.tolist()
        # rows [score, window index in its question, start char, end char, start logit, end logit]
        self.table = np.array((s_logit + e_logit, win - first_window[question],
                               offsets[token_row + s_idx[win, i], 0], offsets[token_row + e_idx[win, j], 1],
                               s_logit, e_logit))
        context_len = np.fromiter((len(ex.context) for ex, _ in questions), dtype=np.int64, count=n_q)
        outside = (self.table[2] < 0) | (self.table[3] > context_len[question])
        self.outside: list[bool] = (np.bincount(question, weights=outside, minlength=n_q) > 0).tolist()
        # best first per question, ties in (window, start, end) order: a stable sort by score, then
        # a stable (radix) sort by question
        by_score = np.argsort(-self.table[0], kind="stable")
        q_type = np.int16 if n_q < 2**15 else np.int32  # 16-bit keys get numpy's radix sort
        order = by_score[np.argsort(question[by_score].astype(q_type), kind="stable")]
        # each question's columns of ``table``, best first
        self.ranked: list[np.ndarray] = np.split(order, np.cumsum(np.bincount(question, minlength=n_q))[:-1])


def extract_answers(items: Sequence[Item], config: AnswerConfig = AnswerConfig()) -> list[Answer | ValueError]:
    """Answers of several questions at once, ``items`` being (example, windows, logits) as for
    :func:`extract_answer`: in order, each question's Answer or the ValueError extract_answer would
    raise for it. The numpy work runs once over all windows of all questions."""
    ordered: list[Pairs | ValueError] = []
    for example, windows, logits in items:
        try:
            ordered.append(_ordered(example, windows, logits))
        except ValueError as err:
            ordered.append(err)
    good = [(ex, p) for (ex, _, _), p in zip(items, ordered) if not isinstance(p, ValueError)]
    if not good:  # every question failed its checks
        return [p for p in ordered if isinstance(p, ValueError)]
    batch = _Batch(good, config)
    answers: list[Answer | ValueError] = []
    for q, (ex, pairs) in enumerate(good):
        first, last = batch.first_window[q], batch.first_window[q] + len(pairs)
        try:
            if not all(finite := batch.finite[first:last]):
                raise ValueError(f"question {ex.id!r} window {finite.index(False)}: logits hold NaN or "
                                 "inf; check the engine's precision (fp16 overflow?) or its inputs")
            if batch.outside[q]:
                raise ValueError(f"question {ex.id!r}: window offsets fall outside its context of "
                                 f"{len(ex.context)} characters; were the windows made from another context?")
            spans = _spans(ex.context, batch.table, batch.ranked[q], config)
            answers.append(_answer(ex, spans, batch.null_start[first:last], batch.null_end[first:last], config))
        except ValueError as err:
            answers.append(err)
    it = iter(answers)
    return [p if isinstance(p, ValueError) else next(it) for p in ordered]


def extract_answer(example: QAExample, windows: Sequence[Window], logits: Sequence[WindowLogits],
                   config: AnswerConfig = AnswerConfig()) -> Answer:
    """The answer of one question from all its windows and their logits (any window order).

    ``probability`` is the returned answer's in the n-best softmax (null's for ""); ``score`` and
    ``best_span_text`` are always the best span's. Raises ValueError for inconsistent inputs."""
    (result,) = extract_answers([(example, windows, logits)], config)
    if isinstance(result, ValueError):
        raise result
    return result


def _is_word_char(ch: str) -> bool:
    """Neither whitespace nor punctuation (Unicode category P*): what a word is made of, as the
    BERT basic tokenizer splits words (``_is_punctuation`` also counts ASCII symbols such as $)."""
    return not (ch.isspace() or ch in string.punctuation or unicodedata.category(ch).startswith("P"))


def align_span_to_words(context: str, start: int, end: int) -> Tuple[int, int]:
    """``context[start:end]`` widened to whole words: each end moves outwards while the characters on
    both sides of it are word characters (a span on word boundaries or punctuation stays as it is)."""
    if start >= end:
        return start, end
    while start > 0 and _is_word_char(context[start]) and _is_word_char(context[start - 1]):
        start -= 1
    n = len(context)
    while end < n and _is_word_char(context[end - 1]) and _is_word_char(context[end]):
        end += 1
    return start, end


def _spans(context: str, table: np.ndarray, ranked: np.ndarray, config: AnswerConfig) -> list[dict[str, Any]]:
    """The ``n_best`` best spans of the ``table`` columns ``ranked``, one per distinct text (after the
    ``align_to_words`` widening: the best-scoring is kept), as n-best entries without probability.
    Rows become Python lists a chunk at a time: numpy scalars cost more than the work."""
    spans: list[dict[str, Any]] = []
    seen = set()
    chunk = config.n_best + _CHUNK_EXTRA
    for done in range(0, len(ranked), chunk):
        for score, win, a, b, s_logit, e_logit in table[:, ranked[done:done + chunk]].T.tolist():
            a, b = int(a), int(b)
            if config.align_to_words:
                a, b = align_span_to_words(context, a, b)
            text = context[a:b]
            if text in seen:
                continue
            seen.add(text)
            spans.append({"score": score, "start_logit": s_logit, "end_logit": e_logit,
                          "window_index": int(win), "start_char": a, "end_char": b, "text": text})
            if len(spans) >= config.n_best:
                return spans
    return spans


def _n_best(spans: list[dict[str, Any]], null: dict[str, Any] | None, n_best: int) -> list[dict[str, Any]]:
    """The original's n-best list: null sorted in after spans of equal score, cut to ``n_best``, null
    appended when cut; with ``n_best`` 1 and null first the best span is kept too (both outcomes of
    the threshold test need a probability)."""
    if null is None:
        return spans[:n_best]
    at = sum(s["score"] >= null["score"] for s in spans)  # spans are in score order
    if at >= n_best:
        return spans[:n_best] + [null]
    out = (spans[:at] + [null] + spans[at:])[:n_best]
    if at == 0 and n_best == 1:
        out.append(spans[0])
    return out


def _answer(example: QAExample, spans: list[dict[str, Any]], null_start: list[float], null_end: list[float],
            config: AnswerConfig) -> Answer:
    """The Answer from the question's best spans and its windows' [CLS] logits."""
    if not spans:
        raise ValueError(f"question {example.id!r}: no window has a valid answer span (no context "
                         "token is max context); build windows with trt_handler.qa.windows.WindowMaker")
    # first window on ties, like the original's strict <
    null_at = min(range(len(null_start)), key=lambda i: null_start[i] + null_end[i])
    null_score = null_start[null_at] + null_end[null_at]
    null: dict[str, Any] | None = None
    if config.version_2_with_negative:
        null = {"score": null_score, "start_logit": null_start[null_at], "end_logit": null_end[null_at],
                "window_index": null_at, "start_char": -1, "end_char": -1, "text": ""}
    nbest = _n_best(spans, null, config.n_best)
    top = max(c["score"] for c in nbest)  # softmax of the n-best scores, written into the entries
    exps = [math.exp(c["score"] - top) for c in nbest]
    total = sum(exps)
    for c, e in zip(nbest, exps):
        c["probability"] = e / total
    best = spans[0]
    chosen = null if null is not None and null_score - best["score"] > config.null_threshold else best
    return Answer(id=example.id, text=chosen["text"], score=best["score"], null_score=null_score,
                  probability=chosen["probability"], start_char=chosen["start_char"], end_char=chosen["end_char"],
                  window_index=chosen["window_index"], best_span_text=best["text"], n_best=tuple(nbest))


@dataclass(frozen=True)
class Provenance:
    """What produced an answer, written on every output row: ``model_id`` is Beam's, ``model_sha256``
    12 hex digits (sidecar or export.json; None when unrecorded), ``threshold_source`` "flag"
    (--null-threshold), "model" (saved by ``--eval --save-threshold``) or "default"."""

    model_id: str
    backend: str
    model_sha256: Any = None
    precision: Any = None
    null_threshold: float = 0.0
    threshold_source: str = "default"


@dataclass(frozen=True)
class ServedAnswer(Answer):
    """An :class:`~trt_handler.qa.types.Answer` with the :class:`Provenance` of the model that gave it."""

    provenance: Any = None  # Provenance


def with_provenance(answer: Answer, provenance: Provenance) -> ServedAnswer:
    """``answer`` as a ServedAnswer carrying ``provenance`` (fields copied, nothing recomputed)."""
    return ServedAnswer(**{f.name: getattr(answer, f.name) for f in fields(Answer)}, provenance=provenance)


@dataclass(frozen=True)
class QuestionLogits:
    """What the model gives for one question (RunInference's inference): its windows' logits in window
    order, and the :class:`Provenance` of the model that gave them, which decided the no-answer threshold."""

    logits: Tuple[WindowLogits, ...]
    provenance: Provenance


def answers_from_logits(items: Sequence[tuple[QAExample, Sequence[Window], QuestionLogits]],
                        config: AnswerConfig = AnswerConfig()) -> list[ServedAnswer | ValueError]:
    """The answer step after the model: :func:`extract_answers` for each question with the no-answer
    threshold its model's provenance carries (``config``'s own is not used), the answer carrying that
    provenance; a question's own ValueError in its place."""
    out: list[ServedAnswer | ValueError | None] = [None] * len(items)
    by_threshold: dict[float, list[int]] = {}
    for i, (_, _, question) in enumerate(items):
        by_threshold.setdefault(question.provenance.null_threshold, []).append(i)
    for threshold, indices in by_threshold.items():
        results = extract_answers([(items[i][0], items[i][1], list(items[i][2].logits)) for i in indices],
                                  replace(config, null_threshold=threshold))
        for i, result in zip(indices, results):
            out[i] = result if isinstance(result, ValueError) else with_provenance(result, items[i][2].provenance)
    return [o for o in out if o is not None]
