"""The CPU work of the sample this project replaces, rebuilt as a yardstick (not product code).

NVIDIA's BERT sample answered SQuAD with the original BERT recipe: a pure-Python tokenizer
(Google's basic + WordPiece algorithm), one feature per question (its first 384-token window,
the rest of the context dropped), fixed batches of 16, then the original answer search over the
start/end logits. Two yardsticks, both with transformers' pure-Python ``BasicTokenizer`` /
``WordpieceTokenizer`` (the same algorithm), a model that costs nothing (seeded random logits), no
Beam, no validation, no output files:

- ``faithful`` (:func:`seed_cpu_work`, the default): the sample's own per-question steps, written
  here after its algorithm (``helpers/data_processing.py`` of TensorRT's demo/BERT): the feature with
  its token -> word map and per-token max-context flags, then ``get_predictions``: the top 20 start and
  end positions by a Python sort of each window's logits, every valid pair, a sort of the candidates,
  and for each n-best entry its text projected back onto the original words by ``get_final_text``
  (the basic tokenizer run again on the words), and a softmax (the sample runs it with v2 off).
- ``light`` (``faithful=False``): a lower bound that favours the seed: only the best valid pair of the
  top 20 starts and ends (numpy argsort), mapped to whole words; no n-best list, no text projection.

:func:`seed_cpu_work` is measured next to our pipeline in one process (``bench_cpu_ceiling
--variants seed,...``).
"""

from __future__ import annotations

import collections
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

SEQ, QUERY, STRIDE, BATCH, N_BEST, MAX_ANSWER = 384, 64, 128, 16, 20, 30


def _tokenizers(model_dir: str) -> Tuple[Any, Any, Dict[str, int]]:
    from tokenizers import Tokenizer
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer, WordpieceTokenizer

    vocab = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json")).get_vocab()
    return BasicTokenizer(do_lower_case=True), WordpieceTokenizer(vocab, "[UNK]"), vocab


def _wordpieces(basic: Any, wordpiece: Any, text: str) -> List[str]:
    return [piece for token in basic.tokenize(text) for piece in wordpiece.tokenize(token)]


def _feature(basic: Any, wordpiece: Any, vocab: Dict[str, int], question: str, context: str) -> Dict[str, Any]:
    """First window of one question: ids [SEQ], and each context piece's original word."""
    words = context.split()
    pieces, piece_word = [], []
    for i, word in enumerate(words):
        for piece in _wordpieces(basic, wordpiece, word):
            pieces.append(piece)
            piece_word.append(i)
    query = _wordpieces(basic, wordpiece, question)[:QUERY]
    doc = pieces[: SEQ - len(query) - 3]
    tokens = ["[CLS]", *query, "[SEP]", *doc, "[SEP]"]
    ids = np.zeros(SEQ, np.int32)
    ids[: len(tokens)] = [vocab.get(t, vocab["[UNK]"]) for t in tokens]
    mask = (np.arange(SEQ) < len(tokens)).astype(np.int32)
    segment = np.zeros(SEQ, np.int32)
    segment[len(query) + 2: len(tokens)] = 1
    return {"ids": ids, "mask": mask, "segment": segment, "offset": len(query) + 2, "doc": len(doc),
            "piece_word": piece_word, "words": words}


def _answer(feature: Dict[str, Any], start: np.ndarray, end: np.ndarray) -> str:
    """Best valid (start, end) among the n-best of each, mapped back to the original words."""
    best, span = -np.inf, None
    lo, hi = feature["offset"], feature["offset"] + feature["doc"]
    for s in np.argsort(start)[::-1][:N_BEST]:
        for e in np.argsort(end)[::-1][:N_BEST]:
            if lo <= s <= e < hi and e - s < MAX_ANSWER and start[s] + end[e] > best:
                best, span = start[s] + end[e], (s, e)
    if span is None:
        return ""
    first, last = (feature["piece_word"][i - lo] for i in span)
    return " ".join(feature["words"][first: last + 1])


def _sample_feature(basic: Any, wordpiece: Any, vocab: Dict[str, int], question: str, context: str
                    ) -> Dict[str, Any]:
    """The sample's feature for the first window: token -> original word map and max-context flags."""
    words = context.split()
    tok_to_orig: List[int] = []
    doc_pieces: List[str] = []
    for i, word in enumerate(words):
        for piece in _wordpieces(basic, wordpiece, word):
            tok_to_orig.append(i)
            doc_pieces.append(piece)
    query = _wordpieces(basic, wordpiece, question)[:QUERY]
    room = SEQ - len(query) - 3
    spans: List[Tuple[int, int]] = []  # the sample's doc spans: stride 128, the last one ending at the end
    start = 0
    while start < len(doc_pieces):
        length = min(len(doc_pieces) - start, room)
        spans.append((start, length))
        if start + length == len(doc_pieces):
            break
        start += min(length, STRIDE)
    span_start, span_len = spans[0] if spans else (0, 0)
    tokens = ["[CLS]", *query, "[SEP]"]
    segment = [0] * len(tokens)
    token_to_orig: Dict[int, int] = {}
    max_context: Dict[int, bool] = {}
    for i in range(span_len):
        at = span_start + i
        token_to_orig[len(tokens)] = tok_to_orig[at]
        max_context[len(tokens)] = _is_max_context(spans, 0, at)
        tokens.append(doc_pieces[at])
        segment.append(1)
    tokens.append("[SEP]")
    segment.append(1)
    ids = [vocab.get(t, vocab["[UNK]"]) for t in tokens]
    mask = [1] * len(ids)
    while len(ids) < SEQ:
        ids.append(0)
        mask.append(0)
        segment.append(0)
    return {"ids": np.asarray(ids, np.int32), "mask": np.asarray(mask, np.int32),
            "segment": np.asarray(segment, np.int32), "tokens": tokens, "token_to_orig": token_to_orig,
            "max_context": max_context, "words": words}


