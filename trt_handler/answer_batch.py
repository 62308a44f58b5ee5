"""The one answer path for every caller: a batch of questions' windows -> planned model calls -> answers.

Which windows share a call, how far they are padded and which profile runs them is decided in one
place, :func:`plan_model_calls`; :func:`pad_call` turns a planned call into its arrays. A runner that
also has ``submit(batch) -> pending.result()`` gets the next call padded while the previous one runs.

Windows reach their logits through a :class:`WindowModel`: in process, :class:`PlannedRunner` (a runner
and its plan); or the inference server of the GPU (``trt_handler.serving``), which plans the pooled
windows of every process of a worker the same way.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from trt_handler.engines.profiles import (
    DEFAULT_TOKEN_BUDGET,
    ProfileSpec,
    choose_profile,
    profiles_for_buckets,
    token_budget_profiles,
)
from trt_handler.qa.answers import AnswerConfig, extract_answers
from trt_handler.qa.batching import DEFAULT_BUCKETS, TokenWindow, pad_windows, validate_buckets
from trt_handler.qa.types import Answer, ModelBatch, QuestionWindows, Window, WindowLogits

__all__ = [
    "DEFAULT_BATCH_WINDOWS",
    "BatchPlan",
    "ModelCall",
    "ModelCallError",
    "PlannedRunner",
    "Runner",
    "WindowModel",
    "answer_batch",
    "batches_of",
    "pad_call",
    "plan_model_calls",
    "question_logits",
    "run_model_calls",
]

Logits = Tuple[np.ndarray, np.ndarray]

# Windows per RunInference batch. The planner sorts a batch by length, so a bigger one pads less: on SQuAD
# the default plan computes 1.10x the real tokens at 1,024 windows, 1.21x at 256, 1.50x at 64 (bench_inflation).
DEFAULT_BATCH_WINDOWS = 1024


class Runner(Protocol):
    """What runs the model: ``run`` takes a padded int32 batch and gives float32 [B, S] logits."""

    def run(self, batch: ModelBatch) -> Logits: ...


# Called once per model call: (call, real tokens in it, microseconds from submit to logits).
CallRecorder = Callable[["ModelCall", int, int], None]


class ModelCallError(RuntimeError):
    """A model call failed: the questions with a window in it cannot be answered (their dead letters
    say ``inference_failed`` with this message); other questions of the batch are not affected."""


class WindowModel(Protocol):
    """Windows -> their logits, in order; an entry is the :class:`ModelCallError` of the call that
    held that window when only that call failed."""

    def window_logits(self, windows: Sequence[Window]) -> List[Union[WindowLogits, ModelCallError]]: ...


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

    def profile_for(self, seq: int) -> ProfileSpec:
        """The profile for a call whose longest window has ``seq`` tokens: the first that holds it."""
        for p in self.profiles:
            if p.min_seq <= seq <= p.max_seq:
                return p
        for p in self.profiles:  # below every min_seq: pad up to the first profile that takes it
            if seq < p.min_seq:
                return p
        ranges = ", ".join(f"{p.min_seq}-{p.max_seq}" for p in self.profiles)
        raise ValueError(f"a window of {seq} tokens fits no profile (sequence ranges {ranges})")

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
    """Windows (by real token count) -> model calls, sorted by length and cut greedily: a call grows
    while the profile of its longest window allows more rows (with ``pad_to="bucket"``, within one
    profile). Raises ValueError naming a window that is too long."""
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
        first = plan.profile_for(lengths[order[start]])
        while end < len(order) and end - start < plan.cap(lengths[order[end]]) and (
                plan.pad_to == "longest" or plan.profile_for(lengths[order[end]]) is first):
            end += 1
        members = tuple(sorted(order[start:end]))
        longest = lengths[order[end - 1]]
        p = plan.profile_for(longest)
        if plan.pad_to == "bucket":
            seq = max(p.opt_seq, longest)
        else:  # rounded up to a multiple, within the profile
            seq = min(max(-(-longest // 8) * 8, p.min_seq), p.max_seq)
        rows = max(len(members), p.min_batch)
        index = choose_profile(plan.profiles, rows, seq)  # raises, naming the profiles, if none accepts
        calls.append(ModelCall(members, seq, rows, index))
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


def run_model_calls(
    windows: Sequence[Window], calls: Sequence[ModelCall], runner: Runner, record: Optional[CallRecorder] = None
) -> List[WindowLogits]:
    """Run every call; each window's logits cut back to its real length, copied (runners may reuse
    their output buffers), in input order."""
    out: List[Optional[WindowLogits]] = [None] * len(windows)
    submit = getattr(runner, "submit", None)

    def finish(call: ModelCall, result: Any, t0: int) -> None:
        start, end = (np.asarray(x, dtype=np.float32) for x in (result.result() if submit is not None else result))
        elapsed_us = (time.perf_counter_ns() - t0) // 1000
        check_logits_shape(start, end, call)
        for row, i in enumerate(call.indices):
            n = windows[i].length
            out[i] = WindowLogits(start[row, :n].copy(), end[row, :n].copy())
        if record is not None:
            record(call, sum(windows[i].length for i in call.indices), int(elapsed_us))

    pending: List[Tuple[ModelCall, Any, int]] = []
    for call in calls:
        inputs = pad_call(windows, call)
        t0 = time.perf_counter_ns()
        pending.append((call, runner.run(inputs) if submit is None else submit(inputs), t0))
        # run(): copy out before the next call (the runner may reuse its buffers); submit(): one call
        # later, so the next call is padded while this one runs
        while len(pending) > (0 if submit is None else 1):
            finish(*pending.pop(0))
    for item in pending:
        finish(*item)
    return [lg for lg in out if lg is not None]


class PlannedRunner:
    """A runner and its plan, in this process: windows -> :func:`plan_model_calls` -> the runner.
    ``record`` is called once per model call (the handlers' metrics)."""

    def __init__(self, runner: Runner, plan: BatchPlan, record: Optional[CallRecorder] = None) -> None:
        self.runner = runner
        self.plan = plan
        self.record = record

    def window_logits(self, windows: Sequence[Window]) -> List[Union[WindowLogits, ModelCallError]]:
        calls = plan_model_calls([w.length for w in windows], self.plan)
        return list(run_model_calls(windows, calls, self.runner, self.record))

    def stats(self) -> Optional[Dict[str, Any]]:
        """The runner's counters (an engine session's context waits), if it keeps any."""
        stats = getattr(self.runner, "stats", None)
        return stats() if callable(stats) else None

    def gpu_memory(self) -> Optional[Dict[str, int]]:
        memory = getattr(self.runner, "gpu_memory", None)
        return memory() if callable(memory) else None


def question_logits(questions: Sequence[QuestionWindows], model: WindowModel
                    ) -> List[Union[List[WindowLogits], ModelCallError]]:
    """Each question's window logits, in order, or the ModelCallError of a failed call holding one of
    its windows. An error of the whole batch (a runner failure in process, a dead server) raises."""
    windows = [w for q in questions for w in q.windows]
    logits = iter(model.window_logits(windows))
    out: List[Union[List[WindowLogits], ModelCallError]] = []
    for q in questions:
        mine = list(itertools.islice(logits, len(q.windows)))
        failed = next((x for x in mine if isinstance(x, ModelCallError)), None)
        out.append(failed if failed is not None else [x for x in mine if isinstance(x, WindowLogits)])
    return out


def answer_batch(
    questions: Sequence[QuestionWindows],
    model: WindowModel,
    config: AnswerConfig = AnswerConfig(),
) -> List[Union[Answer, Exception]]:
    """Answers of ``questions``, in order: each an Answer, or the exception that question alone
    raised (logits that are not finite, windows that do not belong together, a failed model call
    holding one of its windows). An error of the whole batch raises."""
    per_question = question_logits(questions, model)
    items = [(q.example, q.windows, lg) for q, lg in zip(questions, per_question) if not isinstance(lg, Exception)]
    answers = iter(extract_answers(items, config))
    return [lg if isinstance(lg, Exception) else next(answers) for lg in per_question]


def batches_of(questions: Sequence[QuestionWindows], windows: int = DEFAULT_BATCH_WINDOWS
               ) -> List[List[QuestionWindows]]:
    """Consecutive questions in batches that close once they hold ``windows`` windows, as the handlers'
    BatchElements forms them: for callers without Beam (evaluation, the GPU check, benchmarks)."""
    out: List[List[QuestionWindows]] = [[]]
    count = 0
    for q in questions:
        if count >= windows:
            out.append([])
            count = 0
        out[-1].append(q)
        count += len(q.windows)
    return out if out[0] else []
