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
- Equal logits at the top-``n_best`` cut keep the earliest positions (the original's argpartition
  keeps arbitrary ones), so the result is deterministic and both entry points agree.

Two entry points give identical answers: :func:`extract_answer` (one question: a dozen small
numpy calls per window) and :func:`extract_answers` (many questions: the numpy work runs once over
all their windows, so a batch of 64 questions costs a fraction per question). Both build the
final n-best list with the same Python code.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Tuple

import numpy as np

from trt_handler.qa.types import Answer, QAExample, Window, WindowLogits

__all__ = ["AnswerConfig", "Provenance", "ServedAnswer", "align_span_to_words", "extract_answer", "extract_answers",
           "with_provenance"]


@dataclass(frozen=True)
class AnswerConfig:
    """Answer selection settings; defaults are those of BERT's and transformers' SQuAD scripts.

    Attributes:
        n_best: candidate start and end positions per window, and size of the n-best list.
        max_answer_length: longest answer in tokens.
        null_threshold: answer "" when null score - best span score exceeds it (v2 only).
        version_2_with_negative: SQuAD v2 (may answer ""); False never answers "".
        align_to_words: widen every candidate span to whole words of the original context (as
            Hugging Face's QA pipeline ``align_to_words``): its start moves back and its end forward
            while the characters on both sides of the boundary are word characters (neither
            whitespace nor punctuation), so "ashing" becomes "Washington" and the answer stays an
            exact slice of the context. Off by default (SQuAD scoring of the original scripts).
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


# Candidate rows converted to Python per question at a time: n_best + _CHUNK_EXTRA is nearly
# always enough to find n_best distinct texts (two candidates share a text only when different
# tokens have the same character span); a question that needs more converts its next rows.
_CHUNK_EXTRA = 4

Item = Tuple[QAExample, Sequence[Window], Sequence[WindowLogits]]
# [score, window index, start char, end char, start logit, end logit] of a candidate span, and a
# function giving the candidate rows from position ``done`` on (best first), [] at the end.
Row = list[float]
MoreRows = Callable[[int], list[Row]]


# --------------------------------------------------------------------------------------------
# checks


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
    if any(w.window_index != i for i, (w, _) in enumerate(pairs)):
        indices = [w.window_index for w, _ in pairs]
        raise ValueError(f"question {example.id!r}: got windows {indices}; pass all {n} windows of a "
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


def _non_finite(example: QAExample, window: Window) -> ValueError:
    return ValueError(f"question {example.id!r} window {window.window_index}: logits hold NaN or "
                      "inf; check the engine's precision (fp16 overflow?) or its inputs")


def _outside(example: QAExample) -> ValueError:
    return ValueError(f"question {example.id!r}: window offsets fall outside its context of "
                      f"{len(example.context)} characters; were the windows made from another context?")


def _all_finite(start: np.ndarray, end: np.ndarray) -> bool:
    """One reduction per array: a sum of float32-range values is finite unless one is NaN or inf."""
    return math.isfinite(start.sum() + end.sum())


# --------------------------------------------------------------------------------------------
# one question


def _top_positions(positions: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` positions (of ``positions``, ascending) with the largest ``values[positions]``;
    of equal values at the cut, the earliest positions (both paths agree on ties)."""
    n = positions.shape[0]
    if n > k:
        vals = values[positions]
        part = np.argpartition(vals, n - k)
        if (vals[part[:n - k]] == vals[part[n - k]]).any():  # a left-out value ties with the k-th
            part = np.argsort(-vals, kind="stable")[:k]
        else:
            part = part[n - k:]
        positions = positions[part]
    return np.sort(positions)


