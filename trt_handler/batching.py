"""Padding windows into model batches, and choosing sequence-length buckets.

Windows arrive unpadded (see :class:`~trt_handler.qa_types.Window`). A batch is padded only to
the smallest bucket that holds its longest window, so a batch of short windows runs on a short
engine profile instead of paying for 384 tokens each. Both handlers and the benchmarks use these
functions, so "what the GPU computes" is defined in one place.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from trt_handler.qa_types import ModelBatch, Window

DEFAULT_BUCKETS: Tuple[int, ...] = (128, 256, 384)


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


def pad_windows(windows: Sequence[Window], seq_len: int | None = None) -> ModelBatch:
    """Stack windows into int32 [B, S] arrays, zero-padded; S defaults to the longest window.

    The attention mask is 1 over each window's real tokens and 0 over padding.
    """
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


def group_by_bucket(windows: Sequence[Window], buckets: Sequence[int]) -> Dict[int, List[int]]:
    """Indices of ``windows`` grouped by the bucket each one fits, in input order per bucket."""
    groups: Dict[int, List[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(bucket_for(w.length, buckets), []).append(i)
    return groups


def chunks(n: int, max_batch: int) -> Iterator[slice]:
    """Slices that cover range(n) in pieces of at most ``max_batch`` (no padding of the last)."""
    if max_batch <= 0:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    for start in range(0, n, max_batch):
        yield slice(start, min(n, start + max_batch))
