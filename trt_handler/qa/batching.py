"""Padding windows into model inputs, and choosing sequence-length buckets (which windows share a
model call is decided by ``trt_handler.answer_batch.plan_model_calls``)."""

from __future__ import annotations

from typing import Protocol, Sequence, Tuple

import numpy as np

from trt_handler.qa.types import ModelBatch

# The six least-padding buckets of SQuAD dev windows (suggest_buckets on split A, multiples of 32):
# 1.12x compute inflation on A and the held-out B1, against 1.38x for 128/256/384, 2.13x for 384.
DEFAULT_BUCKETS: Tuple[int, ...] = (128, 160, 192, 224, 288, 384)


class TokenWindow(Protocol):
    """What padding reads of a window: a :class:`~trt_handler.qa.types.Window`, or the inference
    server's view of one in shared memory."""

    @property
    def length(self) -> int: ...

    @property
    def input_ids(self) -> np.ndarray: ...

    @property
    def token_type_ids(self) -> np.ndarray: ...


def validate_buckets(buckets: Sequence[int]) -> Tuple[int, ...]:
    """Return buckets as a sorted tuple of positive ints, or raise ValueError saying why."""
    if not buckets:
        raise ValueError("buckets must name at least one sequence length, e.g. (128, 256, 384)")
    out = tuple(sorted(int(b) for b in buckets))
    if out[0] <= 0 or len(set(out)) != len(out):
        raise ValueError(f"buckets must be distinct positive lengths, got {tuple(buckets)}")
    return out


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length. Raises ValueError when the window is longer than every bucket."""
    for b in buckets:
        if length <= b:
            return int(b)
    raise ValueError(
        f"window of {length} tokens is longer than the largest bucket {max(buckets)}; "
        "raise max_seq_length's bucket or shorten max_seq_length"
    )


def pad_windows(windows: Sequence[TokenWindow], seq_len: int | None = None) -> ModelBatch:
    """Stack windows into zero-padded int32 [B, S] arrays (mask 1 over real tokens); S defaults to the longest."""
    if not windows:
        raise ValueError("cannot pad an empty batch of windows")
    longest = max(w.length for w in windows)
    s = longest if seq_len is None else int(seq_len)
    if s < longest:
        raise ValueError(f"seq_len {s} is shorter than the longest window ({longest} tokens)")
    b = len(windows)
    input_ids = np.zeros((b, s), dtype=np.int32)
    token_type_ids = np.zeros((b, s), dtype=np.int32)
    attention_mask = np.zeros((b, s), dtype=np.int32)
    for i, w in enumerate(windows):
        n = w.length
        input_ids[i, :n] = w.input_ids
        token_type_ids[i, :n] = w.token_type_ids
        attention_mask[i, :n] = 1
    return ModelBatch(input_ids, attention_mask, token_type_ids)


def uniform_buckets(step: int, max_len: int) -> Tuple[int, ...]:
    """Buckets every ``step`` tokens up to ``max_len`` (the last one is ``max_len``), e.g.
    ``uniform_buckets(64, 384) == (64, 128, 192, 256, 320, 384)``."""
    if step <= 0 or max_len <= 0:
        raise ValueError(f"step and max_len must be positive, got step={step}, max_len={max_len}")
    return validate_buckets([*range(step, max_len, step), max_len])


def padded_tokens(lengths: Sequence[int], buckets: Sequence[int]) -> int:
    """Tokens computed when each window is padded to the smallest bucket that holds it."""
    b = np.asarray(validate_buckets(buckets))
    n = np.asarray(lengths, dtype=np.int64)
    if n.size and n.max() > b[-1]:
        raise ValueError(f"a window of {int(n.max())} tokens is longer than the largest bucket {int(b[-1])}")
    return int(b[np.searchsorted(b, n)].sum())


def suggest_buckets(lengths: Sequence[int], count: int, max_len: int, multiple: int = 16) -> Tuple[int, ...]:
    """The ``count`` buckets (multiples of ``multiple``, the last one ``max_len``) that minimise the
    padded tokens of windows with these ``lengths`` (exact: dynamic programming over the candidates)."""
    if count < 1 or multiple < 1 or max_len < 1:
        raise ValueError(f"count, multiple and max_len must be positive, got {count}, {multiple}, {max_len}")
    n = np.asarray(lengths, dtype=np.int64)
    if n.size and n.max() > max_len:
        raise ValueError(f"a window of {int(n.max())} tokens is longer than max_len {max_len}")
    cands = np.array(sorted({*range(multiple, max_len, multiple), max_len}))
    below = np.cumsum(np.bincount(n, minlength=max_len + 1))  # below[x]: windows of at most x tokens
    covered = below[cands] - below[0]
    # padded tokens of the windows in (cands[h], cands[i]] at cands[i], for h < i only
    cost_of = np.where(np.tri(len(cands), k=-1, dtype=bool),
                       (covered[:, None] - covered[None, :]) * cands[:, None], np.inf)
    # best[j, i]: least padded tokens covering lengths <= cands[i] with j + 1 buckets, the last cands[i]
    best = np.empty((count, len(cands)))
    prev = np.full((count, len(cands)), -1)
    best[0] = covered * cands
    for j in range(1, count):
        cost = best[j - 1] + cost_of  # first h on ties
        prev[j] = cost.argmin(axis=1)
        best[j] = cost.min(axis=1)
    j = int(np.argmin(best[:, -1]))  # fewer buckets when more do not help
    out, i = [], len(cands) - 1
    while i >= 0 and j >= 0:
        out.append(int(cands[i]))
        i, j = prev[j, i], j - 1
    return validate_buckets(out)
