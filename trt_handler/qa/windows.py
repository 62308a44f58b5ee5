"""Question + context -> model windows (the SQuAD features), with the fast WordPiece tokenizer.

Windows are exactly transformers' ``tokenizer(question, context, truncation="only_second", max_length=384,
stride=128, return_overflowing_tokens=True)``, the question first cut to ``max_query_length`` tokens
(as BERT's ``run_squad.py``); tokens carry their character spans and BERT's max-context flag.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trt_handler.qa.types import QAExample, Window

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import and only needed here
    from tokenizers import Encoding, Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = ["MIN_VOCAB", "TOKENIZER_FILES", "TOKENIZER_RECORD_FILES", "FeatureConfig", "FeatureError",
           "TokenizerCheckError", "WindowMaker", "check_tokenizer_record", "load_tokenizer", "tokenizer_record"]

# Tokens around the two sequences: [CLS] question [SEP] context [SEP].
_NUM_SPECIAL = 3


class FeatureError(ValueError):
    """A question/context pair that cannot be turned into windows; ``code`` is its rejection reason
    code: ``feature_error``, or ``too_many_windows`` (above ``FeatureConfig.max_windows_per_question``)."""

    def __init__(self, message: str, code: str = "feature_error") -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keeps ``code`` through pickling (Beam)
        return (type(self), (str(self), self.code))


class TokenizerCheckError(ValueError):
    """A model folder whose tokenizer loads but cannot serve the model; the message names cause and fix."""


# Files that carry a vocabulary; a folder with none of them gives transformers nothing to load.
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                                    "sentencepiece.bpe.model", "tokenizer.model")
# Fewer tokens than this is not a real WordPiece vocabulary (BERT's has 30,522).
MIN_VOCAB = 1000
# What a saved tokenizer consists of (its vocabulary and its settings): the files a record's sha256 cover.
TOKENIZER_RECORD_FILES: tuple[str, ...] = (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json",
                                           "added_tokens.json", "merges.txt")
# A vocabulary with at least this share of tokens holding a capital letter is cased (bert-base-cased: ~30%);
# one with none is uncased (bert-base-uncased: 0 of 30,522).
_CASED_SHARE = 0.01


@dataclass(frozen=True)
class FeatureConfig:
    """Window geometry; defaults are the standard SQuAD settings of BERT and transformers.

    ``doc_stride``: context tokens two neighbouring windows share. A context needing more than
    ``max_windows_per_question`` windows (None: no limit) is a FeatureError ``too_many_windows``: 128
    windows (~31,000 tokens) hold over 100,000 characters of English but only ~31,000 of CJK.
    """

    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    max_windows_per_question: int | None = 128

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "doc_stride", "max_query_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        limit = self.max_windows_per_question
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"max_windows_per_question must be a positive int or None, got {limit!r}")
        if self.max_query_length < 1:
            raise ValueError("max_query_length must be at least 1 so a question keeps a token")
        room = self.max_seq_length - self.max_query_length - _NUM_SPECIAL
        if room <= self.doc_stride:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be smaller than the context room of a window "
                f"with the longest question: max_seq_length - max_query_length - 3 = {room}; "
                "raise max_seq_length or lower doc_stride / max_query_length"
            )


def load_tokenizer(model: str | Path, *, min_vocab: int = MIN_VOCAB) -> PreTrainedTokenizerFast:
    """The fast tokenizer of ``model``: a local folder (checkpoint or model bundle) or a hub id.

    :class:`TokenizerCheckError` (message: cause and fix) for tokenizers that would load and answer
    nothing right: a folder with none of :data:`TOKENIZER_FILES`, fewer than ``min_vocab`` tokens, a
    vocabulary larger than ``config.json``'s ``vocab_size`` or under half of it, no [CLS]/[SEP].
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name = text = str(model)
    # Hub ids look like "name" or "org/name"; a local path is checked here, not looked up on the hub.
    looks_local = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or Path(text).is_dir()
    if looks_local:
        text = str(Path(text).expanduser())
        if not Path(text).is_dir():
            raise ValueError(f"model folder {text!r} does not exist; pass the folder that holds "
                             "the tokenizer files (or a hub id such as 'org/name')")
        if not any((Path(text) / file).is_file() for file in TOKENIZER_FILES):
            raise TokenizerCheckError(
                f"model folder {text!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}), so "
                "transformers would build a tokenizer of only its special tokens that turns every word into [UNK]. "
                "Fix: save the tokenizer of the checkpoint this model was trained from into the folder "
                "(AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained(FOLDER)), or pass that checkpoint folder."
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(text, use_fast=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a tokenizer from {name!r} ({err}); pass a folder holding "
            "tokenizer.json (or vocab.txt + tokenizer_config.json) or a Hugging Face hub id"
        ) from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(
            f"{name!r} gave a slow tokenizer ({type(tokenizer).__name__}); windows need the "
            "fast (Rust) tokenizer for character offsets: add tokenizer.json to the model folder"
        )
    n = len(tokenizer)
    if n < min_vocab:
        raise TokenizerCheckError(
            f"the tokenizer of {name!r} has only {n} tokens (BERT's WordPiece vocabulary has 30,522; the check "
            f"wants at least {min_vocab}), so nearly every word would become [UNK]. Cause: missing or truncated "
            "tokenizer files (a tokenizer_config.json without tokenizer.json/vocab.txt). Fix: copy tokenizer.json "
            "and vocab.txt from the checkpoint the model was trained from, or pass that checkpoint folder."
        )
    config_path = Path(text) / "config.json"
    if looks_local and config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TokenizerCheckError(
                f"{str(config_path)!r} is not readable JSON ({err}), so the tokenizer cannot be checked "
                "against the model's vocab_size. Fix: restore config.json from the checkpoint."
            ) from err
        vocab_size = config.get("vocab_size") if isinstance(config, dict) else None
        if type(vocab_size) is int and vocab_size > 0 and not vocab_size / 2 <= n <= vocab_size:
            problem = (f"it makes token ids up to {n - 1}, past the model's embedding table of {vocab_size} rows"
                       if n > vocab_size else f"it can reach under half of the model's {vocab_size} token embeddings")
            raise TokenizerCheckError(
                f"the tokenizer of {name!r} has {n} tokens but its config.json says vocab_size {vocab_size}: "
                f"{problem}. Cause: the tokenizer files come from a different model than the weights. Fix: put "
                "the tokenizer files of the checkpoint the weights were trained with next to them."
            )
    _cls_sep(tokenizer, name)
    _check_case(tokenizer, name)
    return tokenizer


def _check_case(tokenizer: PreTrainedTokenizerFast, name: str) -> None:
    """TokenizerCheckError when the vocabulary's case and the tokenizer's lowercasing disagree: an uncased
    vocabulary read by a tokenizer that keeps case turns every capitalized word into [UNK] or wrong
    pieces; a cased one read by a lowercasing tokenizer never reaches its capitalized tokens."""
    words = [t.removeprefix("##") for t in tokenizer.get_vocab() if not (t.startswith("[") and t.endswith("]"))]
    capitals = sum(1 for w in words if w != w.lower())
    backend = tokenizer.backend_tokenizer
    lowercases = (backend.encode("The Capital of Paris", add_special_tokens=False).ids
                  == backend.encode("the capital of paris", add_special_tokens=False).ids)
    if capitals == 0 and not lowercases:
        raise TokenizerCheckError(
            f"the tokenizer of {name!r} keeps upper case, but its vocabulary is uncased (none of its {len(words)} "
            "tokens has a capital letter), so every capitalized word becomes [UNK] or wrong pieces and answers "
            "degrade without an error. Cause: do_lower_case false in tokenizer_config.json, or a tokenizer.json "
            "whose normalizer does not lowercase, next to an uncased model. Fix: set \"do_lower_case\": true (and "
            "the normalizer's \"lowercase\": true), or restore the tokenizer files the model was trained with."
        )
    if capitals >= _CASED_SHARE * len(words) and lowercases:
        raise TokenizerCheckError(
            f"the tokenizer of {name!r} lowercases its input, but its vocabulary is cased ({capitals} of its "
            f"{len(words)} tokens have capital letters), so those tokens are never produced and answers degrade "
            "without an error. Cause: do_lower_case true (or a lowercasing normalizer) next to a cased model. Fix: "
            "set \"do_lower_case\": false, or restore the tokenizer files the model was trained with."
        )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_record(folder: str | Path) -> dict[str, dict[str, str]]:
    """``{"files": {name: sha256}}`` of the tokenizer files (:data:`TOKENIZER_RECORD_FILES`) in ``folder``:
    what an export or an engine sidecar records, so a tokenizer put beside the model later is caught."""
    return {"files": {name: _file_sha256(Path(folder) / name) for name in TOKENIZER_RECORD_FILES
                      if (Path(folder) / name).is_file()}}


def check_tokenizer_record(folder: str | Path, record: Mapping[str, object], recorded_by: str) -> None:
    """TokenizerCheckError unless ``folder``'s tokenizer files are the ones ``record`` (a
    :func:`tokenizer_record`, kept in ``recorded_by``) lists: the same names, the same sha256."""
    files = record.get("files") if isinstance(record, Mapping) else None
    if not isinstance(files, Mapping) or not files:
        raise TokenizerCheckError(f"{recorded_by} has an unreadable tokenizer record ({record!r}); rebuild it")
    now = tokenizer_record(folder)["files"]
    differ = []
    for name in sorted(set(files) | set(now)):
        if name not in now:
            differ.append(f"{name} is missing")
        elif name not in files:
            differ.append(f"{name} was not there")
        elif now[name] != files[name]:
            differ.append(f"{name} has sha256 {now[name][:12]}..., recorded {str(files[name])[:12]}...")
    if differ:
        raise TokenizerCheckError(
            f"the tokenizer in {str(folder)!r} is not the one {recorded_by} recorded: {'; '.join(differ)}. A tokenizer "
            "of the same size but another model (a vocabulary in another order, other casing) answers wrongly "
            "without an error. Fix: put back the tokenizer files the model was exported with, or export the model "
            "again with the tokenizer it was trained with."
        )


def _cls_sep(tokenizer: PreTrainedTokenizerFast, name: str) -> tuple[int, int]:
    """The [CLS] and [SEP] ids, or a TokenizerCheckError naming the one that is missing."""
    for token in ("cls_token_id", "sep_token_id"):
        if getattr(tokenizer, token, None) is None:
            raise TokenizerCheckError(
                f"the tokenizer of {name!r} has no {token.removesuffix('_id').replace('_token', '').upper()} "
                "token; BERT windows are [CLS] question [SEP] context [SEP]. Fix: use the BERT-family "
                "tokenizer of the checkpoint (its tokenizer_config.json names cls_token and sep_token)."
            )
    return int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)


