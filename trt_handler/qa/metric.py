"""Exact match and F1 with the semantics of the official SQuAD v2.0 evaluation script (``evaluate-v2.0.py``).

A question scores the max over its gold answers (those normalising to nothing ignored; an unanswerable
question's only gold answer is ""). Unlike the official script, ``--na-prob-thresh`` is not re-applied
to the main figures: the predictions already used a threshold.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

from trt_handler.qa.types import QAExample

__all__ = ["exact_match", "f1_score", "normalize_answer", "squad_evaluate"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official order)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match(pred: str, gold: str) -> int:
    """1 when prediction and gold answer are equal after normalisation, else 0."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(pred: str, gold: str) -> float:
    """Token-overlap F1; when either side is empty, 1 if both are, else 0 (official rule)."""
    gold_toks = _tokens(gold)
    pred_toks = _tokens(pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _raw_scores(examples: Sequence[QAExample],
                predictions: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question exact and F1 (max over gold answers), in example order."""
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for ex in examples:
        pred = predictions[ex.id]
        gold = [a for a in ex.answers if normalize_answer(a)] or [""]
        exact[ex.id] = max(exact_match(pred, a) for a in gold)
        f1[ex.id] = max(f1_score(pred, a) for a in gold)
    return exact, f1


def _eval_dict(exact: Mapping[str, float], f1: Mapping[str, float], ids: Sequence[str]) -> dict[str, float]:
    total = len(ids)
    return {
        "exact": 100.0 * sum(exact[k] for k in ids) / total,
        "f1": 100.0 * sum(f1[k] for k in ids) / total,
        "total": total,
    }


def _best_thresh(predictions: Mapping[str, str], scores: Mapping[str, float],
                 na_scores: Mapping[str, float], has_ans: Mapping[str, bool]) -> tuple[float, float]:
    """Official ``find_best_thresh``: start from "all no-answer", then let questions answer in
    order of increasing no-answer score and keep the best running total."""
    cur_score: float = sum(not v for v in has_ans.values())
    best_score = cur_score
    best_thresh = 0.0
    for qid in sorted(na_scores, key=lambda k: na_scores[k]):
        if qid not in scores:
            continue
        cur_score += scores[qid] if has_ans[qid] else (-1 if predictions[qid] else 0)
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_scores[qid]
    return 100.0 * best_score / len(scores), float(best_thresh)


def _check_inputs(examples: Sequence[QAExample], **mappings: Mapping | None) -> None:
    if not examples:
        raise ValueError("squad_evaluate needs at least one example")
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        dup = next(k for k, n in collections.Counter(ids).items() if n > 1)
        raise ValueError(f"example ids must be unique, {dup!r} appears more than once")
    for name, mapping in mappings.items():
        if mapping is None:
            continue
        missing = [k for k in ids if k not in mapping]
        if missing:
            raise ValueError(f"{name} lack {len(missing)} of {len(ids)} questions (e.g. {missing[:3]}); "
                             f"give every example a value (\"\" predicts no answer)")


def squad_evaluate(examples: Sequence[QAExample], predictions: Mapping[str, str],
                   no_answer_scores: Mapping[str, float] | None = None, *,
                   span_predictions: Mapping[str, str] | None = None) -> dict:
    """Official SQuAD v2.0 figures (0-100) of ``predictions`` (id -> text, "" = no answer).

    Keys: exact, f1, total, HasAns_/NoAns_ exact/f1/total (each only when it has questions) and, with
    ``no_answer_scores`` (id -> ``Answer.null_score - Answer.score``), best_exact/f1 and
    best_exact/f1_thresh (directly a ``null_threshold``), searched over ``span_predictions`` (id ->
    ``Answer.best_span_text``: every threshold) when given, else over ``predictions`` (official: the
    search can only turn answers into ""). Predictions for ids not in ``examples`` are ignored.
    """
    if span_predictions is not None and no_answer_scores is None:
        raise ValueError("span_predictions only serve the threshold search; pass no_answer_scores too")
    _check_inputs(examples, predictions=predictions, no_answer_scores=no_answer_scores,
                  span_predictions=span_predictions)
    exact, f1 = _raw_scores(examples, predictions)
    has_ans = {ex.id: bool(ex.answers) for ex in examples}
    out: dict = _eval_dict(exact, f1, list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [k for k, v in has_ans.items() if v == wanted]
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in _eval_dict(exact, f1, ids).items()})
    if no_answer_scores is not None:
        na = {k: float(no_answer_scores[k]) for k in has_ans}
        sweep = predictions
        if span_predictions is not None:
            sweep = span_predictions
            exact, f1 = _raw_scores(examples, span_predictions)
        out["best_exact"], out["best_exact_thresh"] = _best_thresh(sweep, exact, na, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_thresh(sweep, f1, na, has_ans)
    return out
