"""Start/end logits of all windows of one question -> the answer (SQuAD v1.1 and v2.0).

Follows the original BERT ``run_squad.py`` ``write_predictions`` (as transformers'
``postprocess_qa_predictions`` does):

- per window, the ``n_best`` highest start and end logits give candidate spans; a span is kept
  when both ends are context tokens, start <= end, it is at most ``max_answer_length`` tokens
  long and its start token is "max context" in that window; score = start logit + end logit;
- SQuAD v2: the null ("no answer") score is the minimum over windows of the [CLS] start + end
  logits; the answer is "" when null score - best span score > ``null_threshold``;
- the n-best list holds the ``n_best`` best distinct answer texts across windows, the null
  candidate included for v2 (appended when it ranks lower), and ``probability`` is the softmax
  of the n-best scores.

Deviations, all on purpose:

- Positions that can never form a valid span (non-context tokens; starts that are not max
  context) are masked out BEFORE taking the top ``n_best``; the original takes the top over all
  positions, so question tokens with high logits could crowd valid spans out of its candidates.
  Whenever the original finds a span, this finds one scoring at least as high.
- The answer text is the character slice of the original context between the first token's start
  and the last token's end offset (as transformers does), not the original's whitespace-token
  re-alignment (``get_final_text``).
- A question whose windows hold no valid span raises ValueError instead of answering "empty":
  windows from ``WindowMaker`` always hold one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Tuple
import numpy as np

from trt_handler.qa_types import Answer, QAExample, Window, WindowLogits

__all__ = ["AnswerConfig", "extract_answer", "extract_answers"]


@dataclass(frozen=True)
class AnswerConfig:
    """Answer selection settings; defaults are those of BERT's and transformers' SQuAD scripts.

    Attributes:
        n_best: candidate start and end positions per window, and size of the n-best list.
        max_answer_length: longest answer in tokens.
        null_threshold: answer "" when null score - best span score exceeds it (v2 only).
        version_2_with_negative: SQuAD v2 (may answer ""); False never answers "".
    """

    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0
    version_2_with_negative: bool = True

    def __post_init__(self) -> None:
        for name in ("n_best", "max_answer_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not math.isfinite(float(self.null_threshold)):
            raise ValueError(f"null_threshold must be a finite number, got {self.null_threshold!r}")


# Candidate rows converted to Python per question at a time: 2 * n_best is nearly always enough
# to find n_best distinct texts; a question that needs more converts its next rows.
_CHUNK_FACTOR = 2

Item = Tuple[QAExample, Sequence[Window], Sequence[WindowLogits]]


def _ordered(example: QAExample, windows: Sequence[Window],
             logits: Sequence[WindowLogits]) -> list[tuple[Window, WindowLogits]]:
    """(window, logits) sorted by window_index, after checking they belong together (ValueError)."""
    if len(windows) != len(logits):
        raise ValueError(f"question {example.id!r}: got {len(windows)} windows but {len(logits)} "
                         "logits; pass one WindowLogits per window, in the same order")
    if not windows:
        raise ValueError(f"question {example.id!r}: no windows to answer from")
    if len(windows) == 1:  # the common case: nothing to sort
        pairs = [(windows[0], logits[0])]
    else:
        pairs = sorted(zip(windows, logits), key=lambda p: p[0].window_index)
    n = len(pairs)
    for i, (w, lg) in enumerate(pairs):
        if w.window_index != i or w.num_windows != n:
            indices = [w.window_index for w, _ in pairs]
            raise ValueError(f"question {example.id!r}: got windows {indices} of {pairs[0][0].num_windows}; "
                             "regroup all windows of a question before extracting its answer")
        if w.example_id != example.id:
            raise ValueError(f"window of question {w.example_id!r} passed with question {example.id!r}")
        length = w.input_ids.shape[0]
        s_shape, e_shape = np.shape(lg.start_logits), np.shape(lg.end_logits)
        if s_shape != (length,) or e_shape != (length,):
            raise ValueError(f"question {example.id!r} window {w.window_index}: logits of shapes "
                             f"{s_shape}/{e_shape} for a window of {length} tokens; cut the "
                             "model output to the window's length")
    return pairs


def _non_finite_error(example: QAExample, pairs: list[tuple[Window, WindowLogits]]) -> ValueError | None:
    for w, lg in pairs:
        if not (np.isfinite(lg.start_logits).all() and np.isfinite(lg.end_logits).all()):
            return ValueError(f"question {example.id!r} window {w.window_index}: logits hold NaN or "
                              "inf; check the engine's precision (fp16 overflow?) or its inputs")
    return None


def _top_k_sorted(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the ``k`` largest values, in ascending column order."""
    width = values.shape[1]
    if width <= k:
        return np.broadcast_to(np.arange(width), values.shape).copy()
    idx = np.argpartition(values, width - k, axis=1)[:, width - k:]
    idx.sort(axis=1)
    return idx


