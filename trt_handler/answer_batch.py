"""One function answers a batch of questions: their windows -> planned model calls -> answers.

Every caller that turns questions into answers goes through :func:`answer_batch`: the Beam
handlers (``backends.handlers``), in-process evaluation (``evaluate``), the GPU check
(``gpu_check``) and the benchmarks. So what the GPU computes for a batch (which windows share a
call, how far they are padded, which engine profile runs them) is decided in one place,
:func:`plan_model_calls`, and the production path is the one that is checked and measured.

The steps, with plain data between them (as Hugging Face's QA pipeline does preprocess ->
forward -> postprocess)::

    questions (QuestionWindows) --flatten--> windows --plan_model_calls--> ModelCalls
      --run_model_calls(runner)--> WindowLogits per window --split per question-->
      extract_answers --> one Answer (or the error of that question) per question

A runner is anything with ``run(ModelBatch) -> (start, end)`` (ONNX Runtime, a TensorRT engine
session, PyTorch, or Beam's cross-process proxy of one). A runner that also has
``submit(ModelBatch) -> pending`` with ``pending.result() -> (start, end)`` gets the next call
padded on the CPU while the previous one runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from trt_handler.engines.profiles import (
    DEFAULT_TOKEN_BUDGET,
    ProfileSpec,
    choose_profile,
    profiles_for_buckets,
    token_budget_profiles,
)
from trt_handler.qa.answers import AnswerConfig, extract_answers
from trt_handler.qa.batching import DEFAULT_BUCKETS, pad_windows, validate_buckets
from trt_handler.qa.types import Answer, ModelBatch, QuestionWindows, Window, WindowLogits

__all__ = [
    "DEFAULT_BATCH_WINDOWS",
    "BatchPlan",
    "CallRecorder",
    "ModelCall",
    "Runner",
    "answer_batch",
    "batches_of",
    "plan_model_calls",
    "run_model_calls",
]

Logits = Tuple[np.ndarray, np.ndarray]
Outcome = Union[Answer, Exception]

PAD_MODES = ("longest", "bucket")

# Windows the planner sees at once (a RunInference batch: BatchElements sized by window count). The
# planner sorts them by length before cutting calls, so a bigger batch pads less: on SQuAD windows
# the default plan computes 1.10x the real tokens over batches of 1,024 windows, 1.21x over 256
# and 1.50x over 64 (benchmarks/bench_inflation.py).
DEFAULT_BATCH_WINDOWS = 1024


class Runner(Protocol):
    """What runs the model: ``run`` takes a padded int32 batch and gives float32 [B, S] logits."""

    def run(self, batch: ModelBatch) -> Logits: ...


# Called once per model call: (call, real tokens in it, microseconds from submit to logits).
CallRecorder = Callable[["ModelCall", int, int], None]


@dataclass(frozen=True)
class BatchPlan:
    """How the windows of a batch become model calls.

    Attributes:
        profiles: the shapes the model accepts, one per sequence-length bucket (an engine's
            optimization profiles; for ONNX Runtime and PyTorch, :meth:`for_buckets` makes them).
            A call's rows never exceed its profile's ``max_batch``, and never go below its
            ``min_batch`` (filler rows are added and dropped again).
        max_batch: rows per call at most, over every profile.
        pad_to: ``"longest"`` pads a call to its longest window rounded up to ``multiple`` (any
            length in a profile's range is legal, so fewer tokens are computed); ``"bucket"`` pads
            it to its profile's ``opt_seq`` (the shape an engine was tuned for).
        multiple: rounding of the padded length in ``"longest"`` mode (8 suits tensor cores).
    """

    profiles: Tuple[ProfileSpec, ...]
    max_batch: int = 64
    pad_to: str = "longest"
    multiple: int = 8

    def __post_init__(self) -> None:
        if not self.profiles:
            raise ValueError("a batch plan needs at least one profile")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {self.max_batch!r}")
        if self.pad_to not in PAD_MODES:
            raise ValueError(f"pad_to must be one of {PAD_MODES}, got {self.pad_to!r}")
        if self.multiple < 1:
            raise ValueError(f"multiple must be positive, got {self.multiple}")
        object.__setattr__(self, "profiles", tuple(sorted(self.profiles, key=lambda p: p.max_seq)))

    @classmethod
    def for_buckets(
        cls, buckets: Sequence[int] = DEFAULT_BUCKETS, max_batch: Optional[int] = None, *,
        max_tokens: Optional[int] = DEFAULT_TOKEN_BUDGET, pad_to: str = "longest",
    ) -> BatchPlan:
        """The plan for backends without engine profiles, the same one the engine builder makes by
        default: one profile per bucket, each allowed ``max_tokens // bucket`` rows (rounded down
        to a multiple of 8: a constant token budget, so the same activation memory per call), capped
        at ``max_batch`` when given. ``max_tokens=None``: every bucket gets ``max_batch`` (64)."""
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        buckets = validate_buckets(buckets)
        if max_tokens is None:
            rows = [max_batch or 64] * len(buckets)
        else:
            planned = token_budget_profiles(buckets=buckets, token_budget=max_tokens, max_seq=buckets[-1])
            rows = [p.max_batch if max_batch is None else min(max_batch, p.max_batch) for p in planned]
        profiles = [ProfileSpec(1, 1, n, p.min_seq, p.opt_seq, p.max_seq)
                    for n, p in zip(rows, profiles_for_buckets(buckets, 1, 1, 1))]
        return cls(tuple(profiles), max_batch=max(rows), pad_to=pad_to)

    @property
    def buckets(self) -> Tuple[int, ...]:
        return tuple(p.max_seq for p in self.profiles)

    @property
    def max_seq(self) -> int:
        return self.profiles[-1].max_seq

    def profile_for(self, seq: int) -> ProfileSpec:
        """The profile a call whose longest window has ``seq`` tokens runs on: the smallest
        ``max_seq`` that holds it."""
        for p in self.profiles:
            if p.min_seq <= seq <= p.max_seq:
                return p
        for p in self.profiles:  # below every min_seq: pad up to the first profile that takes it
            if seq < p.min_seq:
                return p
        ranges = ", ".join(f"{p.min_seq}-{p.max_seq}" for p in self.profiles)
        raise ValueError(f"a window of {seq} tokens fits no profile (sequence ranges {ranges})")

    def padded_length(self, longest: int) -> int:
        p = self.profile_for(longest)
        if self.pad_to == "bucket":
            return max(p.opt_seq, longest)
        rounded = -(-longest // self.multiple) * self.multiple
        return min(max(rounded, p.min_seq), p.max_seq)

    def cap(self, longest: int) -> int:
        return min(self.max_batch, self.profile_for(longest).max_batch)


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
    """Windows (by real token count) -> model calls: the one place a batch is split to fit.

    Windows are sorted by length and cut greedily into calls: a call grows while the profile its
    longest window needs allows more rows; it is padded as ``plan.pad_to`` says. Padding to the
    longest window, a call may reach into a longer bucket (every row is padded to the call's
    length, which that bucket's profile accepts); padding to buckets, it stays in one.
    Sorting puts windows of similar length together, so calls are full and padding is small even
    when Beam's batch mixes lengths. Raises ValueError naming the window when one is too long.
    """
    for i, n in enumerate(lengths):
        if n > plan.max_seq:
            raise ValueError(
                f"window #{i} has {n} tokens, more than the longest profile ({plan.max_seq}); make windows "
                "with a max_seq_length the engine/profiles cover, or build the engine with longer profiles"
            )
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    calls: List[ModelCall] = []
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and end - start < plan.cap(lengths[order[end]]) and (
                plan.pad_to == "longest" or plan.profile_for(lengths[order[end]]) is plan.profile_for(lengths[order[start]])):
            end += 1
        members = tuple(sorted(order[start:end]))
        longest = lengths[order[end - 1]]
        seq = plan.padded_length(longest)
        profile = plan.profile_for(longest)
        rows = max(len(members), profile.min_batch)
        index = choose_profile(plan.profiles, rows, seq)  # raises, naming the profiles, if none accepts
        calls.append(ModelCall(members, seq, rows, index))
        start = end
    return calls


def _with_filler_rows(batch: ModelBatch, rows: int) -> ModelBatch:
    """Append rows holding one unmasked [PAD] token; their outputs are dropped. Not all-masked
    rows: attention that masks with -inf turns those into NaN, which is harmless but noisy."""
    b, s = batch.shape
    if rows <= b:
        return batch
    mask = np.zeros((rows - b, s), dtype=np.int32)
    mask[:, 0] = 1
    zeros = np.zeros((rows - b, s), dtype=np.int32)
    return ModelBatch(
        np.concatenate([batch.input_ids, zeros]),
        np.concatenate([batch.attention_mask, mask]),
        np.concatenate([batch.token_type_ids, zeros]),
    )


def _checked(logits: Any, shape: Tuple[int, int]) -> Logits:
    start, end = (np.asarray(x, dtype=np.float32) for x in logits)
    if start.shape != shape or end.shape != shape:
        raise RuntimeError(
            f"the model returned logits of shapes {start.shape} and {end.shape} for an input of shape {shape}; "
            "a runner must return float32 [batch, seq] start and end logits"
        )
    return start, end


def run_model_calls(
    windows: Sequence[Window], calls: Sequence[ModelCall], runner: Runner, record: Optional[CallRecorder] = None
) -> List[WindowLogits]:
    """Run every call and cut each window's logits back to its real length (copies: runners may
    reuse their output buffers). With a ``submit``-capable runner the next call is padded while
    the previous one runs."""
    out: List[Optional[WindowLogits]] = [None] * len(windows)
    submit = getattr(runner, "submit", None)

    def finish(call: ModelCall, result: Any, t0: int) -> None:
        start, end = _checked(result.result() if submit is not None else result, call.shape)
        elapsed_us = (time.perf_counter_ns() - t0) // 1000
        real = 0
        for row, i in enumerate(call.indices):
            n = windows[i].length
            real += n
            out[i] = WindowLogits(start[row, :n].copy(), end[row, :n].copy())
        if record is not None:
            record(call, real, int(elapsed_us))

    pending: Optional[Tuple[ModelCall, Any, int]] = None
    for call in calls:
        inputs = _with_filler_rows(pad_windows([windows[i] for i in call.indices], call.seq_len), call.rows)
        t0 = time.perf_counter_ns()
        if submit is None:  # copy out before the next call: the runner may reuse its buffers
            finish(call, runner.run(inputs), t0)
            continue
        result = submit(inputs)
        if pending is not None:
            finish(*pending)
        pending = (call, result, t0)
    if pending is not None:
        finish(*pending)
    return [lg for lg in out if lg is not None]


def answer_batch(
    questions: Sequence[QuestionWindows],
    runner: Runner,
    plan: BatchPlan,
    config: AnswerConfig = AnswerConfig(),
    record: Optional[CallRecorder] = None,
) -> List[Outcome]:
    """Answers of ``questions``, in order: each an Answer, or the exception that question alone
    raised (logits that are not finite, windows that do not belong together). An error of the
    model itself (shape, runner failure) raises: it concerns every question of the batch."""
    windows = [w for q in questions for w in q.windows]
    if not windows:
        return []
    calls = plan_model_calls([w.length for w in windows], plan)
    logits = run_model_calls(windows, calls, runner, record)
    items = []
    at = 0
    for q in questions:
        n = len(q.windows)
        items.append((q.example, q.windows, logits[at:at + n]))
        at += n
    return list(extract_answers(items, config))


def batches_of(questions: Sequence[QuestionWindows], windows: int = DEFAULT_BATCH_WINDOWS) -> List[List[QuestionWindows]]:
    """Consecutive questions cut into batches of about ``windows`` windows (a batch closes once it
    holds that many), as BatchElements with a window-count ``element_size_fn`` forms them: for
    callers that answer many questions without Beam (evaluation, the GPU check, benchmarks)."""
    out: List[List[QuestionWindows]] = []
    part: List[QuestionWindows] = []
    count = 0
    for q in questions:
        part.append(q)
        count += len(q.windows)
        if count >= windows:
            out.append(part)
            part, count = [], 0
    if part:
        out.append(part)
    return out
