"""Planning model calls: optimization profiles (which [batch, seq] shapes a model or engine takes) and
the one planner that turns windows into calls and picks each call's profile, once.

One profile per sequence-length bucket lets a call padded to 128 tokens run on kernels tuned for 128.
Every backend plans with this module: TensorRT engines with the profiles of their sidecar, ONNX
Runtime and PyTorch with the builder's default plan (six buckets, a token budget per call).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from trt_handler.qa.batching import DEFAULT_BUCKETS, TokenWindow, pad_windows, suggest_buckets, validate_buckets
from trt_handler.qa.types import ModelBatch

__all__ = [
    "DEFAULT_TOKEN_BUDGET",
    "BatchPlan",
    "ModelCall",
    "ProfileSpec",
    "check_logits_shape",
    "choose_profile",
    "pad_call",
    "plan_model_calls",
    "profiles_for_buckets",
    "token_budget_profiles",
]


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


def choose_profile(profiles: Sequence[ProfileSpec], seq: int, rows: int | None = None) -> int:
    """THE choice of a model call's profile (the planner's; runners execute it): the index of the profile
    with the smallest max_seq that holds ``seq`` tokens (a shorter call is padded up to its min_seq) and,
    when given, ``rows`` rows. ValueError naming the shape and the profiles when none does."""
    fits = [i for i, p in enumerate(profiles)
            if seq <= p.max_seq and (rows is None or p.min_batch <= rows <= p.max_batch)]
    if not fits:
        ranges = ", ".join(f"#{i}: batch {p.min_batch}-{p.max_batch} x seq {p.min_seq}-{p.max_seq}"
                           for i, p in enumerate(profiles))
        shape = f"[{rows}, {seq}]" if rows is not None else f"[*, {seq}]"
        raise ValueError(f"no optimization profile accepts shape {shape}; profiles: {ranges}")
    return min(fits, key=lambda i: (profiles[i].max_seq, i))


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


@dataclass(frozen=True)
class BatchPlan:
    """How the windows of a batch become model calls: a call's rows stay within its profile's batch
    range (filler rows up to ``min_batch``) and ``max_batch``; ``pad_to="longest"`` pads it to its
    longest window rounded up to a multiple of 8, ``"bucket"`` to its profile's ``opt_seq``."""

    profiles: Tuple[ProfileSpec, ...]
    max_batch: int = 64
    pad_to: str = "longest"

    def __post_init__(self) -> None:
        if not self.profiles:
            raise ValueError("a batch plan needs at least one profile")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {self.max_batch!r}")
        if self.pad_to not in ("longest", "bucket"):
            raise ValueError(f"pad_to must be one of ('longest', 'bucket'), got {self.pad_to!r}")
        object.__setattr__(self, "profiles", tuple(sorted(self.profiles, key=lambda p: p.max_seq)))

    @classmethod
    def for_buckets(
        cls, buckets: Sequence[int] = DEFAULT_BUCKETS, max_batch: Optional[int] = None, *,
        max_tokens: Optional[int] = DEFAULT_TOKEN_BUDGET, pad_to: str = "longest",
    ) -> BatchPlan:
        """The engine builder's default plan, for backends without profiles: one profile per bucket
        with ``max_tokens // bucket`` rows (rounded down to a multiple of 8: the same activation memory
        per call), capped at ``max_batch``; ``max_tokens=None``: ``max_batch`` (64) rows each."""
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        buckets = validate_buckets(buckets)
        if max_tokens is None:
            rows = [max_batch or 64] * len(buckets)
        else:
            planned = token_budget_profiles(buckets=buckets, token_budget=max_tokens, max_seq=buckets[-1])
            rows = [p.max_batch if max_batch is None else min(max_batch, p.max_batch) for p in planned]
        return cls(tuple(profiles_for_buckets(buckets, 1, 1, rows)), max_batch=max(rows), pad_to=pad_to)

    @property
    def buckets(self) -> Tuple[int, ...]:
        return tuple(p.max_seq for p in self.profiles)

    @property
    def max_seq(self) -> int:
        return self.profiles[-1].max_seq

    def profile(self, index: int) -> ProfileSpec:
        return self.profiles[index]


@dataclass(frozen=True)
class ModelCall:
    """One padded model call: ``indices`` into the batch's windows, padded to ``seq_len``, with
    ``rows`` >= len(indices) (filler rows when a profile's ``min_batch`` needs them)."""

    indices: Tuple[int, ...]
    seq_len: int
    rows: int
    profile: int = field(default=-1, compare=False)

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.rows, self.seq_len)


def plan_model_calls(lengths: Sequence[int], plan: BatchPlan) -> List[ModelCall]:
    """Windows (by real token count) -> model calls, sorted by length and cut greedily: a call grows
    while the profile of its longest window allows more rows (with ``pad_to="bucket"``, within one
    profile). Each call's profile is chosen here, once (:func:`choose_profile`), and runners run it.
    Raises ValueError naming a window that is too long."""
    for i, n in enumerate(lengths):
        if n > plan.max_seq:
            raise ValueError(
                f"window #{i} has {n} tokens, more than the longest profile ({plan.max_seq}); make windows "
                "with a max_seq_length the engine/profiles cover, or build the engine with longer profiles"
            )
    profiles = plan.profiles
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    calls: List[ModelCall] = []
    start = 0
    while start < len(order):
        end = start + 1
        first = choose_profile(profiles, lengths[order[start]])
        while end < len(order):
            holder = choose_profile(profiles, lengths[order[end]])
            if end - start >= min(plan.max_batch, profiles[holder].max_batch) or (
                    plan.pad_to == "bucket" and holder != first):
                break
            end += 1
        members = tuple(sorted(order[start:end]))
        longest = lengths[order[end - 1]]
        p = profiles[choose_profile(profiles, longest)]
        if plan.pad_to == "bucket":
            seq = max(p.opt_seq, longest)
        else:  # rounded up to a multiple, within the profile
            seq = min(max(-(-longest // 8) * 8, p.min_seq), p.max_seq)
        rows = max(len(members), p.min_batch)
        calls.append(ModelCall(members, seq, rows, choose_profile(profiles, seq, rows)))
        start = end
    return calls


def pad_call(windows: Sequence[TokenWindow], call: ModelCall) -> ModelBatch:
    """The padded int32 arrays of a planned call (``windows`` indexed by ``call.indices``)."""
    return _with_filler_rows(pad_windows([windows[i] for i in call.indices], call.seq_len), call.rows)


def check_logits_shape(start: np.ndarray, end: np.ndarray, call: ModelCall) -> None:
    """RuntimeError unless the runner gave [rows, seq_len] start and end logits for ``call``."""
    if start.shape != call.shape or end.shape != call.shape:
        raise RuntimeError(
            f"the model returned logits of shapes {start.shape} and {end.shape} for an input of shape "
            f"{call.shape}; a runner must return float32 [batch, seq] start and end logits"
        )


def _with_filler_rows(batch: ModelBatch, rows: int) -> ModelBatch:
    """Append rows holding one unmasked [PAD] token; their outputs are dropped. Not all-masked
    rows: attention that masks with -inf turns those into NaN, which is harmless but noisy."""
    extra = rows - batch.shape[0]
    if extra <= 0:
        return batch
    ids, mask, types = (np.pad(a, ((0, extra), (0, 0))) for a in
                        (batch.input_ids, batch.attention_mask, batch.token_type_ids))
    mask[-extra:, 0] = 1
    return ModelBatch(ids, mask, types)