class _Batch:
    """The windows of several questions, concatenated, with every valid candidate span.

    Candidates are kept in (question, window, start token, end token) order, which a stable sort
    by score turns into the original's tie-breaking order.
    """

    def __init__(self, questions: list[tuple[QAExample, list[tuple[Window, WindowLogits]]]],
                 config: AnswerConfig):
        windows = [w for _, pairs in questions for w, _ in pairs]
        logits = [lg for _, pairs in questions for _, lg in pairs]
        m = len(windows)
        lengths = np.fromiter((w.input_ids.shape[0] for w in windows), dtype=np.int64, count=m)
        self.row_start = np.zeros(m, dtype=np.int64)
        np.cumsum(lengths[:-1], out=self.row_start[1:])
        width = int(lengths.max())
        start = np.concatenate([lg.start_logits for lg in logits]).astype(np.float64, copy=False)
        end = np.concatenate([lg.end_logits for lg in logits]).astype(np.float64, copy=False)
        if not np.isfinite(start.sum() + end.sum()):  # one check for all: any NaN/inf propagates
            raise _NonFinite()
        is_context = np.concatenate([w.is_context for w in windows])
        can_start = is_context & np.concatenate([w.max_context for w in windows])
        self.offsets = np.concatenate([w.offsets for w in windows])
        # [CLS] start and end logits of every window, and their sum: the null scores
        null_start, null_end = start[self.row_start], end[self.row_start]
        self.null_start: list[float] = null_start.tolist()
        self.null_end: list[float] = null_end.tolist()
        self.null: list[float] = (null_start + null_end).tolist()
        # padded [windows, width] logits, -inf where a token cannot start / end a span
        flat = np.arange(start.shape[0]) + np.repeat(np.arange(m) * width - self.row_start, lengths)
        s_pad = np.full(m * width, -np.inf)
        e_pad = np.full(m * width, -np.inf)
        s_pad[flat] = np.where(can_start, start, -np.inf)
        e_pad[flat] = np.where(is_context, end, -np.inf)
        s_pad = s_pad.reshape(m, width)
        e_pad = e_pad.reshape(m, width)
        k = config.n_best
        s_idx = _top_k_sorted(s_pad, k)
        e_idx = _top_k_sorted(e_pad, k)
        s_val = np.take_along_axis(s_pad, s_idx, axis=1)
        e_val = np.take_along_axis(e_pad, e_idx, axis=1)
        span = e_idx[:, None, :] - s_idx[:, :, None]
        score = s_val[:, :, None] + e_val[:, None, :]
        valid = (span >= 0) & (span < config.max_answer_length) & np.isfinite(score)
        win, i, j = np.nonzero(valid)  # row-major: (window, start token, end token) order
        self.score = score[win, i, j]
        self.s_logit = s_val[win, i]
        self.e_logit = e_val[win, j]
        self.window = win
        token_row = self.row_start[win]
        self.start_char = self.offsets[token_row + s_idx[win, i], 0]
        self.end_char = self.offsets[token_row + e_idx[win, j], 1]
        # question of each window and candidate, and the candidates' order per question
        per_question = np.fromiter((len(pairs) for _, pairs in questions), dtype=np.int64, count=len(questions))
        window_question = np.repeat(np.arange(len(questions)), per_question)
        self.first_window = np.concatenate([[0], np.cumsum(per_question)[:-1]]).tolist()
        question = window_question[win]
        self.order = np.lexsort((-self.score, question))
        self.counts = np.bincount(question, minlength=len(questions))
        self.seg_start = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        context_len = np.fromiter((len(ex.context) for ex, _ in questions), dtype=np.int64, count=len(questions))
        outside = (self.start_char < 0) | (self.end_char > context_len[question])
        self.outside = (np.bincount(question, weights=outside, minlength=len(questions)) > 0).tolist()

    def rows(self, positions: np.ndarray) -> list[list[float]]:
        """[score, window, start char, end char, start logit, end logit] of the candidates at these
        positions of ``order``."""
        sel = self.order[positions]
        table = np.stack((self.score[sel], self.window[sel], self.start_char[sel], self.end_char[sel],
                          self.s_logit[sel], self.e_logit[sel]))
        out: list[list[float]] = table.T.tolist()
        return out

    def first_rows(self, chunk: int) -> list[list[list[float]]]:
        """The first ``chunk`` candidate rows of every question, best first, one list per question."""
        take = np.minimum(self.counts, chunk)
        ends = np.cumsum(take)
        positions = np.repeat(self.seg_start - (ends - take), take) + np.arange(int(ends[-1]))
        rows = self.rows(positions)
        bounds = [0, *ends.tolist()]
        return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class _NonFinite(Exception):
    """Some logits of a batch are NaN or inf: the batch is answered question by question."""


