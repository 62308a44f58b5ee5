"""Optimization profiles: which (batch, sequence) shapes an engine accepts, and which one a batch uses.

One profile per sequence-length bucket lets a batch padded to 128 tokens run on kernels tuned for 128.
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
    max_batch: int | Sequence[int] = 64,
) -> List[ProfileSpec]:
    """One profile per bucket: bucket k accepts sequence lengths (bucket k-1, bucket k]; ``max_batch``
    is one limit for every bucket or one per bucket (opt_batch is capped at it)."""
    buckets = validate_buckets(buckets)
    rows = [max_batch] * len(buckets) if isinstance(max_batch, int) else list(max_batch)
    lowers = [1, *(b + 1 for b in buckets[:-1])]
    return [ProfileSpec(min_batch, min(opt_batch, n), n, lower, b, b)
            for lower, b, n in zip(lowers, buckets, rows, strict=True)]


def choose_profile(profiles: Sequence[ProfileSpec], batch: int, seq: int) -> int:
    """Index of the profile with the smallest max_seq that accepts a [batch, seq] input; ValueError
    naming the shape and the profiles when none does."""
    if not (fits := [i for i, p in enumerate(profiles) if p.accepts(batch, seq)]):
        ranges = ", ".join(
            f"#{i}: batch {p.min_batch}-{p.max_batch} x seq {p.min_seq}-{p.max_seq}"
            for i, p in enumerate(profiles)
        )
        raise ValueError(f"no optimization profile accepts shape [{batch}, {seq}]; profiles: {ranges}")
    return min(fits, key=lambda i: profiles[i].max_seq)


# Token budget: a profile's max_batch x max_seq stays about this many tokens, so short buckets
# take proportionally more rows and every profile's activation memory is about the same.
DEFAULT_TOKEN_BUDGET = 64 * 384


def token_budget_profiles(
    window_lengths: Sequence[int] | None = None,
    *,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    count: int = len(DEFAULT_BUCKETS),
    max_seq: int = 384,
    min_batch: int = 1,
    opt_batch: int = 16,
    buckets: Sequence[int] | None = None,
) -> List[ProfileSpec]:
    """Profiles whose max batches share a token budget: ``token_budget // bucket`` rounded down to a
    multiple of 8 (when at least 8), never below ``min_batch``. Buckets: ``suggest_buckets(window_lengths,
    count, max_seq, 16)``; without lengths, ``buckets`` or :data:`DEFAULT_BUCKETS` up to ``max_seq``.
    """
    from trt_handler.qa.batching import suggest_buckets

    if token_budget < max_seq:
        raise ValueError(f"token_budget {token_budget} is below max_seq {max_seq}: not even one window fits")
    if window_lengths is None:
        if buckets is None:
            buckets = tuple(b for b in DEFAULT_BUCKETS if b < max_seq) + (max_seq,)
    elif len(window_lengths) == 0:
        raise ValueError("no window lengths given; pass data with at least one window, or None for the default plan")
    else:
        buckets = tuple(suggest_buckets(window_lengths, count, max_seq, 16))
    buckets = validate_buckets(buckets)
    rows = [max(n - n % 8 if n >= 8 else n, min_batch) for n in (token_budget // b for b in buckets)]
    return profiles_for_buckets(buckets, min_batch, opt_batch, rows)
