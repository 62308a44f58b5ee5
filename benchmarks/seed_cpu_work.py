"""The CPU work of the sample this project replaces, rebuilt as a yardstick (not product code).

NVIDIA's BERT sample answered SQuAD with the original BERT recipe: a pure-Python tokenizer
(Google's basic + WordPiece algorithm), one feature per question (its first 384-token window,
the rest of the context dropped), fixed batches of 16, then n-best answer search over start/end
logits and the original words. :func:`seed_cpu_work` does that per question with
transformers' pure-Python ``BasicTokenizer``/``WordpieceTokenizer`` (the same algorithm) and a
model that costs nothing (seeded random logits), without Beam: the seed's CPU cost per question,
measured next to our pipeline in one process (``bench_cpu_ceiling --variants seed,...``).
It favours the seed: no Beam, no validation, no output files, first window only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

SEQ, QUERY, BATCH, N_BEST, MAX_ANSWER = 384, 64, 16, 20, 30


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


def _free_model(rng: np.random.Generator, ids: np.ndarray, mask: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Start and end logits [2, B, SEQ] that cost nothing to compute."""
    return rng.standard_normal((2, *ids.shape), dtype=np.float32)


def seed_cpu_work(data: Path, model_dir: str) -> Dict[str, Any]:
    """Answer every question of SQuAD JSON ``data`` the seed's way; wall/CPU seconds and counts."""
    basic, wordpiece, vocab = _tokenizers(model_dir)
    rng = np.random.default_rng(0)
    w0, c0 = time.perf_counter(), time.process_time()
    doc = json.loads(Path(data).read_text(encoding="utf-8"))
    items = [(qa["id"], qa["question"], p["context"]) for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]]
    answers: Dict[str, str] = {}
    for i in range(0, len(items), BATCH):
        chunk = items[i: i + BATCH]
        features = [_feature(basic, wordpiece, vocab, q, c) for _, q, c in chunk]
        batch = [np.stack([f[k] for f in features]) for k in ("ids", "mask", "segment")]
        start, end = _free_model(rng, *batch)
        for (qid, _, _), f, s, e in zip(chunk, features, start, end):
            answers[qid] = _answer(f, s, e)
    out = json.dumps(answers)
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "questions": len(items),
            "answered": len(answers), "output_chars": len(out)}
