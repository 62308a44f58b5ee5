"""Windows from squad_features, checked against transformers' fast tokenizer pair encoding.

The reference for every layout check is the tokenizer's own pair call with the settings of
transformers' run_qa.py (truncation="only_second", stride, return_overflowing_tokens), and for the
max-context flag a direct transcription of BERT's ``_check_is_max_context`` loop.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trt_handler.qa.types import QAExample, Window
from trt_handler.qa.windows import (
    FeatureConfig,
    FeatureError,
    WindowMaker,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def maker(tokenizer):
    return WindowMaker(tokenizer)


def truncate_questions(tokenizer, questions: list[str], max_query_length: int) -> list[str]:
    """Each question's text cut at the character end of its max_query_length-th token."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(offs) <= max_query_length else q[: offs[max_query_length - 1][1]]
            for q, offs in zip(questions, enc["offset_mapping"])]


def reference_windows(tokenizer, examples, cfg: FeatureConfig) -> list[list[dict[str, np.ndarray]]]:
    """Windows as transformers' fast tokenizer makes them (run_qa.py settings), per example."""
    questions = truncate_questions(tokenizer, [ex.question for ex in examples], cfg.max_query_length)
    enc = tokenizer(questions, [ex.context for ex in examples], truncation="only_second",
                    max_length=cfg.max_seq_length, stride=cfg.doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    out: list[list[dict[str, np.ndarray]]] = [[] for _ in examples]
    for k, sample in enumerate(enc["overflow_to_sample_mapping"]):
        seq = np.array([-1 if s is None else s for s in enc.sequence_ids(k)])
        out[sample].append({
            "input_ids": np.array(enc["input_ids"][k]),
            "token_type_ids": np.array(enc["token_type_ids"][k]),
            "offsets": np.array(enc["offset_mapping"][k]),
            "is_context": seq == 1,
        })
    return out


def reference_is_max_context(spans, cur_span_index: int, position: int) -> bool:
    """BERT run_squad.py ``_check_is_max_context``, transcribed; spans are (start, length)."""
    best_score, best_span_index = None, None
    for span_index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        num_left_context = position - start
        num_right_context = end - position
        score = min(num_left_context, num_right_context) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_span_index = score, span_index
    return cur_span_index == best_span_index


def context_start(window: Window) -> int:
    return int(np.argmax(window.is_context))


def assert_same_as_reference(windows: list[Window], ref: list[dict[str, np.ndarray]], ex_id: str):
    assert len(windows) == len(ref), f"{ex_id}: {len(windows)} windows, transformers makes {len(ref)}"
    for k, (w, r) in enumerate(zip(windows, ref)):
        pairs = {
            "input_ids": (w.input_ids, r["input_ids"]),
            "token_type_ids": (w.token_type_ids, r["token_type_ids"]),
            "is_context": (w.is_context, r["is_context"]),
            "context offsets": (w.offsets[w.is_context], r["offsets"][r["is_context"]]),
        }
        for name, (got, want) in pairs.items():
            if not np.array_equal(got, want):  # fast path; the assert below explains a mismatch
                np.testing.assert_array_equal(got, want, err_msg=f"{ex_id} window {k} {name}")
        assert (w.offsets[~w.is_context] == -1).all()


def long_context(examples: list[QAExample], min_chars: int) -> str:
    """Distinct B1 paragraphs joined until the text is at least min_chars long."""
    parts: list[str] = []
    for ctx in dict.fromkeys(ex.context for ex in examples):
        parts.append(ctx)
        if sum(map(len, parts)) >= min_chars:
            return " ".join(parts)
    raise AssertionError("not enough text in B1")


# --- config and tokenizer -------------------------------------------------------------------

def test_feature_config_defaults_and_validation():
    cfg = FeatureConfig()
    assert (cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length) == (384, 128, 64)
    with pytest.raises(ValueError, match="doc_stride"):
        FeatureConfig(max_seq_length=128, doc_stride=64, max_query_length=64)  # room 61 <= 64
    with pytest.raises(ValueError, match="max_query_length"):
        FeatureConfig(max_query_length=0)
    with pytest.raises(ValueError, match="max_seq_length"):
        FeatureConfig(max_seq_length=-1)


def test_load_tokenizer_missing_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "no-such-model")


def test_max_seq_length_longer_than_model_is_refused(tokenizer):
    with pytest.raises(ValueError, match="longer than the model accepts"):
        WindowMaker(tokenizer, FeatureConfig(max_seq_length=tokenizer.model_max_length + 1))


def test_non_bert_pair_layout_is_refused(tokenizer):
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = TemplateProcessing(  # RoBERTa-like: two separators between sequences
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.cls_token_id), ("[SEP]", tokenizer.sep_token_id)])
    other = PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]")
    with pytest.raises(ValueError, match="BERT-style"):
        WindowMaker(other)