def _spans(example: QAExample, batch: _Batch, q: int, rows: list[list[float]], n_best: int,
           chunk: int) -> list[dict[str, Any]]:
    """The ``n_best`` best spans of question ``q`` in score order, one per distinct text, as n-best
    entries without probability. Python lists from here: numpy scalars cost more than the work."""
    context = example.context
    first = batch.first_window[q]
    spans: list[dict[str, Any]] = []
    seen = set()
    done = 0
    count = int(batch.counts[q])
    while True:
        for score, win, a, b, s_logit, e_logit in rows:
            a, b = int(a), int(b)
            text = context[a:b]
            if text in seen:
                continue
            seen.add(text)
            spans.append({"score": score, "start_logit": s_logit, "end_logit": e_logit,
                          "window_index": int(win) - first, "start_char": a, "end_char": b, "text": text})
            if len(spans) >= n_best:
                return spans
        done += len(rows)
        if done >= count:
            return spans
        seg = int(batch.seg_start[q])
        rows = batch.rows(np.arange(seg + done, seg + min(count, done + chunk)))


def _n_best(spans: list[dict[str, Any]], null: dict[str, Any] | None, n_best: int) -> list[dict[str, Any]]:
    """The original's n-best list: the null candidate sorted in among the spans (after spans of
    equal score), cut to ``n_best``, null appended when it did not make the cut.

    The best span is kept too when ``n_best`` is 1 and null ranks first, so both outcomes of the
    threshold test have a probability.
    """
    if null is None:
        return spans[:n_best]
    null_score = null["score"]
    at = 0
    for s in spans:  # spans are in score order
        if s["score"] < null_score:
            break
        at += 1
    if at >= n_best:
        return spans[:n_best] + [null]
    out = (spans[:at] + [null] + spans[at:])[:n_best]
    if at == 0 and n_best == 1:
        out.append(spans[0])
    return out