def _is_max_context(spans: List[Tuple[int, int]], index: int, position: int) -> bool:
    """Whether span ``index`` gives ``position`` its most context (BERT's score, first span on ties)."""
    best, best_index = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best is None or score > best:
                best, best_index = score, i
    return best_index == index


def _top(logits: List[float], n: int) -> List[int]:
    return [i for i, _ in sorted(enumerate(logits), key=lambda x: x[1], reverse=True)[:n]]


def _final_text(basic: Any, pred_text: str, orig_text: str) -> str:
    """The predicted wordpiece text projected back onto the original words (BERT's get_final_text)."""
    def strip_spaces(text: str) -> Tuple[str, Dict[int, int]]:
        chars, to_s = [], {}
        for i, c in enumerate(text):
            if c != " ":
                to_s[len(chars)] = i
                chars.append(c)
        return "".join(chars), to_s

    tok_text = " ".join(basic.tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_to_s = strip_spaces(orig_text)
    tok_ns, tok_to_s = strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {s: ns for ns, s in tok_to_s.items()}
    a, b = tok_s_to_ns.get(start), tok_s_to_ns.get(end)
    if a is None or b is None or a not in orig_to_s or b not in orig_to_s:
        return orig_text
    return orig_text[orig_to_s[a]: orig_to_s[b] + 1]


def _sample_predictions(basic: Any, feature: Dict[str, Any], start: np.ndarray, end: np.ndarray) -> Dict[str, Any]:
    """The sample's answer search for one question (its get_predictions runs with v2 off: the best
    n-best text is the answer)."""
    start_l, end_l = start.tolist(), end.tolist()
    n_tokens, to_orig, max_ctx = len(feature["tokens"]), feature["token_to_orig"], feature["max_context"]
    prelim = []
    for s in _top(start_l, N_BEST):
        for e in _top(end_l, N_BEST):
            if s >= n_tokens or e >= n_tokens or s not in to_orig or e not in to_orig:
                continue
            if not max_ctx.get(s, False) or e < s or e - s + 1 > MAX_ANSWER:
                continue
            prelim.append((s, e, start_l[s], end_l[e]))
    prelim.sort(key=lambda x: x[2] + x[3], reverse=True)
    seen, nbest = set(), []
    for s, e, s_logit, e_logit in prelim:
        if len(nbest) >= N_BEST:
            break
        tok_text = " ".join(feature["tokens"][s: e + 1]).replace(" ##", "").replace("##", "")
        tok_text = " ".join(tok_text.strip().split())
        orig_text = " ".join(feature["words"][to_orig[s]: to_orig[e] + 1])
        text = _final_text(basic, tok_text, orig_text)
        if text in seen:
            continue
        seen.add(text)
        if text:
            nbest.append((text, s_logit, e_logit))
    nbest = nbest or [("empty", 0.0, 0.0)]
    top = max(s_logit + e_logit for _, s_logit, e_logit in nbest)
    exps = [math.exp(s_logit + e_logit - top) for _, s_logit, e_logit in nbest]
    total = sum(exps)
    nbest_json = [collections.OrderedDict(text=t, probability=x / total, start_logit=sl, end_logit=el)
                  for (t, sl, el), x in zip(nbest, exps)]
    return {"text": nbest_json[0]["text"], "nbest": nbest_json}


def _free_model(rng: np.random.Generator, ids: np.ndarray, mask: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Start and end logits [2, B, SEQ] that cost nothing to compute."""
    return rng.standard_normal((2, *ids.shape), dtype=np.float32)


def seed_cpu_work(data: Path, model_dir: str, faithful: bool = True) -> Dict[str, Any]:
    """Answer every question of SQuAD JSON ``data`` the seed's way (see the module docstring for
    ``faithful``); wall/CPU seconds and counts."""
    basic, wordpiece, vocab = _tokenizers(model_dir)
    rng = np.random.default_rng(0)
    w0, c0 = time.perf_counter(), time.process_time()
    doc = json.loads(Path(data).read_text(encoding="utf-8"))
    items = [(qa["id"], qa["question"], p["context"]) for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]]
    answers: Dict[str, str] = {}
    for i in range(0, len(items), BATCH):
        chunk = items[i: i + BATCH]
        make = _sample_feature if faithful else _feature
        features = [make(basic, wordpiece, vocab, q, c) for _, q, c in chunk]
        batch = [np.stack([f[k] for f in features]) for k in ("ids", "mask", "segment")]
        start, end = _free_model(rng, *batch)
        for (qid, _, _), f, s, e in zip(chunk, features, start, end):
            answers[qid] = _sample_predictions(basic, f, s, e) if faithful else _answer(f, s, e)
    out = json.dumps(answers)
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "questions": len(items),
            "answered": len(answers), "output_chars": len(out)}