def num_windows(n_context: int, room: int, stride: int) -> int:
    """How many windows of ``room`` tokens, ``stride`` shared, cover ``n_context`` context tokens."""
    if n_context <= room:
        return 1
    return -(-(n_context - room) // (room - stride)) + 1


# Only small window sets are cached (``_spans.__wrapped__`` for the others): the masks of a huge
# context would pin memory in the cache.
_CACHED_WINDOWS = 256


@functools.lru_cache(maxsize=4096)
def _spans(n_context: int, room: int, stride: int) -> tuple[tuple[int, int, np.ndarray], ...]:
    """Windows over ``n_context`` context tokens as (start, stop, read-only max_context[stop-start]): the
    tokenizers library's overflow rule (``room`` tokens every ``room - stride``, the last ending at the end)."""
    step = room - stride
    bounds = [(s, min(s + room, n_context)) for s in range(0, num_windows(n_context, room, stride) * step, step)]
    best = _max_context_window(bounds, n_context)
    return tuple((start, stop, _frozen(best[start:stop] == w)) for w, (start, stop) in enumerate(bounds))


def _max_context_window(bounds: Sequence[tuple[int, int]], n_context: int) -> np.ndarray:
    """For each context token, the window giving it the most context: BERT's ``_check_is_max_context``
    score min(p - start, end - p) + 0.01 * length, first window on ties; linear in the context."""
    best_score = np.full(n_context, -np.inf)
    best = np.zeros(n_context, dtype=np.int64)
    for w, (start, stop) in enumerate(bounds):
        length = stop - start
        offset = np.arange(length, dtype=np.int64)
        score = np.minimum(offset, (length - 1) - offset) + 0.01 * length
        seen = best_score[start:stop]
        better = score > seen
        seen[better] = score[better]
        best[start:stop][better] = w
    return best


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
    """Turns QAExamples into model windows, with a copy of the tokenizer whose truncation and padding
    are off (a tokenizer.json may carry its own)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, config: FeatureConfig = FeatureConfig()):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"WindowMaker needs a fast tokenizer (PreTrainedTokenizerFast), got "
                f"{type(tokenizer).__name__}; load one with trt_handler.qa.windows.load_tokenizer(model)"
            )
        max_len = getattr(tokenizer, "model_max_length", None)
        if isinstance(max_len, int) and config.max_seq_length > max_len:
            raise ValueError(
                f"max_seq_length {config.max_seq_length} is longer than the model accepts "
                f"({max_len} tokens); lower max_seq_length"
            )
        self._cls, self._sep = _cls_sep(tokenizer, getattr(tokenizer, "name_or_path", type(tokenizer).__name__))
        self.config = config
        self._tokenizer: Tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._sep_tail = np.array([self._sep], dtype=np.int32)
        # refuse tokenizers whose pairs are not [CLS] A [SEP] B [SEP] with type ids 0/1
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
        """Windows of each example, in order; a FeatureError in place of an example that fails."""
        results: list[list[Window] | FeatureError] = [
            FeatureError(reason) if (reason := _blank_reason(ex)) else [] for ex in examples]
        todo = [i for i, r in enumerate(results) if not isinstance(r, FeatureError)]
        context_index = {c: k for k, c in enumerate(dict.fromkeys(examples[i].context for i in todo))}
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
        """Cut one tokenized example into windows; arrays that depend only on the layout are shared, read-only."""
        n_q, n_context = len(question_ids), int(context_ids.shape[0])
        for field, n in (("question", n_q), ("context", n_context)):
            if n == 0:
                return FeatureError(f"{field} of example {ex.id!r} has no tokens after normalisation "
                                    f"(only control or zero-width characters?); fix the {field} text")
        room = self.config.max_seq_length - n_q - _NUM_SPECIAL
        limit = self.config.max_windows_per_question
        needed = num_windows(n_context, room, self.config.doc_stride)
        if limit is not None and needed > limit:
            return FeatureError(
                f"context of example {ex.id!r} is {n_context} tokens, which needs {needed} windows of "
                f"{self.config.max_seq_length} tokens, more than max_windows_per_question {limit}; "
                "split the context into shorter passages or raise the limit",
                code="too_many_windows")
        spans = (_spans if needed <= _CACHED_WINDOWS else _spans.__wrapped__)(n_context, room, self.config.doc_stride)
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
                max_context = np.concatenate((np.zeros(c0, dtype=bool), max_ctx, [False]))
            out.append(Window(ex.id, w, input_ids, token_type_ids, offsets, is_context, max_context))
        return out


def _frozen(array: np.ndarray) -> np.ndarray:
    """``array``, made read-only (it is shared through a cache)."""
    array.flags.writeable = False
    return array


_NO_OFFSET = _frozen(np.full((1, 2), -1, dtype=np.int32))


@functools.lru_cache(maxsize=16384)
def _layout(c0: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read-only arrays of a window with ``c0 - 2`` question and ``k`` context tokens: token type
    ids (0 up to the first [SEP], then 1), the context mask, and the (-1, -1) offsets of the head."""
    length = c0 + k + 1
    token_type_ids = np.zeros(length, dtype=np.int32)
    token_type_ids[c0:] = 1
    is_context = np.zeros(length, dtype=bool)
    is_context[c0:-1] = True
    return _frozen(token_type_ids), _frozen(is_context), _frozen(np.full((c0, 2), -1, dtype=np.int32))
