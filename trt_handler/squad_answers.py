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
from typing import NamedTuple

import numpy as np

from trt_handler.qa_types import Answer, QAExample, Window, WindowLogits

__all__ = ["AnswerConfig", "extract_answer"]


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


class _Span(NamedTuple):
    """One n-best entry (a NamedTuple: built thousands of times a second)."""

    score: float
    start_logit: float
    end_logit: float
    window_index: int
    start_char: int
    end_char: int
    text: str


def _ordered(example: QAExample, windows: Sequence[Window],
             logits: Sequence[WindowLogits]) -> list[tuple[Window, np.ndarray, np.ndarray]]:
    """(window, start float64, end float64) sorted by window_index, after checking they belong together."""
    if len(windows) != len(logits):
        raise ValueError(f"question {example.id!r}: got {len(windows)} windows but {len(logits)} "
                         "logits; pass one WindowLogits per window, in the same order")
    if not windows:
        raise ValueError(f"question {example.id!r}: no windows to answer from")
    pairs = sorted(zip(windows, logits), key=lambda p: p[0].window_index)
    indices = [w.window_index for w, _ in pairs]
    n = len(pairs)
    if indices != list(range(n)) or any(w.num_windows != n for w, _ in pairs):
        raise ValueError(f"question {example.id!r}: got windows {indices} of {pairs[0][0].num_windows}; "
                         "regroup all windows of a question before extracting its answer")
    out = []
    for w, lg in pairs:
        if w.example_id != example.id:
            raise ValueError(f"window of question {w.example_id!r} passed with question {example.id!r}")
        start = np.asarray(lg.start_logits, dtype=np.float64)
        end = np.asarray(lg.end_logits, dtype=np.float64)
        if start.shape != (w.length,) or end.shape != (w.length,):
            raise ValueError(f"question {example.id!r} window {w.window_index}: logits of shapes "
                             f"{start.shape}/{end.shape} for a window of {w.length} tokens; cut the "
                             "model output to the window's length")
        if not (np.isfinite(start).all() and np.isfinite(end).all()):
            raise ValueError(f"question {example.id!r} window {w.window_index}: logits hold NaN or "
                             "inf; check the engine's precision (fp16 overflow?) or its inputs")
        out.append((w, start, end))
    return out


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite values (unordered)."""
    n = values.shape[0]
    idx = np.argpartition(values, n - k)[n - k:] if k < n else np.arange(n)
    return idx[np.isfinite(values[idx])]


def _window_candidates(index: int, w: Window, start: np.ndarray, end: np.ndarray,
                       config: AnswerConfig) -> np.ndarray:
    """Valid spans of one window from its top-k starts x top-k ends, as float64 rows of
    [score, window, start token, end token, start char, end char, start logit, end logit]."""
    s_idx = _top_k(np.where(w.is_context & w.max_context, start, -np.inf), config.n_best)
    e_idx = _top_k(np.where(w.is_context, end, -np.inf), config.n_best)
    length = e_idx[None, :] - s_idx[:, None] + 1
    rows, cols = np.nonzero((length >= 1) & (length <= config.max_answer_length))
    s_tok, e_tok = s_idx[rows], e_idx[cols]
    out = np.empty((8, s_tok.shape[0]), dtype=np.float64)
    out[0] = start[s_tok] + end[e_tok]
    out[1] = index
    out[2], out[3] = s_tok, e_tok
    out[4], out[5] = w.offsets[s_tok, 0], w.offsets[e_tok, 1]
    out[6], out[7] = start[s_tok], end[e_tok]
    return out


def _ranked_spans(example: QAExample, pairs: list[tuple[Window, np.ndarray, np.ndarray]],
                  config: AnswerConfig) -> list[_Span]:
    """The ``n_best`` best spans over all windows in score order, one per distinct text.

    Ties are broken by window, start and end token so the result does not depend on input order.
    The loop runs on Python lists: numpy scalar access would cost more than the work itself.
    """
    cand = np.concatenate([_window_candidates(i, *p, config) for i, p in enumerate(pairs)], axis=1)
    if cand.shape[1] and (cand[4].min() < 0 or cand[5].max() > len(example.context)):
        raise ValueError(f"question {example.id!r}: window offsets fall outside its context of "
                         f"{len(example.context)} characters; were the windows made from another context?")
    order = np.lexsort((cand[3], cand[2], cand[1], -cand[0]))
    spans: list[_Span] = []
    seen = set()
    chunk = 2 * config.n_best  # rows converted at a time: usually the first chunk is enough
    for lo in range(0, order.shape[0], chunk):
        for score, win, _, _, a, b, s_logit, e_logit in cand[:, order[lo:lo + chunk]].T.tolist():
            text = example.context[int(a):int(b)]
            if text in seen:
                continue
            seen.add(text)
            spans.append(_Span(score, s_logit, e_logit, int(win), int(a), int(b), text))
            if len(spans) >= config.n_best:
                return spans
    return spans


def _n_best(spans: list[_Span], null: _Span | None, n_best: int) -> list[_Span]:
    """The original's n-best list: the null candidate sorted in among the spans (after spans of
    equal score), cut to ``n_best``, null appended when it did not make the cut.

    The best span is kept too when ``n_best`` is 1 and null ranks first, so both outcomes of the
    threshold test have a probability.
    """
    if null is None:
        return spans[:n_best]
    at = sum(1 for s in spans if s.score >= null.score)
    if at >= n_best:
        return spans[:n_best] + [null]
    out = (spans[:at] + [null] + spans[at:])[:n_best]
    if at == 0 and n_best == 1:
        out.append(spans[0])
    return out


def _softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _entry(span: _Span, probability: float) -> dict[str, object]:
    entry: dict[str, object] = span._asdict()
    entry["probability"] = probability
    return entry


def extract_answer(example: QAExample, windows: Sequence[Window], logits: Sequence[WindowLogits],
                   config: AnswerConfig = AnswerConfig()) -> Answer:
    """The answer of one question from all its windows and their logits (any window order).

    ``probability`` is that of the returned answer in the n-best softmax: the null candidate's
    when the answer is "". ``score`` is always the best span's, ``best_span_text`` its text.
    """
    pairs = _ordered(example, windows, logits)
    null_scores = [s[0] + e[0] for _, s, e in pairs]
    null_at = int(np.argmin(null_scores))  # first window on ties, like the original's strict <
    null_score = float(null_scores[null_at])
    spans = _ranked_spans(example, pairs, config)
    if not spans:
        raise ValueError(f"question {example.id!r}: no window has a valid answer span (no context "
                         "token is max context); build windows with squad_features.WindowMaker")
    null = None
    if config.version_2_with_negative:
        _, s0, e0 = pairs[null_at]
        null = _Span(null_score, float(s0[0]), float(e0[0]), null_at, -1, -1, "")
    nbest = _n_best(spans, null, config.n_best)
    probs = _softmax([c.score for c in nbest])
    best = spans[0]
    no_answer = null is not None and null_score - best.score > config.null_threshold
    chosen = null if no_answer else best
    return Answer(
        id=example.id,
        text=chosen.text,
        score=best.score,
        null_score=null_score,
        probability=next(p for c, p in zip(nbest, probs) if c is chosen),
        start_char=chosen.start_char,
        end_char=chosen.end_char,
        window_index=chosen.window_index,
        best_span_text=best.text,
        n_best=tuple(_entry(c, p) for c, p in zip(nbest, probs)),
    )