def _window_candidates(index: int, w: Window, start: np.ndarray, end: np.ndarray,
                       config: AnswerConfig) -> np.ndarray:
    """Valid spans of one window from its top-k starts x top-k ends, as float64 rows of
    [score, window, start char, end char, start logit, end logit].

    Columns come in (start token, end token) order, so a stable sort by score alone breaks ties
    by window, start and end token.
    """
    s_pos = _top_positions(np.flatnonzero(w.is_context & w.max_context), start, config.n_best)
    e_pos = _top_positions(np.flatnonzero(w.is_context), end, config.n_best)
    span = (e_pos - s_pos[:, None]).view(np.uint64)  # 0 <= end - start < max: one unsigned comparison
    rows, cols = np.nonzero(span < config.max_answer_length)
    s_tok, e_tok = s_pos[rows], e_pos[cols]
    out = np.empty((6, s_tok.shape[0]), dtype=np.float64)
    np.take(start, s_tok, out=out[4])
    np.take(end, e_tok, out=out[5])
    np.add(out[4], out[5], out=out[0])
    out[1] = index
    out[2] = w.offsets[s_tok, 0]
    out[3] = w.offsets[e_tok, 1]
    return out


def _extract_one(example: QAExample, pairs: list[tuple[Window, WindowLogits]], config: AnswerConfig) -> Answer:
    arrays = []
    for w, lg in pairs:
        start = np.asarray(lg.start_logits, dtype=np.float64)
        end = np.asarray(lg.end_logits, dtype=np.float64)
        if not _all_finite(start, end):
            raise _non_finite(example, w)
        arrays.append((w, start, end))
    if len(arrays) == 1:
        cand = _window_candidates(0, *arrays[0], config)
    else:
        cand = np.concatenate([_window_candidates(i, *a, config) for i, a in enumerate(arrays)], axis=1)
    if cand.shape[1] and (cand[2].min() < 0 or cand[3].max() > len(example.context)):
        raise _outside(example)
    order = np.argsort(-cand[0], kind="stable")
    chunk = config.n_best + _CHUNK_EXTRA

    def more(done: int) -> list[Row]:
        rows: list[Row] = cand[:, order[done:done + chunk]].T.tolist()
        return rows

    null_start = [float(s[0]) for _, s, _ in arrays]
    null_end = [float(e[0]) for _, _, e in arrays]
    return _answer(example, more(0), more, null_start, null_end, config)


# --------------------------------------------------------------------------------------------
# many questions


