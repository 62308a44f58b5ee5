"""The one answer path for every caller: a batch of questions' windows -> planned model calls -> logits.

Which windows share a call, how far they are padded and which profile runs them is decided in one
place, ``trt_handler.planning.plan_model_calls``; runners run each call on the profile it names. A
runner that declares :class:`AsyncRunner` gets the next call padded while the previous one runs.

Windows reach their logits through a :class:`WindowModel`: in process, :class:`PlannedRunner` (a runner
and its plan); or the inference server of the GPU (``trt_handler.serving``), which plans the pooled
windows of every process of a worker the same way.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

from trt_handler.planning import BatchPlan, ModelCall, check_logits_shape, pad_call, plan_model_calls
from trt_handler.qa.answers import AnswerConfig, extract_answers
from trt_handler.qa.types import Answer, ModelBatch, QuestionWindows, Window, WindowLogits

__all__ = [
    "DEFAULT_BATCH_WINDOWS",
    "AsyncRunner",
    "CountingRunner",
    "GpuRunner",
    "ModelCallError",
    "PlannedRunner",
    "Runner",
    "WindowModel",
    "answer_batch",
    "batches_of",
    "question_logits",
    "run_model_calls",
]

Logits = Tuple[np.ndarray, np.ndarray]

# Windows per RunInference batch. The planner sorts a batch by length, so a bigger one pads less: on SQuAD
# the default plan computes 1.10x the real tokens at 1,024 windows, 1.21x at 256, 1.50x at 64 (bench_inflation).
DEFAULT_BATCH_WINDOWS = 1024


@runtime_checkable
class Runner(Protocol):
    """What runs the model: ``run`` takes a padded int32 batch and the index of the profile the planner
    chose for it (runners without profiles ignore it) and gives float32 [B, S] logits."""

    def run(self, batch: ModelBatch, profile: int) -> Logits: ...


class Pending(Protocol):
    def result(self) -> Logits: ...


@runtime_checkable
class AsyncRunner(Runner, Protocol):
    """A runner that queues a call and returns at once (the next call is padded while this one runs)."""

    def submit(self, batch: ModelBatch, profile: int) -> Pending: ...


@runtime_checkable
class CountingRunner(Runner, Protocol):
    """A runner that keeps counters (an engine session's context waits)."""

    def stats(self) -> Dict[str, int]: ...


@runtime_checkable
class GpuRunner(Runner, Protocol):
    """A runner on a GPU that reports its memory ({free_bytes, total_bytes, used_bytes}, None off a GPU)."""

    def gpu_memory(self) -> Optional[Dict[str, int]]: ...


# Called once per model call: (call, real tokens in it, microseconds from submit to logits).
CallRecorder = Callable[["ModelCall", int, int], None]


class ModelCallError(RuntimeError):
    """A model call failed: the questions with a window in it cannot be answered (their dead letters
    say ``inference_failed`` with this message); other questions of the batch are not affected."""


class WindowModel(Protocol):
    """Windows -> their logits, in order; an entry is the :class:`ModelCallError` of the call that
    held that window when only that call failed."""

    def window_logits(self, windows: Sequence[Window]) -> List[Union[WindowLogits, ModelCallError]]: ...


def run_model_calls(
    windows: Sequence[Window], calls: Sequence[ModelCall], runner: Runner, record: Optional[CallRecorder] = None
) -> List[WindowLogits]:
    """Run every call; each window's logits cut back to its real length, copied (runners may reuse
    their output buffers), in input order."""
    out: List[Optional[WindowLogits]] = [None] * len(windows)
    submit = runner.submit if isinstance(runner, AsyncRunner) else None

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
        pending.append((call, runner.run(inputs, call.profile) if submit is None else submit(inputs, call.profile), t0))
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
        return self.runner.stats() if isinstance(self.runner, CountingRunner) else None

    def gpu_memory(self) -> Optional[Dict[str, int]]:
        return self.runner.gpu_memory() if isinstance(self.runner, GpuRunner) else None


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
