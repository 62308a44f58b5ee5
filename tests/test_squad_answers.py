"""Answer extraction: hand-built windows with hand-set logits, real windows at window boundaries,
and real MiniLM logits checked against a brute-force search over every valid span."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest

from trt_handler.qa.answers import AnswerConfig, extract_answer
from trt_handler.qa.types import QAExample, Window, WindowLogits
from trt_handler.qa.windows import WindowMaker

NEG = -20.0  # a logit low enough never to matter


def hand_window(ex_id: str, spans: Sequence[tuple[int, int]], max_context: Sequence[bool] | None = None,
                index: int = 0, num: int = 1, n_question: int = 2) -> Window:
    """[CLS] q*n_question [SEP] <one token per char span> [SEP]; ids are placeholders."""
    c0 = n_question + 2
    length = c0 + len(spans) + 1
    offsets = np.full((length, 2), -1, dtype=np.int32)
    offsets[c0:-1] = np.array(spans, dtype=np.int32).reshape(-1, 2)
    is_context = np.zeros(length, dtype=bool)
    is_context[c0:-1] = True
    max_ctx = is_context.copy()
    if max_context is not None:
        max_ctx[c0:-1] = max_context
    token_type_ids = np.zeros(length, dtype=np.int32)
    token_type_ids[c0:] = 1
    return Window(ex_id, index, np.arange(length, dtype=np.int32), token_type_ids, offsets,
                  is_context, max_ctx)


def hand_logits(length: int, starts: dict, ends: dict, cls: tuple[float, float] = (NEG, NEG),
                other: float = NEG) -> WindowLogits:
    """Logits that are ``other`` everywhere except the given {position: value} and [CLS]."""
    s = np.full(length, other, dtype=np.float32)
    e = np.full(length, other, dtype=np.float32)
    s[0], e[0] = cls
    for pos, v in starts.items():
        s[pos] = v
    for pos, v in ends.items():
        e[pos] = v
    return WindowLogits(s, e)


# "Ada Lovelace wrote it." -> tokens Ada(0,3) Lovelace(4,12) wrote(13,18) it(19,21) .(21,22)
ADA = QAExample("ada", "Who wrote it?", "Ada Lovelace wrote it.")
ADA_SPANS = [(0, 3), (4, 12), (13, 18), (19, 21), (21, 22)]
C0 = 4  # first context position in hand windows (2 question tokens)


def ada_logits(cls: tuple[float, float]) -> WindowLogits:
    # Valid spans and scores (start + end): "Ada Lovelace" 2.0+1.5=3.5, "Ada" 2.0+0.0=2.0,
    # "Lovelace" 0.2+1.5=1.7; every other span involves a NEG logit.
    return hand_logits(10, {C0: 2.0, C0 + 1: 0.2}, {C0: 0.0, C0 + 1: 1.5}, cls=cls)


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [x / sum(exps) for x in exps]


# --- hand-built cases -----------------------------------------------------------------------

def test_best_span_text_score_and_n_best_probabilities():
    w = hand_window("ada", ADA_SPANS)
    ans = extract_answer(ADA, [w], [ada_logits(cls=(1.0, 0.5))])
    assert ans.text == "Ada Lovelace" and ans.best_span_text == "Ada Lovelace"
    assert (ans.start_char, ans.end_char, ans.window_index) == (0, 12, 0)
    assert ans.score == pytest.approx(3.5) and ans.null_score == pytest.approx(1.5)
    # n-best by score, null (1.5) sorted in: 3.5, 2.0, 1.7, then spans with NEG logits, ...
    texts = [c["text"] for c in ans.n_best]
    assert texts[:4] == ["Ada Lovelace", "Ada", "Lovelace", ""]
    assert len(ans.n_best) == 16  # all 15 spans of a 5-token context, plus the null
    top = softmax([c["score"] for c in ans.n_best])
    assert ans.probability == pytest.approx(top[0])
    assert [c["probability"] for c in ans.n_best] == pytest.approx(top)
    # The first three and the null hold nearly all the mass: exp(3.5) / (e^3.5+e^2+e^1.7+e^1.5)
    assert ans.probability == pytest.approx(
        math.exp(3.5) / (math.exp(3.5) + math.exp(2.0) + math.exp(1.7) + math.exp(1.5)), rel=1e-6)


def test_null_wins_in_v2_loses_under_threshold_and_never_answers_in_v1():
    w = hand_window("ada", ADA_SPANS)
    lg = ada_logits(cls=(3.0, 3.0))  # null 6.0 vs best span 3.5: difference 2.5
    ans = extract_answer(ADA, [w], [lg])
    assert ans.text == "" and ans.is_no_answer
    assert ans.best_span_text == "Ada Lovelace" and ans.score == pytest.approx(3.5)
    assert ans.null_score == pytest.approx(6.0) and (ans.start_char, ans.end_char) == (-1, -1)
    null_entry = next(c for c in ans.n_best if c["text"] == "")
    assert ans.n_best[0]["text"] == "" and ans.probability == pytest.approx(null_entry["probability"])
    assert extract_answer(ADA, [w], [lg], AnswerConfig(null_threshold=2.4)).text == ""
    assert extract_answer(ADA, [w], [lg], AnswerConfig(null_threshold=2.5)).text == "Ada Lovelace"
    v1 = extract_answer(ADA, [w], [lg], AnswerConfig(version_2_with_negative=False))
    assert v1.text == "Ada Lovelace" and "" not in [c["text"] for c in v1.n_best]


def test_null_score_is_the_minimum_over_windows():
    # Two windows over the same tokens; the span is only max context in window 1.
    w0 = hand_window("ada", ADA_SPANS, max_context=[False] * 5, index=0, num=2)
    w1 = hand_window("ada", ADA_SPANS, index=1, num=2)
    lg0 = ada_logits(cls=(5.0, 5.0))  # null 10 here
    lg1 = ada_logits(cls=(1.0, 1.0))  # null 2 here: min is 2 < 3.5, so the span is the answer
    ans = extract_answer(ADA, [w0, w1], [lg0, lg1])
    assert ans.null_score == pytest.approx(2.0)
    assert ans.text == "Ada Lovelace" and ans.window_index == 1


def test_start_must_be_max_context_and_end_must_be_context():
    # Lovelace is not max context here, so "Lovelace wrote" (7.0) may not start there.
    w = hand_window("ada", ADA_SPANS, max_context=[True, False, True, True, True])
    lg = hand_logits(10, {C0 + 1: 4.0, C0 + 2: 1.0}, {C0 + 2: 3.0, 9: 50.0})  # 9 is the last [SEP]
    ans = extract_answer(ADA, [w], [lg])
    assert ans.text == "wrote" and ans.score == pytest.approx(4.0)


def test_end_before_start_is_skipped():
    w = hand_window("ada", ADA_SPANS)
    # start "it" 9 + end "Ada" 8 = 17 runs backwards; the best forward pair is "Ada" 1 + 8 = 9.
    lg = hand_logits(10, {C0 + 3: 9.0, C0: 1.0}, {C0: 8.0, C0 + 2: 2.0})
    ans = extract_answer(ADA, [w], [lg])
    assert ans.text == "Ada" and ans.score == pytest.approx(9.0)


def test_spans_longer_than_max_answer_length_are_skipped():
    w = hand_window("ada", ADA_SPANS)
    # "Ada Lovelace wrote it." = 5 tokens, 5 + 4 = 9; "Ada Lovelace" = 2 tokens, 5 + 1 = 6.
    lg = hand_logits(10, {C0: 5.0}, {C0 + 4: 4.0, C0 + 1: 1.0})
    assert extract_answer(ADA, [w], [lg]).text == "Ada Lovelace wrote it."
    assert extract_answer(ADA, [w], [lg], AnswerConfig(max_answer_length=5)).text == "Ada Lovelace wrote it."
    assert extract_answer(ADA, [w], [lg], AnswerConfig(max_answer_length=4)).text == "Ada Lovelace"


def test_high_question_logits_do_not_crowd_out_context_spans():
    # Deviation from run_squad: positions that cannot start/end a span are masked before top-k.
    w = hand_window("ada", ADA_SPANS)
    lg = hand_logits(10, {1: 30.0, 2: 30.0, 3: 30.0, C0 + 1: 1.0}, {1: 30.0, 2: 30.0, C0 + 1: 1.0})
    ans = extract_answer(ADA, [w], [lg], AnswerConfig(n_best=1))
    assert ans.text == "Lovelace"


def test_same_text_appears_once_in_n_best():
    ex = QAExample("cat", "What?", "cat and cat")
    w = hand_window("cat", [(0, 3), (4, 7), (8, 11)])
    lg = hand_logits(8, {C0: 3.0, C0 + 2: 2.5}, {C0: 3.0, C0 + 2: 2.5})
    ans = extract_answer(ex, [w], [lg])
    texts = [c["text"] for c in ans.n_best]
    assert texts.count("cat") == 1 and ans.text == "cat" and ans.start_char == 0
    assert len(texts) == len(set(texts))


def test_n_best_of_one_keeps_both_outcomes():
    w = hand_window("ada", ADA_SPANS)
    ans = extract_answer(ADA, [w], [ada_logits(cls=(3.0, 3.0))], AnswerConfig(n_best=1, null_threshold=5))
    assert ans.text == "Ada Lovelace" and [c["text"] for c in ans.n_best] == ["", "Ada Lovelace"]


@pytest.mark.parametrize("mutate, message", [
    (lambda ws, ls: (ws, ls[:1]), "2 windows but 1 logits"),
    (lambda ws, ls: (ws[1:], ls[1:]), "pass all 1 windows of a question"),
    (lambda ws, ls: ([ws[0], hand_window("other", ADA_SPANS, index=1, num=2)], ls), "passed with question"),
    (lambda ws, ls: (ws, [ls[0], WindowLogits(ls[1].start_logits[:5], ls[1].end_logits[:5])]), "cut the"),
    (lambda ws, ls: (ws, [ls[0], WindowLogits(ls[1].start_logits * np.nan, ls[1].end_logits)]), "NaN"),
])
def test_inconsistent_inputs_are_refused(mutate, message):
    ws = [hand_window("ada", ADA_SPANS, index=i, num=2) for i in range(2)]
    ls = [ada_logits(cls=(0.0, 0.0)) for _ in range(2)]
    with pytest.raises(ValueError, match=message):
        extract_answer(ADA, *mutate(ws, ls))


def test_answer_config_validation():
    with pytest.raises(ValueError, match="n_best"):
        AnswerConfig(n_best=0)
    with pytest.raises(ValueError, match="null_threshold"):
        AnswerConfig(null_threshold=float("nan"))


# --- real windows ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_example(b1_examples) -> QAExample:
    contexts = list(dict.fromkeys(ex.context for ex in b1_examples))
    return QAExample("long", "What is it?", " ".join(contexts[:8]))


def spike(window: Window, start_char: int, end_char: int) -> WindowLogits:
    """Logits of 10 at the tokens that start at start_char / end at end_char, when present."""
    s = np.full(window.length, -5.0, dtype=np.float32)
    e = np.full(window.length, -5.0, dtype=np.float32)
    s[(window.offsets[:, 0] == start_char) & window.is_context] = 10.0
    e[(window.offsets[:, 1] == end_char) & window.is_context] = 10.0
    return WindowLogits(s, e)


def token_chars(window: Window, position: int) -> tuple[int, int]:
    return int(window.offsets[position, 0]), int(window.offsets[position, 1])


def test_answer_inside_the_overlap_comes_from_its_max_context_window(tokenizer, long_example):
    windows = WindowMaker(tokenizer).windows(long_example)
    assert len(windows) >= 3
    w0 = windows[0]
    last0 = np.flatnonzero(w0.is_context)[-1]
    for back in (100, 20):  # start in the first half of the overlap, then in the second half
        start_tok = last0 - back
        a, _ = token_chars(w0, start_tok)
        _, b = token_chars(w0, start_tok + 2)
        ans = extract_answer(long_example, windows, [spike(w, a, b) for w in windows])
        owner = 0 if w0.max_context[start_tok] else 1
        assert owner == (0 if back > 64 else 1)
        assert ans.window_index == owner and ans.text == long_example.context[a:b]
        assert ans.score == pytest.approx(20.0)


def test_answer_across_the_end_of_a_window(tokenizer, long_example):
    windows = WindowMaker(tokenizer).windows(long_example)
    w0 = windows[0]
    last0 = np.flatnonzero(w0.is_context)[-1]
    a, _ = token_chars(w0, last0 - 1)  # starts two tokens before window 0 ends ...
    w1 = windows[1]
    b = int(w1.offsets[w1.is_context][129, 1])  # ... ends two tokens after it (overlap is 128)
    ans = extract_answer(long_example, windows, [spike(w, a, b) for w in windows])
    assert ans.window_index == 1 and ans.text == long_example.context[a:b]
    assert (ans.start_char, ans.end_char) == (a, b)


def test_window_order_does_not_matter(tokenizer, long_example):
    windows = WindowMaker(tokenizer).windows(long_example)
    rng = np.random.default_rng(0)
    logits = [WindowLogits(rng.normal(size=w.length).astype(np.float32),
                           rng.normal(size=w.length).astype(np.float32)) for w in windows]
    ref = extract_answer(long_example, windows, logits)
    order = list(range(len(windows)))
    random.Random(1).shuffle(order)
    got = extract_answer(long_example, [windows[i] for i in order], [logits[i] for i in order])
    assert got == ref


# --- real model logits vs brute force -------------------------------------------------------

def brute_force(example: QAExample, windows: Sequence[Window], logits: Sequence[WindowLogits],
                max_answer_length: int = 30, threshold: float = 0.0) -> tuple[str, float, float]:
    """(text, best span score, null score) by trying every (start, end) pair of every window."""
    best_score, best_text, null = -math.inf, None, math.inf
    for w, lg in zip(windows, logits):
        s = lg.start_logits.astype(np.float64)
        e = lg.end_logits.astype(np.float64)
        null = min(null, s[0] + e[0])
        for i in range(w.length):
            if not (w.is_context[i] and w.max_context[i]):
                continue
            for j in range(i, min(i + max_answer_length, w.length)):
                if w.is_context[j] and s[i] + e[j] > best_score:
                    best_score = s[i] + e[j]
                    best_text = example.context[w.offsets[i, 0]:w.offsets[j, 1]]
    text = "" if null - best_score > threshold else best_text
    return text, best_score, null


def run_model(torch, model, windows: Sequence[Window]) -> dict:
    """{(example id, window index): WindowLogits} from the PyTorch model, float32, 8 a batch."""
    from trt_handler.qa.batching import pad_windows

    out = {}
    with torch.no_grad():
        for k in range(0, len(windows), 8):
            group = windows[k:k + 8]
            feed = pad_windows(group).as_feed()
            res = model(**{n: torch.from_numpy(a.astype(np.int64)) for n, a in feed.items()})
            for row, w in enumerate(group):
                out[(w.example_id, w.window_index)] = WindowLogits(
                    res.start_logits[row, : w.length].numpy(), res.end_logits[row, : w.length].numpy())
    return out


def test_real_logits_match_brute_force(model_dir, tokenizer, b1_examples):
    torch = pytest.importorskip("torch")
    from transformers import BertForQuestionAnswering

    maker = WindowMaker(tokenizer)
    all_windows = maker.windows_many(b1_examples)
    # 40 questions: the first 2 that need several windows, and the 38 with the shortest windows
    # among the first 1000 (keeps the CPU model run to a few seconds).
    multi = [i for i, ws in enumerate(all_windows) if len(ws) > 1][:2]
    short = sorted(range(1000), key=lambda i: all_windows[i][0].length)
    picked = multi + [i for i in short if i not in multi][: 40 - len(multi)]
    flat = sorted((w for i in picked for w in all_windows[i]), key=lambda w: w.length)
    model = BertForQuestionAnswering.from_pretrained(model_dir, dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared; one thread is as fast
    try:
        logits = run_model(torch, model, flat)
    finally:
        torch.set_num_threads(threads)
    texts = []
    for i in picked:
        ex, ws = b1_examples[i], all_windows[i]
        lgs = [logits[(w.example_id, w.window_index)] for w in ws]
        ans = extract_answer(ex, ws, lgs)
        text, score, null = brute_force(ex, ws, lgs)
        assert (ans.text, ans.score, ans.null_score) == (text, pytest.approx(score), pytest.approx(null)), ex.id
        texts.append(ans.text)
    assert len(multi) == 2 and any(texts) and not all(texts)  # both kinds of outcome were checked


# --------------------------------------------------------------------------------------------
# align_to_words


WASH = "George Washington was born in 1732 (Virginia)."
# word pieces as the tokenizer cuts them: George | Wash | ##ington | was | born | in | 17 | ##32 | ( | Virginia | ) | .
WASH_SPANS = [(0, 6), (7, 11), (11, 17), (18, 21), (22, 26), (27, 29), (30, 32), (32, 34), (35, 36),
              (36, 44), (44, 45), (45, 46)]


def test_align_to_words_widens_a_word_piece_to_its_word():
    from trt_handler.qa.answers import align_span_to_words

    ex = QAExample("w", "Who?", WASH)
    w = hand_window("w", WASH_SPANS)
    c0 = 4
    lg = hand_logits(w.length, {c0 + 2: 5.0, c0 + 7: 3.0}, {c0 + 2: 5.0, c0 + 7: 3.0})
    plain = extract_answer(ex, [w], [lg], AnswerConfig())
    aligned = extract_answer(ex, [w], [lg], AnswerConfig(align_to_words=True))
    assert plain.text == "ington" and aligned.text == "Washington"
    assert WASH[aligned.start_char:aligned.end_char] == aligned.text and aligned.score == plain.score
    texts = [c["text"] for c in aligned.n_best if c["text"]]
    assert "32" not in texts and "1732" in texts and len(set(texts)) == len(texts)
    for c in aligned.n_best:
        if c["text"]:
            assert WASH[c["start_char"]:c["end_char"]] == c["text"]
    # punctuation and whitespace are boundaries: nothing to widen
    assert align_span_to_words(WASH, 36, 44) == (36, 44)  # "Virginia" inside "(...)"
    assert align_span_to_words(WASH, 35, 44) == (35, 44)  # "(Virginia"
    assert align_span_to_words(WASH, 32, 34) == (30, 34)  # "32" -> "1732"
    assert align_span_to_words(WASH, 0, len(WASH)) == (0, len(WASH))


def test_align_to_words_on_real_b1_answers(bundled_model, test_cache, b1_examples):
    """On real questions and the bundled model, every aligned answer is an exact slice of its
    context, starts and ends on word boundaries, and contains the unaligned answer's span."""
    from trt_handler.evaluate import answer_examples
    from trt_handler.qa.answers import _is_word_char

    examples = b1_examples[:60]
    plain = answer_examples(examples, str(bundled_model), test_cache, answer_config=AnswerConfig())
    aligned = answer_examples(examples, str(bundled_model), test_cache,
                              answer_config=AnswerConfig(align_to_words=True))
    for ex in examples:
        p, a = plain[ex.id], aligned[ex.id]
        best = a.n_best[0] if a.n_best[0]["text"] else next(c for c in a.n_best if c["text"])
        s, e = best["start_char"], best["end_char"]
        assert ex.context[s:e] == best["text"]
        assert s == 0 or not (_is_word_char(ex.context[s - 1]) and _is_word_char(ex.context[s]))
        assert e == len(ex.context) or not (_is_word_char(ex.context[e - 1]) and _is_word_char(ex.context[e]))
        if best["score"] == p.n_best[0]["score"] and p.n_best[0]["text"]:  # same best candidate, widened
            assert p.n_best[0]["start_char"] >= s and p.n_best[0]["end_char"] <= e
        if a.text:
            assert ex.context[a.start_char:a.end_char] == a.text