def _top_k_sorted(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the ``k`` largest values, in ascending column order; of
    equal finite values at the cut, the earliest columns (as :func:`_top_positions`)."""
    width = values.shape[1]
    if width <= k:
        return np.broadcast_to(np.arange(width), values.shape).copy()
    part = np.argpartition(values, width - k, axis=1)
    idx = part[:, width - k:]
    kth = np.take_along_axis(values, part[:, width - k:width - k + 1], axis=1)
    # a value left out ties with the k-th exactly when more than k values are >= the k-th
    ties = np.isfinite(kth[:, 0]) & ((values >= kth).sum(axis=1) > k)
    for row in np.flatnonzero(ties):  # rare: redo the row with a stable sort
        idx[row] = np.argsort(-values[row], kind="stable")[:k]
    idx.sort(axis=1)
    return idx


class _NonFinite(Exception):
    """Some logits of a batch are NaN or inf: its questions are answered one by one instead."""


class _Batch:
    """The windows of several questions, concatenated, with every valid candidate span.

    Candidates are kept in (question, window, start token, end token) order, which a stable sort
    by score turns into the one-question path's tie-breaking order.
    """

    def __init__(self, questions: list[tuple[QAExample, list[tuple[Window, WindowLogits]]]],
                 config: AnswerConfig):
        windows = [w for _, pairs in questions for w, _ in pairs]
        logits = [lg for _, pairs in questions for _, lg in pairs]
        m, n_q = len(windows), len(questions)
        lengths = np.fromiter((w.input_ids.shape[0] for w in windows), dtype=np.int64, count=m)
        row_start = np.zeros(m, dtype=np.int64)
        np.cumsum(lengths[:-1], out=row_start[1:])
        width = int(lengths.max())
        start = np.concatenate([lg.start_logits for lg in logits]).astype(np.float64, copy=False)
        end = np.concatenate([lg.end_logits for lg in logits]).astype(np.float64, copy=False)
        if not _all_finite(start, end):
            raise _NonFinite()
        is_context = np.concatenate([w.is_context for w in windows])
        can_start = is_context & np.concatenate([w.max_context for w in windows])
        offsets = np.concatenate([w.offsets for w in windows])
        # [CLS] start and end logits of every window (the null candidates)
        self.null_start: list[float] = start[row_start].tolist()
        self.null_end: list[float] = end[row_start].tolist()
        # padded [windows, width] logits, -inf where a token cannot start / end a span
        flat = np.arange(start.shape[0]) + np.repeat(np.arange(m) * width - row_start, lengths)
        s_pad = np.full((m, width), -np.inf)
        e_pad = np.full((m, width), -np.inf)
        s_pad.reshape(-1)[flat] = np.where(can_start, start, -np.inf)  # reshape of a new array: a view
        e_pad.reshape(-1)[flat] = np.where(is_context, end, -np.inf)
        s_idx = _top_k_sorted(s_pad, config.n_best)
        e_idx = _top_k_sorted(e_pad, config.n_best)
        s_val = np.take_along_axis(s_pad, s_idx, axis=1)
        e_val = np.take_along_axis(e_pad, e_idx, axis=1)
        # valid spans: 0 <= end - start < max_answer_length (one unsigned comparison), both ends finite
        span = (e_idx[:, None, :] - s_idx[:, :, None]).view(np.uint64)
        valid = (span < config.max_answer_length) & np.isfinite(s_val)[:, :, None] & np.isfinite(e_val)[:, None, :]
        win, i, j = np.nonzero(valid)  # row-major: (window, start token, end token) order
        s_logit = s_val[win, i]
        e_logit = e_val[win, j]
        token_row = row_start[win]
        per_question = np.fromiter((len(pairs) for _, pairs in questions), dtype=np.int64, count=n_q)
        first_window = np.zeros(n_q, dtype=np.int64)
        np.cumsum(per_question[:-1], out=first_window[1:])
        question = np.repeat(np.arange(n_q, dtype=np.int32), per_question)[win]
        self.first_window: list[int] = first_window.tolist()
        # rows [score, window index in its question, start char, end char, start logit, end logit]
        self.table = np.stack((s_logit + e_logit, win - first_window[question],
                               offsets[token_row + s_idx[win, i], 0], offsets[token_row + e_idx[win, j], 1],
                               s_logit, e_logit))
        context_len = np.fromiter((len(ex.context) for ex, _ in questions), dtype=np.int64, count=n_q)
        outside = (self.table[2] < 0) | (self.table[3] > context_len[question])
        self.outside: list[bool] = (np.bincount(question, weights=outside, minlength=n_q) > 0).tolist()
        # best first per question, ties in (window, start, end) order: a stable sort by score, then
        # a stable (radix) sort by question
        by_score = np.argsort(-self.table[0], kind="stable")
        q_type = np.int16 if n_q < 2**15 else np.int32  # 16-bit keys get numpy's radix sort
        self.order = by_score[np.argsort(question[by_score].astype(q_type), kind="stable")]
        self.counts = np.bincount(question, minlength=n_q)
        self.seg_start = np.zeros(n_q, dtype=np.int64)
        np.cumsum(self.counts[:-1], out=self.seg_start[1:])

    def rows(self, positions: np.ndarray) -> list[Row]:
        """Candidate rows at these positions of ``order``."""
        out: list[Row] = self.table[:, self.order[positions]].T.tolist()
        return out

    def first_rows(self, chunk: int) -> list[list[Row]]:
        """The first ``chunk`` candidate rows of every question, best first, one list per question."""
        take = np.minimum(self.counts, chunk)
        ends = np.cumsum(take)
        positions = np.repeat(self.seg_start - (ends - take), take) + np.arange(int(ends[-1]))
        rows = self.rows(positions)
        bounds = [0, *ends.tolist()]
        return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def more_rows(self, q: int, chunk: int) -> MoreRows:
        seg, count = int(self.seg_start[q]), int(self.counts[q])
        return lambda done: self.rows(np.arange(seg + done, seg + min(count, done + chunk)))


def extract_answers(items: Sequence[Item], config: AnswerConfig = AnswerConfig()) -> list[Answer | ValueError]:
    """Answers of several questions at once: ``items`` are (example, windows, logits) as for
    :func:`extract_answer`; the result has, in order, each question's Answer or the ValueError
    extract_answer would raise for it. Same answers as one question at a time; several times
    cheaper per question, because the numpy work runs once over all windows of all questions.
    """
    results: list[Answer | ValueError | None] = []
    good: list[tuple[int, QAExample, list[tuple[Window, WindowLogits]]]] = []
    for example, windows, logits in items:
        try:
            pairs = _ordered(example, windows, logits)
        except ValueError as err:
            results.append(err)
            continue
        good.append((len(results), example, pairs))
        results.append(None)
    if len(good) == 1:
        at, ex, pairs = good[0]
        try:
            results[at] = _extract_one(ex, pairs, config)
        except ValueError as err:
            results[at] = err
    elif good:
        try:
            batch = _Batch([(ex, pairs) for _, ex, pairs in good], config)
        except _NonFinite:  # answer one by one, so only the questions with NaN/inf fail
            for at, ex, pairs in good:
                try:
                    results[at] = _extract_one(ex, pairs, config)
                except ValueError as err:
                    results[at] = err
        else:
            chunk = config.n_best + _CHUNK_EXTRA
            for q, ((at, ex, pairs), rows) in enumerate(zip(good, batch.first_rows(chunk))):
                first = batch.first_window[q]
                try:
                    if batch.outside[q]:
                        raise _outside(ex)
                    results[at] = _answer(ex, rows, batch.more_rows(q, chunk),
                                          batch.null_start[first:first + len(pairs)],
                                          batch.null_end[first:first + len(pairs)], config)
                except ValueError as err:
                    results[at] = err
    return results  # type: ignore[return-value]  # every None was replaced


def extract_answer(example: QAExample, windows: Sequence[Window], logits: Sequence[WindowLogits],
                   config: AnswerConfig = AnswerConfig()) -> Answer:
    """The answer of one question from all its windows and their logits (any window order).

    ``probability`` is that of the returned answer in the n-best softmax: the null candidate's
    when the answer is "". ``score`` is always the best span's, ``best_span_text`` its text.
    Raises ValueError for inconsistent inputs. For many questions :func:`extract_answers` gives
    the same answers at a fraction of the cost per question.
    """
    return _extract_one(example, _ordered(example, windows, logits), config)


# --------------------------------------------------------------------------------------------
# candidate rows -> Answer (both paths)


def _is_word_char(ch: str) -> bool:
    """Neither whitespace nor punctuation (Unicode category P*): what a word is made of, as the
    BERT basic tokenizer splits words (``_is_punctuation`` also counts ASCII symbols such as $)."""
    if ch.isspace():
        return False
    code = ord(ch)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return False
    return not unicodedata.category(ch).startswith("P")


def align_span_to_words(context: str, start: int, end: int) -> Tuple[int, int]:
    """``context[start:end]`` widened to whole words: start moves back while both
    ``context[start-1]`` and ``context[start]`` are word characters, end moves forward while
    ``context[end-1]`` and ``context[end]`` are. A span that already begins and ends on word
    boundaries (or at punctuation) is returned unchanged; the result is always a slice of ``context``."""
    if start >= end:
        return start, end
    while start > 0 and _is_word_char(context[start]) and _is_word_char(context[start - 1]):
        start -= 1
    n = len(context)
    while end < n and _is_word_char(context[end - 1]) and _is_word_char(context[end]):
        end += 1
    return start, end


def _aligned_rows(context: str, rows: list[Row]) -> list[Row]:
    out = []
    for r in rows:
        a, b = align_span_to_words(context, int(r[2]), int(r[3]))
        out.append([r[0], r[1], a, b, r[4], r[5]])
    return out


def _spans(example: QAExample, rows: list[Row], more: MoreRows, n_best: int,
           align_to_words: bool = False) -> list[dict[str, Any]]:
    """The ``n_best`` best spans in score order, one per distinct text, as n-best entries
    without probability. ``rows`` are the first candidate rows, at least ``n_best`` of them or
    all there are; ``more(done)`` gives the rows after the first ``done``. With
    ``align_to_words`` each span is widened to whole words first (so two spans inside the same
    words become one text and only the best-scoring of them is kept).

    Python lists from here: numpy scalars cost more than the work.
    """
    context = example.context
    if align_to_words:
        rows = _aligned_rows(context, rows)
        fetch = more
        more = lambda done: _aligned_rows(context, fetch(done))  # noqa: E731
    head = rows[:n_best]
    texts = [context[int(r[2]):int(r[3])] for r in head]
    if len(set(texts)) == len(texts):  # the common case: the first n_best rows have distinct texts
        return [{"score": r[0], "start_logit": r[4], "end_logit": r[5], "window_index": int(r[1]),
                 "start_char": int(r[2]), "end_char": int(r[3]), "text": t} for r, t in zip(head, texts)]
    spans: list[dict[str, Any]] = []
    seen = set()
    done = 0
    while rows:
        for score, win, a, b, s_logit, e_logit in rows:
            a, b = int(a), int(b)
            text = context[a:b]
            if text in seen:
                continue
            seen.add(text)
            spans.append({"score": score, "start_logit": s_logit, "end_logit": e_logit,
                          "window_index": int(win), "start_char": a, "end_char": b, "text": text})
            if len(spans) >= n_best:
                return spans
        done += len(rows)
        rows = more(done)
    return spans


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


def _answer(example: QAExample, rows: list[Row], more: MoreRows, null_start: list[float],
            null_end: list[float], config: AnswerConfig) -> Answer:
    """The Answer from the question's candidate rows (best first) and its windows' [CLS] logits."""
    spans = _spans(example, rows, more, config.n_best, config.align_to_words)
    if not spans:
        raise ValueError(f"question {example.id!r}: no window has a valid answer span (no context "
                         "token is max context); build windows with squad_features.WindowMaker")
    null_at, null_score = 0, null_start[0] + null_end[0]
    for i in range(1, len(null_start)):  # first window on ties, like the original's strict <
        score = null_start[i] + null_end[i]
        if score < null_score:
            null_at, null_score = i, score
    null: dict[str, Any] | None = None
    if config.version_2_with_negative:
        null = {"score": null_score, "start_logit": null_start[null_at], "end_logit": null_end[null_at],
                "window_index": null_at, "start_char": -1, "end_char": -1, "text": ""}
    nbest = _n_best(spans, null, config.n_best)
    # softmax of the n-best scores, written into the entries; the top score is the best span's or null's
    top = spans[0]["score"] if null is None else max(spans[0]["score"], null_score)
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


# --------------------------------------------------------------------------------------------
# provenance: which model answered, and how


@dataclass(frozen=True)
class Provenance:
    """What produced an answer, written on every output row.

    Attributes:
        model_id: Beam's ``PredictionResult.model_id`` (the engine / bundle path the handler
            loaded; changes when the streaming pipeline swaps models).
        backend: onnx, tensorrt or torch.
        model_sha256: the first 12 hex digits of the engine's sha256 (its sidecar) or of the
            bundle's model.onnx (its export.json); None when nothing records it.
        precision: the engine's precision (sidecar), the bundle's (int8 weight-only / fp32), or
            the torch dtype; None when unknown.
        null_threshold: the no-answer threshold the answer was decided with.
        threshold_source: "flag" (--null-threshold), "model" (saved in the bundle / sidecar by
            ``--eval --save-threshold``) or "default" (0).
    """

    model_id: str
    backend: str
    model_sha256: Any = None
    precision: Any = None
    null_threshold: float = 0.0
    threshold_source: str = "default"


@dataclass(frozen=True)
class ServedAnswer(Answer):
    """An :class:`~trt_handler.qa.types.Answer` with the :class:`Provenance` of the model that
    gave it (the handlers return these; everything that takes an Answer takes one)."""

    provenance: Any = None  # Provenance


def with_provenance(answer: Answer, provenance: Provenance) -> ServedAnswer:
    """``answer`` as a ServedAnswer carrying ``provenance`` (fields copied, nothing recomputed)."""
    from dataclasses import fields

    values = {f.name: getattr(answer, f.name) for f in fields(Answer)}
    return ServedAnswer(**values, provenance=provenance)
