"""Question + context -> model windows (the SQuAD features), with the fast WordPiece tokenizer.

A context longer than one window is cut into overlapping windows exactly as the Hugging Face fast
tokenizer does for ``tokenizer(question, context, truncation="only_second", max_length=384,
stride=128, return_overflowing_tokens=True)`` (``stride`` = tokens shared by neighbouring windows,
as in transformers' ``run_qa.py``). The question is cut to ``max_query_length`` tokens first, as the
original BERT ``run_squad.py`` does, so a long question is still answered.

Questions and contexts are tokenized separately, each in one batched call, and windows are
assembled with numpy. That gives the same ids as the pair call (BERT encodes each sequence on its
own) while tokenizing a context shared by several questions once, and keeps Python loops per
window rather than per token.

Each window also carries, per token, its character span in the ORIGINAL context and the
"max context" flag of the original BERT ``_check_is_max_context`` rule: of all windows holding a
token, the one where min(left, right) + 0.01 * window_length is highest (first one on ties).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trt_handler.qa.types import QAExample, Window

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import and only needed here
    from tokenizers import Encoding, Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = ["FeatureConfig", "FeatureError", "WindowMaker", "load_tokenizer"]

# Tokens around the two sequences: [CLS] question [SEP] context [SEP].
_NUM_SPECIAL = 3


class FeatureError(ValueError):
    """A question/context pair that cannot be turned into windows (empty text, nothing to tokenize)."""


@dataclass(frozen=True)
class FeatureConfig:
    """Window geometry; defaults are the standard SQuAD settings of BERT and transformers.

    Attributes:
        max_seq_length: tokens per window, special tokens included.
        doc_stride: context tokens shared by two neighbouring windows (transformers' ``stride``).
        max_query_length: question tokens kept; longer questions are cut, not dropped.
    """

    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "doc_stride", "max_query_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.max_query_length < 1:
            raise ValueError("max_query_length must be at least 1 so a question keeps a token")
        room = self.max_seq_length - self.max_query_length - _NUM_SPECIAL
        if room <= self.doc_stride:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be smaller than the context room of a window "
                f"with the longest question: max_seq_length - max_query_length - 3 = {room}; "
                "raise max_seq_length or lower doc_stride / max_query_length"
            )


def load_tokenizer(model: str | Path) -> PreTrainedTokenizerFast:
    """The fast tokenizer of ``model``: a local folder (a checkpoint or an exported model bundle,
    both hold the tokenizer files) or a Hugging Face hub id."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    text = str(model)
    # Hub ids look like "name" or "org/name"; anything else is a local path, checked here so a
    # typo does not turn into a hub lookup.
    looks_local = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
    if looks_local:
        text = str(Path(text).expanduser())
        if not Path(text).is_dir():
            raise ValueError(f"model folder {text!r} does not exist; pass the folder that holds "
                             "the tokenizer files (or a hub id such as 'org/name')")
    try:
        tokenizer = AutoTokenizer.from_pretrained(text, use_fast=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a tokenizer from {str(model)!r} ({err}); pass a folder holding "
            "tokenizer.json (or vocab.txt + tokenizer_config.json) or a Hugging Face hub id"
        ) from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(
            f"{str(model)!r} gave a slow tokenizer ({type(tokenizer).__name__}); windows need the "
            "fast (Rust) tokenizer for character offsets: add tokenizer.json to the model folder"
        )
    return tokenizer


@functools.lru_cache(maxsize=4096)
def _spans(n_context: int, room: int, stride: int) -> tuple[tuple[int, int, np.ndarray], ...]:
    """Windows over ``n_context`` context tokens as (start, stop, max_context[stop-start]).

    Mirrors the tokenizers library's overflow rule: windows of ``room`` tokens starting every
    ``room - stride`` tokens, the last one ending at the context's end. Cached because the result
    depends only on the three numbers; the masks are read-only for that reason.
    """
    if n_context <= room:
        mask = np.ones(n_context, dtype=bool)
        mask.flags.writeable = False
        return ((0, n_context, mask),)
    step = room - stride
    bounds: list[tuple[int, int]] = []
    for start in range(0, n_context, step):
        stop = min(start + room, n_context)
        bounds.append((start, stop))
        if stop == n_context:
            break
    best = _max_context_window(bounds, n_context)
    out = []
    for w, (start, stop) in enumerate(bounds):
        mask = best[start:stop] == w
        mask.flags.writeable = False
        out.append((start, stop, mask))
    return tuple(out)


def _max_context_window(bounds: Sequence[tuple[int, int]], n_context: int) -> np.ndarray:
    """For each context token, the index of the window that gives it the most context.

    Score of window w for token p: min(p - start, end - p) + 0.01 * length, as in BERT's
    ``_check_is_max_context``; argmax keeps the first window on ties, like its strict ``>``.
    """
    starts = np.array([b[0] for b in bounds], dtype=np.int64)[:, None]
    stops = np.array([b[1] for b in bounds], dtype=np.int64)[:, None]
    pos = np.arange(n_context, dtype=np.int64)[None, :]
    left = pos - starts
    right = (stops - 1) - pos
    score = np.minimum(left, right) + 0.01 * (stops - starts)
    score[(left < 0) | (right < 0)] = -np.inf
    return np.argmax(score, axis=0)


def _encoding_arrays(encoding: Encoding) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [n], offsets int32 [n, 2]) of one tokenizers Encoding."""
    offsets = encoding.offsets
    n = len(offsets)
    flat = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int32, count=2 * n)
    return np.array(encoding.ids, dtype=np.int32), flat.reshape(n, 2)


def _blank_reason(example: QAExample) -> str:
    """Why an example cannot be tokenized before trying, or "" when it looks fine."""
    for field in ("question", "context"):
        value = getattr(example, field)
        if not isinstance(value, str):
            return (f"{field} of example {example.id!r} is a {type(value).__name__}, not a string; "
                    "fix the input record")
        if not value.strip():
            return (f"{field} of example {example.id!r} is empty or only whitespace; "
                    f"supply a non-empty {field} or drop the record")
    return ""


class WindowMaker:
    """Turns QAExamples into model windows; cheap to call, safe to reuse across bundles.

    The tokenizer is copied with truncation and padding switched off: a tokenizer.json may carry
    its own (this model's says 128), and the caller's tokenizer object is left untouched.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, config: FeatureConfig = FeatureConfig()):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"WindowMaker needs a fast tokenizer (PreTrainedTokenizerFast), got "
                f"{type(tokenizer).__name__}; load one with squad_features.load_tokenizer(model)"
            )
        max_len = getattr(tokenizer, "model_max_length", None)
        if isinstance(max_len, int) and config.max_seq_length > max_len:
            raise ValueError(
                f"max_seq_length {config.max_seq_length} is longer than the model accepts "
                f"({max_len} tokens); lower max_seq_length"
            )
        self.config = config
        self._tokenizer: Tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._cls = int(tokenizer.cls_token_id)
        self._sep = int(tokenizer.sep_token_id)
        self._sep_tail = np.array([self._sep], dtype=np.int32)
        self._check_pair_layout()

    def _check_pair_layout(self) -> None:
        """Refuse tokenizers whose pairs are not [CLS] A [SEP] B [SEP] with type ids 0/1."""
        a = self._tokenizer.encode("what", add_special_tokens=False).ids
        b = self._tokenizer.encode("it is", add_special_tokens=False).ids
        pair = self._tokenizer.encode("what", "it is")
        want_ids = [self._cls, *a, self._sep, *b, self._sep]
        want_types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        if pair.ids != want_ids or pair.type_ids != want_types:
            raise ValueError(
                "WindowMaker builds BERT-style windows ([CLS] question [SEP] context [SEP], type ids "
                f"0/1) but this tokenizer makes {pair.tokens}; use a BERT-family tokenizer"
            )

    def windows(self, example: QAExample) -> list[Window]:
        """Windows of one example; raises FeatureError when it cannot be tokenized."""
        (result,) = self.windows_many([example])
        if isinstance(result, FeatureError):
            raise result
        return result

    def windows_many(self, examples: Sequence[QAExample]) -> list[list[Window] | FeatureError]:
        """Windows of each example, in order; a FeatureError in place of an example that fails.

        One batched tokenizer call for the questions and one for the distinct contexts.
        """
        results: list[list[Window] | FeatureError] = []
        todo: list[int] = []
        for i, ex in enumerate(examples):
            reason = _blank_reason(ex)
            results.append(FeatureError(reason) if reason else [])
            if not reason:
                todo.append(i)
        if not todo:
            return results
        context_index: dict[str, int] = {}
        for i in todo:
            context_index.setdefault(examples[i].context, len(context_index))
        # Questions need only ids: the fast call skips the offsets.
        questions = self._tokenizer.encode_batch_fast([examples[i].question for i in todo], add_special_tokens=False)
        contexts = [_encoding_arrays(e) for e in
                    self._tokenizer.encode_batch(list(context_index), add_special_tokens=False)]
        for i, question in zip(todo, questions):
            ex = examples[i]
            ids, offsets = contexts[context_index[ex.context]]
            results[i] = self._assemble(ex, question.ids[: self.config.max_query_length], ids, offsets)
        return results

    def _assemble(self, ex: QAExample, question_ids: list[int], context_ids: np.ndarray,
                  context_offsets: np.ndarray) -> list[Window] | FeatureError:
        """Cut one tokenized example into windows (numpy slices, no per-token Python).

        Arrays that depend only on the window's layout (type ids, context mask, the max-context
        mask of a one-window question) are shared, read-only, between windows of the same layout.
        """
        if not question_ids:
            return FeatureError(f"question of example {ex.id!r} has no tokens after normalisation "
                                "(only control or zero-width characters?); fix the question text")
        n_context = int(context_ids.shape[0])
        if n_context == 0:
            return FeatureError(f"context of example {ex.id!r} has no tokens after normalisation "
                                "(only control or zero-width characters?); fix the context text")
        n_q = len(question_ids)
        room = self.config.max_seq_length - n_q - _NUM_SPECIAL
        spans = _spans(n_context, room, self.config.doc_stride)
        head = np.array([self._cls, *question_ids, self._sep], dtype=np.int32)
        c0 = n_q + 2  # first context position in a window
        out: list[Window] = []
        for w, (start, stop, max_ctx) in enumerate(spans):
            k = stop - start
            token_type_ids, is_context, no_offsets = _layout(c0, k)
            input_ids = np.concatenate((head, context_ids[start:stop], self._sep_tail))
            offsets = np.concatenate((no_offsets, context_offsets[start:stop], _NO_OFFSET))
            if len(spans) == 1:  # every context token is max context: the context mask itself
                max_context = is_context
            else:
                max_context = np.concatenate((_falses(c0), max_ctx, _falses(1)))
            out.append(Window(ex.id, w, input_ids, token_type_ids, offsets,
                              is_context, max_context))
        return out


_NO_OFFSET = np.full((1, 2), -1, dtype=np.int32)
_NO_OFFSET.flags.writeable = False


@functools.lru_cache(maxsize=1024)
def _falses(n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=16384)
def _layout(c0: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read-only arrays of a window with ``c0 - 2`` question and ``k`` context tokens: token type
    ids (0 up to the first [SEP], then 1), the context mask, and the (-1, -1) offsets of the head."""
    length = c0 + k + 1
    token_type_ids = np.zeros(length, dtype=np.int32)
    token_type_ids[c0:] = 1
    is_context = np.zeros(length, dtype=bool)
    is_context[c0:-1] = True
    no_offsets = np.full((c0, 2), -1, dtype=np.int32)
    for a in (token_type_ids, is_context, no_offsets):
        a.flags.writeable = False
    return token_type_ids, is_context, no_offsets