# --- layout of single windows ---------------------------------------------------------------

def test_short_example_is_one_window_like_the_pair_encoding(tokenizer, maker):
    ex = QAExample("q1", "Who wrote it?", "It was written by Ada Lovelace in 1843.")
    (w,) = maker.windows(ex)
    ref = tokenizer(ex.question, ex.context, return_offsets_mapping=True)
    assert_same_as_reference([w], reference_windows(tokenizer, [ex], FeatureConfig())[0], ex.id)
    np.testing.assert_array_equal(w.input_ids, ref["input_ids"])
    assert (w.example_id, w.window_index) == ("q1", 0)
    assert w.input_ids.dtype == np.int32 and w.token_type_ids.dtype == np.int32
    assert w.offsets.dtype == np.int32 and w.offsets.shape == (w.length, 2)
    assert w.is_context.dtype == bool and w.max_context.dtype == bool
    np.testing.assert_array_equal(w.max_context, w.is_context)  # one window: all context is max
    spans = [ex.context[a:b] for a, b in w.offsets[w.is_context]]
    assert spans == ["It", "was", "written", "by", "Ada", "Love", "lace", "in", "1843", "."]


UNICODE_CONTEXTS = [
    "Ünïcödé  café\t\tnaïve résumé — Zürich's Straße",
    "İstanbul and 東京 and 😀 emoji, e\u0301 combining, x\u200by zero-width",
    "control\u0007chars\u0000inside   and\u00a0no-break\u3000ideographic space",
    "  leading and trailing whitespace runs \n\n\t  ",
    "Ｆｕｌｌｗｉｄｔｈ ﬁ ligature ½ Ⅻ ΑΒΓ Ωμέγα Кириллица",
]


@pytest.mark.parametrize("context", UNICODE_CONTEXTS)
def test_offsets_slice_the_original_context(tokenizer, maker, context):
    ex = QAExample("u", "What is here?", context)
    windows = maker.windows(ex)
    assert_same_as_reference(windows, reference_windows(tokenizer, [ex], FeatureConfig())[0], ex.id)
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    (w,) = windows
    tokens = tokenizer.convert_ids_to_tokens(w.input_ids[w.is_context].tolist())
    for tok, (a, b) in zip(tokens, w.offsets[w.is_context]):
        piece = context[a:b]
        assert piece and piece == piece.strip(), (tok, piece)  # never starts/ends in whitespace
        if tok != "[UNK]":
            assert normalize(piece).strip() == tok.removeprefix("##"), (tok, piece)
    starts = w.offsets[w.is_context, 0]
    assert (np.diff(starts) > 0).all()  # tokens in text order, no two at one place


def test_windows_are_never_padded(maker):
    (w,) = maker.windows(QAExample("p", "Why?", "Because."))
    # Counted by hand: [CLS] why ? [SEP] because . [SEP]
    assert w.length == 7
    assert w.token_type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert w.is_context.tolist() == [False] * 4 + [True, True, False]


# --- long questions and long contexts -------------------------------------------------------

def test_long_question_is_cut_to_64_tokens_and_kept(tokenizer, maker):
    question = "Which of the following " + " ".join(f"word{i}" for i in range(60)) + " is right?"
    assert len(tokenizer(question, add_special_tokens=False)["input_ids"]) > 64
    ex = QAExample("lq", question, "The right one is word7, said the teacher.")
    (w,) = maker.windows(ex)
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"][:64]
    assert w.input_ids[1:65].tolist() == q_ids
    assert w.input_ids[65] == tokenizer.sep_token_id and w.is_context[66]
    assert_same_as_reference([w], reference_windows(tokenizer, [ex], FeatureConfig())[0], ex.id)


def test_context_of_three_or_more_windows(tokenizer, maker, b1_examples):
    ex = QAExample("long", "What happened?", long_context(b1_examples, 3000))
    windows = maker.windows(ex)
    assert len(windows) >= 3
    assert [w.window_index for w in windows] == list(range(len(windows)))
    assert all(w.length <= 384 for w in windows) and windows[0].length == 384
    assert_same_as_reference(windows, reference_windows(tokenizer, [ex], FeatureConfig())[0], ex.id)
    # Neighbouring windows share exactly doc_stride context tokens (same character spans).
    for a, b in itertools.pairwise(windows):
        np.testing.assert_array_equal(a.offsets[a.is_context][-128:], b.offsets[b.is_context][:128])


@pytest.mark.parametrize("cfg", [FeatureConfig(), FeatureConfig(max_seq_length=96, doc_stride=25,
                                                                max_query_length=32)])