def _answer(example: QAExample, batch: _Batch, q: int, rows: list[list[float]], n_windows: int,
            config: AnswerConfig) -> Answer:
    if batch.outside[q]:
        raise ValueError(f"question {example.id!r}: window offsets fall outside its context of "
                         f"{len(example.context)} characters; were the windows made from another context?")
    spans = _spans(example, batch, q, rows, config.n_best, _CHUNK_FACTOR * config.n_best)
    if not spans:
        raise ValueError(f"question {example.id!r}: no window has a valid answer span (no context "
                         "token is max context); build windows with squad_features.WindowMaker")
    first = batch.first_window[q]
    null_scores = batch.null[first:first + n_windows]
    null_at = 0
    for i in range(1, n_windows):  # first window on ties, like the original's strict <
        if null_scores[i] < null_scores[null_at]:
            null_at = i
    null_score = null_scores[null_at]
    null = None
    if config.version_2_with_negative:
        null = {"score": null_score, "start_logit": batch.null_start[first + null_at],
                "end_logit": batch.null_end[first + null_at], "window_index": null_at,
                "start_char": -1, "end_char": -1, "text": ""}
    nbest = _n_best(spans, null, config.n_best)
    top = max(c["score"] for c in nbest)  # softmax of the n-best scores, written into the entries
    exps = [math.exp(c["score"] - top) for c in nbest]
    total = sum(exps)
    for c, e in zip(nbest, exps):
        c["probability"] = e / total
    best = spans[0]
    chosen = null if null is not None and null_score - best["score"] > config.null_threshold else best
    assert chosen is not None
    return Answer(
        id=example.id,
        text=chosen["text"],
        score=best["score"],
        null_score=null_score,
        probability=chosen["probability"],
        start_char=chosen["start_char"],
        end_char=chosen["end_char"],
        window_index=chosen["window_index"],
        best_span_text=best["text"],
        n_best=tuple(nbest),
    )


def extract_answers(items: Sequence[Item], config: AnswerConfig = AnswerConfig()) -> list[Answer | ValueError]:
    """Answers of several questions at once: ``items`` are (example, windows, logits) as for
    :func:`extract_answer`; the result has, in order, each question's Answer or the ValueError
    extract_answer would raise for it.

    The numpy work (masking, top-k per window, span scores, ordering) runs once over all windows
    of all questions instead of a dozen small calls per window, which is what costs when a
    question has one window of ~200 tokens; the results are the same as one question at a time.
    """
    results: list[Answer | ValueError | None] = []
    good: list[tuple[int, QAExample, list[tuple[Window, WindowLogits]]]] = []
    for example, windows, logits in items:
        try:
            pairs = _ordered(example, windows, logits)
        except ValueError as err:
            results.append(err)
            continue
        results.append(None)
        good.append((len(results) - 1, example, pairs))
    if not good:
        return results  # type: ignore[return-value]  # every entry is an error
    try:
        batch = _Batch([(ex, pairs) for _, ex, pairs in good], config)
    except _NonFinite:
        if len(good) == 1:
            _, ex, pairs = good[0]
            err = _non_finite_error(ex, pairs)
            assert err is not None
            results[good[0][0]] = err
            return results  # type: ignore[return-value]
        for at, ex, pairs in good:  # find the culprits: answer one by one
            results[at] = extract_answers([(ex, [w for w, _ in pairs], [lg for _, lg in pairs])], config)[0]
        return results  # type: ignore[return-value]
    chunk = _CHUNK_FACTOR * config.n_best
    for q, ((at, ex, pairs), rows) in enumerate(zip(good, batch.first_rows(chunk))):
        try:
            results[at] = _answer(ex, batch, q, rows, len(pairs), config)
        except ValueError as err:
            results[at] = err
    return results  # type: ignore[return-value]  # every placeholder was replaced


def extract_answer(example: QAExample, windows: Sequence[Window], logits: Sequence[WindowLogits],
                   config: AnswerConfig = AnswerConfig()) -> Answer:
    """The answer of one question from all its windows and their logits (any window order).

    ``probability`` is that of the returned answer in the n-best softmax: the null candidate's
    when the answer is "". ``score`` is always the best span's, ``best_span_text`` its text.
    Raises ValueError for inconsistent inputs. Answering many questions,
    :func:`extract_answers` is several times faster per question.
    """
    (result,) = extract_answers([(example, windows, logits)], config)
    if isinstance(result, ValueError):
        raise result
    return result
