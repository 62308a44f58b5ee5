"""The official SQuAD v2.0 metric on examples worked out by hand (the working is in the comments)."""

from __future__ import annotations

import pytest

from trt_handler.qa.metric import (
    exact_match,
    f1_score,
    normalize_answer,
    squad_evaluate,
)
from trt_handler.qa.types import QAExample


@pytest.mark.parametrize("text, normalized", [
    # lower -> "the  quick, brown-fox!"; punctuation out -> "the  quick brownfox";
    # articles -> " quick brownfox" (replaced by a space); whitespace collapsed.
    ("The  Quick, brown-fox!", "quick brownfox"),
    ("An apple a day", "apple day"),
    # Articles only as whole words: "theory" and "anthem" keep their letters.
    ("theory of the anthem", "theory of anthem"),
    # Punctuation goes first, so "A." becomes the article "a" and is then removed.
    ("A. Smith", "smith"),
    # Only ASCII punctuation (string.punctuation) is removed, as in the official script.
    ("“Curly” — dash", "“curly” — dash"),
    ("  \t\n ", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Denver Broncos!", "Denver Broncos") == 1
    assert exact_match("Broncos", "Denver Broncos") == 0
    # pred tokens [cat, sat, on, mat] ("the" x2 removed), gold [cat, on, mat]: 3 in common,
    # precision 3/4, recall 3/3, F1 = 2 * 0.75 * 1 / 1.75 = 6/7.
    assert f1_score("the cat sat on the mat", "cat on mat") == pytest.approx(6 / 7)
    # Repeated tokens count with multiplicity: [x, x, y] vs [x, y, y] share one x and one y:
    # precision 2/3, recall 2/3, F1 2/3.
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score("nothing shared", "Denver Broncos") == 0.0
    # Either side empty (after normalisation): 1 when both are, else 0.
    assert f1_score("", "") == 1.0 and f1_score("the", "") == 1.0
    assert f1_score("", "Denver") == 0.0 and f1_score("Denver", "") == 0.0
    assert exact_match("", "") == 1


def hand_set():
    """Five questions; scores per question worked out by hand:

    q1 has-ans, pred "the Denver Broncos!" normalises to a gold answer: exact 1, F1 1.
    q2 has-ans, gold "Ada Lovelace wrote it", pred "Lovelace": exact 0; 1 shared token,
       precision 1, recall 1/4, F1 = 2 * 0.25 / 1.25 = 0.4.
    q3 no-ans, pred "": exact 1, F1 1.
    q4 no-ans, pred "Paris": exact 0, F1 0.
    q5 has-ans, pred "": exact 0, F1 0.
    """
    examples = [
        QAExample("q1", "?", "c", ("Denver Broncos", "The Denver Broncos"), False),
        QAExample("q2", "?", "c", ("Ada Lovelace wrote it",), False),
        QAExample("q3", "?", "c", (), True),
        QAExample("q4", "?", "c", (), True),
        QAExample("q5", "?", "c", ("in 1843", "1843"), False),
    ]
    preds = {"q1": "the Denver Broncos!", "q2": "Lovelace", "q3": "", "q4": "Paris", "q5": ""}
    return examples, preds


def test_squad_evaluate_by_hand():
    examples, preds = hand_set()
    got = squad_evaluate(examples, preds)
    assert got == pytest.approx({
        "exact": 100 * 2 / 5,              # q1, q3
        "f1": 100 * (1 + 0.4 + 1) / 5,     # 48.0
        "total": 5,
        "HasAns_exact": 100 * 1 / 3,       # q1 of q1, q2, q5
        "HasAns_f1": 100 * 1.4 / 3,
        "HasAns_total": 3,
        "NoAns_exact": 50.0,               # q3 of q3, q4
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    })


def test_best_threshold_search_by_hand():
    examples, preds = hand_set()
    na = {"q1": -3.0, "q2": 1.0, "q3": 2.0, "q4": 1.5, "q5": 0.5}
    got = squad_evaluate(examples, preds, na)
    # Official find_best_thresh: start with every question answered "no answer" -> 2 correct
    # (q3, q4). Walk in increasing score: q1 (-3.0), q5 (0.5), q2 (1.0), q4 (1.5), q3 (2.0),
    # letting each keep its prediction:
    #   exact: 2 -> q1 +1 = 3 (best, thresh -3.0) -> q5 +0 -> q2 +0 -> q4 -1 -> q3 +0
    #   F1:    2 -> q1 +1 = 3 (best, -3.0) -> q5 +0 = 3 -> q2 +0.4 = 3.4 (best, 1.0) -> q4 -1 -> q3 0
    assert got["best_exact"] == pytest.approx(60.0) and got["best_exact_thresh"] == -3.0
    assert got["best_f1"] == pytest.approx(68.0) and got["best_f1_thresh"] == 1.0
    # The main figures stay those of the predictions as given.
    assert got["exact"] == pytest.approx(40.0) and got["f1"] == pytest.approx(48.0)


def test_best_threshold_search_over_span_predictions_by_hand():
    examples, preds = hand_set()
    na = {"q1": -3.0, "q2": 1.0, "q3": 2.0, "q4": 1.5, "q5": 0.5}
    # Best non-null spans: q5's is right ("1843") although it was predicted "" (0.5 > 0);
    # the unanswerable q3 and q4 have spans too.
    spans = {"q1": "Denver Broncos", "q2": "Lovelace", "q3": "London", "q4": "Paris", "q5": "1843"}
    got = squad_evaluate(examples, preds, na, span_predictions=spans)
    # Start at 2 (q3, q4 right as "no answer"); walk q1, q5, q2, q4, q3 with their spans:
    #   exact: 2 -> q1 +1 = 3 (-3.0) -> q5 +1 = 4 (best, 0.5) -> q2 +0 -> q4 -1 -> q3 -1
    #   F1:    2 -> 3 (-3.0) -> 4 (0.5) -> q2 +0.4 = 4.4 (best, 1.0) -> q4 -1 -> q3 -1
    # Check: at 1.0, q3/q4 say "no answer" (right), q1 1 + q5 1 + q2 0.4 -> 4.4 / 5 = 88.
    assert got["best_exact"] == pytest.approx(80.0) and got["best_exact_thresh"] == 0.5
    assert got["best_f1"] == pytest.approx(88.0) and got["best_f1_thresh"] == 1.0
    assert got["exact"] == pytest.approx(40.0) and got["f1"] == pytest.approx(48.0)
    with pytest.raises(ValueError, match="pass no_answer_scores"):
        squad_evaluate(examples, preds, span_predictions=spans)


def test_best_threshold_stays_zero_when_answering_nothing_is_best():
    examples = [QAExample("a", "?", "c", (), True), QAExample("b", "?", "c", ("x",), False)]
    # Both predictions wrong: "no answer" everywhere (1 of 2 right) beats any threshold.
    got = squad_evaluate(examples, {"a": "y", "b": "z"}, {"a": -1.0, "b": -2.0})
    assert got["best_exact"] == pytest.approx(50.0) and got["best_exact_thresh"] == 0.0


def test_v1_data_has_no_noans_breakdown_and_unanswerable_only_has_no_hasans():
    v1 = [QAExample("a", "?", "c", ("Paris",), False), QAExample("b", "?", "c", ("Rome",), False)]
    got = squad_evaluate(v1, {"a": "paris", "b": "Milan"})
    assert got == pytest.approx({"exact": 50.0, "f1": 50.0, "total": 2,
                                 "HasAns_exact": 50.0, "HasAns_f1": 50.0, "HasAns_total": 2})
    none = [QAExample("n", "?", "c", (), True)]
    assert set(squad_evaluate(none, {"n": ""})) == {"exact", "f1", "total", "NoAns_exact",
                                                    "NoAns_f1", "NoAns_total"}


def test_gold_answers_that_normalise_to_nothing_are_ignored():
    # Gold "the" normalises to "", so the only gold left is "" (official rule) while the
    # question still counts as answerable because it has an answer in the file.
    ex = [QAExample("t", "?", "c", ("the",), False)]
    got = squad_evaluate(ex, {"t": ""})
    assert got["exact"] == 100.0 and got["HasAns_total"] == 1


def test_extra_predictions_are_ignored_and_missing_ones_refused():
    examples, preds = hand_set()
    assert squad_evaluate(examples, {**preds, "zzz": "x"})["total"] == 5
    with pytest.raises(ValueError, match="predictions lack 1 of 5 questions"):
        squad_evaluate(examples, {k: v for k, v in preds.items() if k != "q2"})
    with pytest.raises(ValueError, match="no_answer_scores lack"):
        squad_evaluate(examples, preds, {"q1": 0.0})
    with pytest.raises(ValueError, match="unique"):
        squad_evaluate(examples + examples[:1], preds)