def test_max_context_follows_bert_check_is_max_context(tokenizer, b1_examples, cfg):
    # An odd stride makes tokens with equal left/right context in two windows (tie: first wins).
    ex = QAExample("long", "What happened?", long_context(b1_examples, 4000))
    windows = WindowMaker(tokenizer, cfg).windows(ex)
    n_q = int(np.argmax(windows[0].is_context)) - 2  # question tokens before [SEP]
    room = cfg.max_seq_length - n_q - 3
    starts = [i * (room - cfg.doc_stride) for i in range(len(windows))]
    spans = [(s, int(w.is_context.sum())) for s, w in zip(starts, windows)]
    for k, w in enumerate(windows):
        want = [reference_is_max_context(spans, k, spans[k][0] + j) for j in range(spans[k][1])]
        assert w.max_context[w.is_context].tolist() == want, f"window {k}"
        assert not w.max_context[~w.is_context].any()
    # Every context token is max context in exactly one window.
    owners = np.zeros(spans[-1][0] + spans[-1][1], dtype=int)
    for (s, n), w in zip(spans, windows):
        owners[s:s + n] += w.max_context[w.is_context]
    assert (owners == 1).all()


@pytest.mark.parametrize("cfg", [FeatureConfig(), FeatureConfig(max_seq_length=96, doc_stride=24,
                                                                max_query_length=16)])
def test_parity_with_transformers_on_b1(tokenizer, b1_examples, cfg):
    """Acceptance: same windows as transformers' fast tokenizer for every B1 question. The small
    config makes many windows per question (the overlap rule runs thousands of times) and cuts
    dozens of questions (ids cut at 16 tokens == text cut after the 16th token)."""
    examples = b1_examples if cfg == FeatureConfig() else b1_examples[::8]
    ours = WindowMaker(tokenizer, cfg).windows_many(examples)
    ref = reference_windows(tokenizer, examples, cfg)
    assert sum(len(r) for r in ref) > len(examples)  # some questions need several windows
    for ex, windows, r in zip(examples, ours, ref):
        assert not isinstance(windows, FeatureError), windows
        assert_same_as_reference(windows, r, ex.id)


# --- batching, errors, tokenizer state ------------------------------------------------------

def test_windows_many_shares_contexts_and_matches_single_calls(maker, b1_examples):
    examples = b1_examples[:12]  # several questions per paragraph
    assert len({ex.context for ex in examples}) < len(examples)
    batched = maker.windows_many(examples)
    for ex, got in zip(examples, batched):
        single = maker.windows(ex)
        assert len(got) == len(single)
        for a, b in zip(got, single):
            for name in ("input_ids", "token_type_ids", "offsets", "is_context", "max_context"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("question, context, field", [
    ("", "Some context.", "question"),
    ("   \t\n ", "Some context.", "question"),
    ("Who?", "", "context"),
    ("Who?", " \u3000\n\t ", "context"),
])
def test_blank_question_or_context_is_a_feature_error(maker, question, context, field):
    good = QAExample("ok", "Who?", "Ada did.")
    bad = QAExample("bad", question, context)
    results = maker.windows_many([good, bad, good])
    assert isinstance(results[1], FeatureError)
    assert field in str(results[1]) and "'bad'" in str(results[1])
    assert [len(results[0]), len(results[2])] == [1, 1]
    with pytest.raises(FeatureError, match=field):
        maker.windows(bad)


def test_text_with_nothing_to_tokenize_is_a_feature_error(maker):
    with pytest.raises(FeatureError, match="context .* no tokens"):
        maker.windows(QAExample("c", "Who?", "\u0007\u0000\u200b"))
    with pytest.raises(FeatureError, match="question .* no tokens"):
        maker.windows(QAExample("q", "\u0007", "Ada did."))


def test_non_string_text_is_a_feature_error(maker):
    with pytest.raises(FeatureError, match="not a string"):
        maker.windows(QAExample("n", None, "Ada did."))  # type: ignore[arg-type]


def test_tokenizer_truncation_settings_do_not_leak_into_windows(tokenizer, b1_examples):
    ex = QAExample("long", "What happened?", long_context(b1_examples, 3000))
    tokenizer("a b c", truncation=True, max_length=8)  # leaves truncation set on the backend
    tokenizer.backend_tokenizer.enable_truncation(16)
    try:
        windows = WindowMaker(tokenizer).windows(ex)
    finally:
        tokenizer.backend_tokenizer.no_truncation()
    assert len(windows) >= 3 and windows[0].length == 384


def test_window_maker_pickles_for_beam(maker, b1_examples):
    # Beam pickles DoFns and their closures; the copy must keep truncation off.
    import pickle

    clone = pickle.loads(pickle.dumps(maker))
    ex = QAExample("long", "What happened?", long_context(b1_examples, 3000))
    got, want = clone.windows(ex), maker.windows(ex)
    assert len(got) == len(want) >= 3
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_tokenizer_loads_from_a_bundle_folder_without_model_config(tokenizer, maker, tmp_path):
    # An exported model bundle holds model.onnx and the tokenizer files, no config.json.
    tokenizer.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    ex = QAExample("b", "Who wrote it?", "Ada Lovelace wrote it in 1843.")
    (got,) = WindowMaker(load_tokenizer(tmp_path)).windows(ex)
    (want,) = maker.windows(ex)
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    np.testing.assert_array_equal(got.offsets, want.offsets)


# --- bounded memory: linear max-context, window limit ---------------------------------------

def test_max_context_window_matches_bert_on_generated_geometries():
    """The one-pass rule against the transcribed BERT loop, for random context sizes and window
    geometries (odd strides make ties; step 1 makes every token sit in `room` windows)."""
    from trt_handler.qa.windows import _max_context_window, _spans, num_windows

    rng = np.random.default_rng(5)
    cases = [(int(rng.integers(1, 400)), int(rng.integers(2, 60))) for _ in range(150)]
    for n, room in cases + [(300, 40), (97, 5)]:
        stride = int(rng.integers(0, room))
        bounds = [(s, e) for s, e, _ in _spans.__wrapped__(n, room, stride)]
        want_bounds = []  # the tokenizers library's overflow loop
        for start in range(0, n, room - stride):
            want_bounds.append((start, min(start + room, n)))
            if start + room >= n:
                break
        assert bounds == want_bounds and num_windows(n, room, stride) == len(bounds)
        if len(bounds) == 1:
            continue
        best = _max_context_window(bounds, n)
        spans = [(s, e - s) for s, e in bounds]
        want = [next(k for k in range(len(spans)) if reference_is_max_context(spans, k, p)) for p in range(n)]
        assert best.tolist() == want, (n, room, stride)


def test_max_context_memory_is_linear_in_the_context():
    """A 100k-token context at the default geometry: the old windows x tokens score matrix was
    ~400 x 100k float64 (300 MB, several of them); the one-pass rule keeps a few arrays of 100k."""
    import tracemalloc

    from trt_handler.qa.windows import _max_context_window, _spans

    n = 100_000
    bounds = [(s, e) for s, e, _ in _spans.__wrapped__(n, 371, 128)]
    assert len(bounds) > 400
    tracemalloc.start()
    try:
        best = _max_context_window(bounds, n)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert best.shape == (n,) and best[0] == 0 and best[-1] == len(bounds) - 1
    assert peak < 40 * n, f"peak {peak / 2**20:.0f} MiB for {n} tokens"


def _words_context(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["river", "castle", "seven", "north", "music", "green", "table", "silver"]
    return " ".join(words[i] for i in rng.integers(0, len(words), n_words))


def test_too_many_windows_is_a_feature_error_with_its_code(tokenizer):
    import pickle

    from trt_handler.qa.windows import num_windows

    context = _words_context(3000, seed=1)  # one token a word
    ex = QAExample("many", "Which castle?", context)
    unlimited = WindowMaker(tokenizer, FeatureConfig(max_windows_per_question=None)).windows(ex)
    n = len(unlimited)
    assert n > 5
    n_context = int(unlimited[-1].is_context.sum()) + (n - 1) * (384 - 3 - 3 - 128)  # 3 question tokens
    assert num_windows(n_context, 384 - 3 - 3, 128) == n
    assert len(WindowMaker(tokenizer, FeatureConfig(max_windows_per_question=n)).windows(ex)) == n
    (result,) = WindowMaker(tokenizer, FeatureConfig(max_windows_per_question=n - 1)).windows_many([ex])
    assert isinstance(result, FeatureError) and result.code == "too_many_windows"
    assert f"needs {n} windows" in str(result) and "max_windows_per_question" in str(result)
    clone = pickle.loads(pickle.dumps(result))
    assert clone.code == "too_many_windows" and str(clone) == str(result)
    assert FeatureError("x").code == "feature_error"
    # the default limit holds a 100,000-character English context, and stops a CJK one of that size
    english = QAExample("en", "Which castle?", _words_context(16_000)[:100_000])
    assert len(english.context) == 100_000
    assert isinstance(WindowMaker(tokenizer).windows_many([english])[0], list)
    cjk = QAExample("zh", "哪个城堡？", "".join(chr(0x4E00 + int(i)) for i in
                                           np.random.default_rng(2).integers(0, 2000, 100_000)))
    (res,) = WindowMaker(tokenizer).windows_many([cjk])
    assert isinstance(res, FeatureError) and res.code == "too_many_windows"
    with pytest.raises(ValueError, match="max_windows_per_question"):
        FeatureConfig(max_windows_per_question=0)
