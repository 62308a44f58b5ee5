"""Engine session: run a serialized TensorRT engine on QA model batches, from many threads at once.

Layers, each testable on its own:

* pure Python (CPU tests): :func:`validate_io` checks the engine's tensors against what the QA
  features produce, :func:`read_profiles` reads its optimization profiles back, :class:`SlotPool`
  hands execution slots to threads, :class:`SessionStats` counts runs and context waits;
* CUDA (device tests, no TensorRT needed): :class:`ExecutionSlot` drives any object with TensorRT's
  execution-context methods over a :class:`~trt_handler.engines.cuda_runtime.BufferSet` and its stream;
* TensorRT (needs the library and a GPU): :class:`EngineSession` deserializes the engine, explains
  why it cannot when it cannot (:class:`EngineCompatibilityError` from
  :mod:`trt_handler.engines.library`, which owns library loading, the TensorRT logger, the validity
  check and the diagnosis), warms every profile up, and wires the layers together.

The session does not split batches: ``run`` runs exactly the [B, S] it is given, on the profile
:func:`~trt_handler.engines.profiles.choose_profile` picks. Fitting batches to the profiles is the
batch planner's job (``trt_handler.answer_batch``), the one owner of that decision.

Threading: Beam runs several harness threads per worker process and they share one session. Each
call checks out an :class:`ExecutionSlot` (execution context + stream + buffers) for the profile its
batch needs and returns it afterwards, so threads never share a context. ``contexts_per_profile``
slots per profile are created up front; when all of a profile's slots are busy a thread creates one
more, up to ``max_contexts_per_profile`` (default twice ``contexts_per_profile``), and beyond that it
waits for a slot to come back. The cap bounds GPU memory: every context holds its own activation
memory and buffers sized for its profile's maximum. Some TensorRT versions allow only one execution
context per optimization profile at a time: when binding another context to a busy profile is
refused (:class:`ProfileBusyError`), the pool stops growing that profile and the thread waits for
the busy slot instead of failing its batch (logged once per profile).

``tensorrt``/``tensorrt_rtx`` and ``cuda.bindings`` are imported only when a session is built.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from trt_handler.engines.library import (
    REBUILD_FIX,
    EngineCompatibilityError,
    compatibility_error,
    diagnose,
    findings_from_log,
    library_label,
    load_library,
    make_logger,
)
from trt_handler.engines.profiles import ProfileSpec, choose_profile
from trt_handler.engines.sidecar import read_sidecar
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch

if TYPE_CHECKING:  # cuda_runtime is imported lazily so `import trt_handler.engines.session` needs no CUDA
    from typing import Self

    import tensorrt_lean

    from trt_handler.engines.cuda_runtime import TensorSpec

__all__ = [
    "REBUILD_FIX",
    "EngineCompatibilityError",
    "EngineIOError",
    "EngineSession",
    "ExecutionSlot",
    "ProfileBusyError",
    "SessionStats",
    "SlotPool",
    "WarmUpError",
    "load_library",
    "read_profiles",
    "select_profile",
    "validate_io",
]

LOGGER = logging.getLogger(__name__)

Logits = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]

class EngineIOError(EngineCompatibilityError):
    """The engine's tensors are not the QA model's (names, dtypes or ranks differ)."""

    def __init__(self, detail: str) -> None:
        super().__init__("io", detail)

    def __reduce__(self) -> tuple[Any, ...]:
        return (EngineIOError, (self.detail,))


class TrtContext(Protocol):
    """The parts of ``IExecutionContext`` a slot uses (TensorRT 10 / TensorRT-RTX name-based API)."""

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool: ...

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool: ...

    def set_tensor_address(self, name: str, memory: int) -> bool: ...

    def get_tensor_shape(self, name: str) -> Any: ...

    def execute_async_v3(self, stream_handle: int) -> bool: ...


class TrtEngine(Protocol):
    """The parts of ``ICudaEngine`` the session reads."""

    @property
    def num_io_tensors(self) -> int: ...

    @property
    def num_optimization_profiles(self) -> int: ...

    def get_tensor_name(self, index: int) -> str: ...

    def get_tensor_mode(self, name: str) -> Any: ...

    def get_tensor_dtype(self, name: str) -> Any: ...

    def get_tensor_shape(self, name: str) -> Any: ...

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> Any: ...

    def create_execution_context(self) -> Any: ...


class Slot(Protocol):
    """What the pool hands out: something that runs one chunk that fits its profile."""

    def run(self, arrays: Sequence[npt.NDArray[Any]]) -> Logits: ...

    def close(self) -> None: ...


def _enum_name(value: Any) -> str:
    """``TensorIOMode.INPUT`` -> "INPUT", ``DataType.INT32`` -> "INT32", for TensorRT or fake enums."""
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name.upper()
    return str(value).rsplit(".", 1)[-1].upper()


def _dims(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


# ---------------------------------------------------------------------------------------------
# Pure Python: I/O validation, profiles, split plan, pool
# ---------------------------------------------------------------------------------------------


def describe_io(engine: TrtEngine) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Each I/O tensor as name -> (mode, dtype, shape), e.g. ("INPUT", "INT32", (-1, -1))."""
    out: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        out[name] = (
            _enum_name(engine.get_tensor_mode(name)),
            _enum_name(engine.get_tensor_dtype(name)),
            _dims(engine.get_tensor_shape(name)),
        )
    return out


def validate_io(engine: TrtEngine) -> None:
    """Raise EngineIOError listing every way the engine's tensors differ from the QA model's.

    Expected: inputs ``INPUT_NAMES`` int32 rank 2, outputs ``OUTPUT_NAMES`` float32 rank 2, nothing else.
    """
    io = describe_io(engine)
    problems: list[str] = []
    wanted = [(n, "INPUT", "INT32") for n in INPUT_NAMES] + [(n, "OUTPUT", "FLOAT") for n in OUTPUT_NAMES]
    for name, mode, dtype in wanted:
        role = mode.lower()
        if name not in io:
            problems.append(f"{role} {name!r} is missing")
            continue
        got_mode, got_dtype, shape = io[name]
        if got_mode != mode:
            problems.append(f"{name!r} is an {got_mode.lower()}, expected an {role}")
        if got_dtype != dtype:
            problems.append(f"{role} {name!r} is {got_dtype}, expected {dtype}")
        if len(shape) != 2:
            problems.append(f"{role} {name!r} has rank {len(shape)} (shape {shape}), expected rank 2 [batch, seq]")
    expected = set(INPUT_NAMES) | set(OUTPUT_NAMES)
    for name, (got_mode, _, _) in io.items():
        if name not in expected:
            problems.append(f"unexpected {got_mode.lower()} {name!r}")
    if problems:
        found = ", ".join(f"{n} ({m.lower()} {d} {s})" for n, (m, d, s) in io.items())
        raise EngineIOError(
            f"the engine's inputs/outputs do not match what the QA features produce: {'; '.join(problems)}. "
            f"The engine has: {found}."
        )


def _input_ranges(engine: TrtEngine, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of input ``name`` in ``profile``; a static input gives its own shape thrice."""
    static = _dims(engine.get_tensor_shape(name))
    if all(d >= 0 for d in static):
        return (static, static, static)
    shapes = tuple(_dims(s) for s in engine.get_tensor_profile_shape(name, profile))
    if len(shapes) != 3 or any(len(s) != len(static) for s in shapes):
        raise EngineIOError(f"profile {profile} of input {name!r} has unreadable shapes {shapes}.")
    return shapes


def read_profiles(engine: TrtEngine) -> list[ProfileSpec]:
    """The engine's optimization profiles as ProfileSpecs, in profile-index order.

    Raises EngineIOError when the three inputs disagree within a profile, since one [B, S] batch
    sets the same shape on all of them.
    """
    count = max(1, int(engine.num_optimization_profiles))
    out: list[ProfileSpec] = []
    for p in range(count):
        ranges = {name: _input_ranges(engine, name, p) for name in INPUT_NAMES}
        first = ranges[INPUT_NAMES[0]]
        for name, r in ranges.items():
            if r != first:
                raise EngineIOError(
                    f"profile {p} gives input {name!r} shapes {r} but {INPUT_NAMES[0]!r} {first}; "
                    "all three inputs must share one (min, opt, max) range."
                )
        (bmin, smin), (bopt, sopt), (bmax, smax) = first
        try:
            out.append(ProfileSpec(bmin, bopt, bmax, smin, sopt, smax))
        except ValueError as exc:
            raise EngineIOError(f"profile {p} has an unusable range: {exc}.") from exc
    return out


_S = TypeVar("_S")


class ProfileBusyError(RuntimeError):
    """TensorRT refused to bind another execution context to a profile that one already uses
    (some versions allow one context per optimization profile at a time). The pool answers it by
    waiting for the busy slot; it reaches a caller only when no slot of the profile exists."""


class SlotPool(Generic[_S]):
    """Per-profile pool of slots: threads check one out, use it alone, and return it.

    ``prefill`` slots per profile are made by :meth:`prefill`; when none is idle a checkout makes a
    new one until the profile has ``cap``, then waits. A slot whose use raised is closed and not
    reused (its stream may hold half-finished work), which frees room for a fresh one.

    When the factory raises :class:`ProfileBusyError` while the profile already has a slot, the
    profile's limit drops to the slots it has, and the thread waits for one of them instead of
    failing (logged once per profile). With no slot of the profile at all the error is real and
    is raised.
    """

    def __init__(
        self,
        factory: Callable[[int], _S],
        close: Callable[[_S], None],
        num_profiles: int,
        *,
        prefill: int = 1,
        cap: int = 2,
    ) -> None:
        if num_profiles <= 0:
            raise ValueError(f"num_profiles must be positive, got {num_profiles}")
        if prefill < 0 or cap < max(1, prefill):
            raise ValueError(f"need 0 <= prefill <= cap and cap >= 1, got prefill={prefill}, cap={cap}")
        self._factory = factory
        self._close = close
        self._prefill = prefill
        self._cap = cap
        self._cond = threading.Condition()
        self._idle: list[list[_S]] = [[] for _ in range(num_profiles)]
        self._created = [0] * num_profiles
        self._limit = [cap] * num_profiles  # lowered for a profile TensorRT will not share
        self._closed = False

    @property
    def cap(self) -> int:
        return self._cap

    def limits(self) -> list[int]:
        """Most slots per profile: ``cap``, or fewer where TensorRT refused another context."""
        with self._cond:
            return list(self._limit)

    def _busy(self, profile: int, existing: int, exc: BaseException) -> None:
        """Stop growing ``profile`` at ``existing`` slots (the caller then waits); log it once."""
        with self._cond:
            first = self._limit[profile] > existing
            self._limit[profile] = min(self._limit[profile], existing)
            self._cond.notify_all()
        if first:
            LOGGER.warning(
                "TensorRT refused another execution context on optimization profile %d (%s); that profile "
                "keeps %d context(s) and further batches on it wait for a free one",
                profile, exc, existing,
            )

    def prefill(self) -> None:
        """Create the up-front slots; on failure close those made and re-raise (a profile TensorRT
        will not share stops at the slots it already has)."""
        made: list[tuple[int, _S]] = []
        try:
            for p in range(len(self._idle)):
                for k in range(self._prefill):
                    try:
                        made.append((p, self._factory(p)))
                    except ProfileBusyError as exc:
                        if k == 0:
                            raise
                        self._busy(p, k, exc)
                        break
        except BaseException:
            for _, slot in made:
                self._close(slot)
            raise
        with self._cond:
            for p, slot in made:
                self._idle[p].append(slot)
                self._created[p] += 1

    def created(self) -> list[int]:
        """How many slots exist per profile (idle or checked out)."""
        with self._cond:
            return list(self._created)

    def _take(self, profile: int) -> _S | None:
        """An idle slot, or None after reserving room to make one; waits while the profile is full."""
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the engine session is closed; create a new EngineSession")
                if self._idle[profile]:
                    return self._idle[profile].pop()
                if self._created[profile] < self._limit[profile]:
                    self._created[profile] += 1
                    return None
                self._cond.wait()

    def _forget(self, profile: int) -> int:
        """Give back a reserved or failed slot's room; returns the slots the profile still has."""
        with self._cond:
            self._created[profile] -= 1
            self._cond.notify_all()  # waiters of every profile share the condition
            return self._created[profile]

    def _acquire(self, profile: int) -> _S:
        while True:
            slot = self._take(profile)
            if slot is not None:
                return slot
            try:
                return self._factory(profile)
            except ProfileBusyError as exc:
                existing = self._forget(profile)
                if existing == 0:
                    raise
                self._busy(profile, existing, exc)  # then wait for one of the existing slots
            except BaseException:
                self._forget(profile)
                raise

    @contextmanager
    def checkout(self, profile: int) -> Iterator[_S]:
        """Use a slot of ``profile`` exclusively for the ``with`` block."""
        if not 0 <= profile < len(self._idle):
            raise IndexError(f"profile {profile} does not exist; the engine has {len(self._idle)}")
        slot = self._acquire(profile)
        try:
            yield slot
        except BaseException:
            self._forget(profile)
            self._close(slot)
            raise
        with self._cond:
            if not self._closed:
                self._idle[profile].append(slot)
                self._cond.notify_all()  # waiters of every profile share the condition
                return
        self._close(slot)

    def close(self) -> None:
        """Close idle slots now and checked-out ones when they come back; wake waiting threads."""
        with self._cond:
            self._closed = True
            idle = [slot for slots in self._idle for slot in slots]
            for slots in self._idle:
                slots.clear()
            self._cond.notify_all()
        for slot in idle:
            self._close(slot)


# ---------------------------------------------------------------------------------------------
# CUDA: one execution context with its stream and buffers
# ---------------------------------------------------------------------------------------------


def select_profile(context: TrtContext, profile_index: int, stream_handle: int) -> None:
    """Bind ``context`` to ``profile_index`` (``set_optimization_profile_async`` on the stream).

    Raises :class:`ProfileBusyError` when TensorRT refuses (returns False or raises), which on
    versions that allow one context per profile at a time means the profile is in use: the pool
    then waits for that context instead of failing the batch.
    """
    try:
        ok = context.set_optimization_profile_async(profile_index, stream_handle)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises its own error types
        raise ProfileBusyError(
            f"TensorRT refused optimization profile {profile_index} for a new execution context ({exc})"
        ) from exc
    if not ok:
        raise ProfileBusyError(
            f"TensorRT refused optimization profile {profile_index} for a new execution context; see the TensorRT log"
        )


def _tensor_specs(spec: ProfileSpec) -> list[TensorSpec]:
    from trt_handler.engines.cuda_runtime import TensorSpec

    shape = (spec.max_batch, spec.max_seq)
    inputs = [TensorSpec(n, np.dtype(np.int32), shape, True) for n in INPUT_NAMES]
    outputs = [TensorSpec(n, np.dtype(np.float32), shape, False) for n in OUTPUT_NAMES]
    return inputs + outputs


class ExecutionSlot:
    """One execution context bound to one profile, with its own stream and buffers for the profile max.

    The profile is selected and every tensor address set once, here; a run only sets input shapes,
    queues H2D copies, ``execute_async_v3``, D2H copies on the same stream, and synchronizes once.
    ``context`` may be any object with the :class:`TrtContext` methods, so the CUDA path can be
    tested on a GPU without TensorRT.
    """

    def __init__(self, context: TrtContext, profile_index: int, spec: ProfileSpec) -> None:
        from trt_handler.engines.cuda_runtime import BufferSet

        self._context: TrtContext | None = context
        self.profile_index = profile_index
        self.spec = spec
        self.buffers = BufferSet(_tensor_specs(spec))
        try:
            self._bind(context)
        except BaseException:
            self.close()
            raise

    def _bind(self, context: TrtContext) -> None:
        stream = self.buffers.stream
        select_profile(context, self.profile_index, stream.handle)
        for name in INPUT_NAMES + OUTPUT_NAMES:
            if not context.set_tensor_address(name, self.buffers.device_ptr(name)):
                raise RuntimeError(f"TensorRT refused the device address of tensor {name!r}; see the log above")
        stream.synchronize()  # the profile switch may have queued copies

    def run(self, arrays: Sequence[npt.NDArray[Any]]) -> Logits:
        """Run one chunk (three int [B, S] arrays in INPUT_NAMES order) -> float32 [B, S] start, end copies."""
        if self._context is None:
            raise RuntimeError("this execution slot is closed")
        context = self._context
        b, s = (int(d) for d in arrays[0].shape)
        if not self.spec.accepts(b, s):
            raise ValueError(f"shape [{b}, {s}] is outside profile {self.profile_index} ({self.spec})")
        for name, array in zip(INPUT_NAMES, arrays):
            if not context.set_input_shape(name, (b, s)):
                raise RuntimeError(f"TensorRT refused input shape [{b}, {s}] for {name!r} in profile {self.profile_index}")
            self.buffers.upload(name, array)
        if not context.execute_async_v3(self.buffers.stream.handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for shape [{b}, {s}]; see the TensorRT log above")
        hosts = []
        for name in OUTPUT_NAMES:
            shape = _dims(context.get_tensor_shape(name))
            if shape != (b, s):
                raise RuntimeError(f"output {name!r} has shape {shape} for input [{b}, {s}]; expected [{b}, {s}]")
            hosts.append(self.buffers.download(name, (b, s)))
        self.buffers.synchronize()
        return (np.array(hosts[0], dtype=np.float32), np.array(hosts[1], dtype=np.float32))

    def close(self) -> None:
        """Wait for queued work, drop the context (it points at the buffers), then free buffers and stream."""
        if not self.buffers.closed:
            with contextlib.suppress(Exception):  # a failed stream still gets freed below
                self.buffers.synchronize()
        self._context = None
        self.buffers.close()


# ---------------------------------------------------------------------------------------------
# TensorRT: loading, diagnosis, the session
# ---------------------------------------------------------------------------------------------


def _deserialize(module: Any, data: bytes, sidecar: Mapping[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(engine, runtime, logger) — the runtime and logger must outlive the engine.

    On failure the runtime is released before raising: a traceback that kept it alive would
    destroy it at interpreter exit, when its logger callback can no longer run Python. Without a
    GPU a Runtime is made only where it can check an engine without one (TensorRT-RTX's validity
    query): the lean runtime's Runtime, made on a machine without CUDA, crashes when destroyed.
    """
    from trt_handler.engines import cuda_runtime

    logger = make_logger(module)
    no_gpu = cuda_runtime.unavailable_reason() is not None
    can_check = getattr(module.Runtime, "get_engine_validity", None) is not None
    if no_gpu and not can_check:
        findings = diagnose(module, None, data, sidecar) + [("no_gpu", "")]
        raise compatibility_error(findings, data, module)
    runtime: tensorrt_lean.Runtime = module.Runtime(logger)
    engine: tensorrt_lean.ICudaEngine | None = None
    findings = diagnose(module, runtime, data, sidecar)
    findings += findings_from_log(logger)
    if no_gpu:
        findings.append(("no_gpu", ""))  # the message's "on no GPU (...)" already says why
    if not findings:
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            findings = findings_from_log(logger) or [("unknown", "deserialize_cuda_engine failed and TensorRT logged no error")]
    if engine is None:
        del runtime
        raise compatibility_error(findings, data, module)
    return engine, runtime, logger


def _read_engine(engine: bytes | bytearray | memoryview | str) -> bytes:
    """Engine bytes from bytes, a local path, or (through Beam's FileSystems) a gs:// path."""
    if isinstance(engine, (bytes, bytearray, memoryview)):
        return bytes(engine)
    path = str(engine)
    if "://" in path and not path.startswith("file://"):
        try:
            filesystems = importlib.import_module("apache_beam.io.filesystems")
        except ImportError as exc:
            raise FileNotFoundError(f"reading {path} needs apache-beam[gcp]; copy the engine locally instead") from exc
        with filesystems.FileSystems.open(path) as f:
            return bytes(f.read())
    local = path.removeprefix("file://")
    try:
        with open(local, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"engine file {local} does not exist; build one with `make engine`, or pass the ONNX model "
            "to the handler so it builds one"
        ) from None


def _batch_arrays(batch: ModelBatch) -> list[npt.NDArray[Any]]:
    """The batch's three arrays in INPUT_NAMES order, checked to be integer [B, S] of one shape."""
    arrays = [np.asarray(getattr(batch, name)) for name in INPUT_NAMES]
    shape = arrays[0].shape
    for name, array in zip(INPUT_NAMES, arrays):
        if array.ndim != 2 or array.shape != shape:
            raise ValueError(f"{name} must be [B, S] like input_ids {shape}, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must hold integers (int32 token data), got {array.dtype}")
    return arrays


SlotFactory = Callable[[Any, int, ProfileSpec], Slot]


class SessionStats:
    """Thread-safe running totals of a session's batches: runs, and the time each waited for a
    free execution context (checkout, including making a new context). Cumulative: a reader
    that wants per-interval numbers subtracts two :meth:`snapshot` results."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._wait_us = 0
        self._max_wait_us = 0

    def record(self, wait_seconds: float) -> None:
        us = max(0, int(round(wait_seconds * 1e6)))
        with self._lock:
            self._runs += 1
            self._wait_us += us
            self._max_wait_us = max(self._max_wait_us, us)

    def snapshot(self) -> dict[str, int]:
        """{"runs", "context_wait_us" (total), "max_context_wait_us"} so far."""
        with self._lock:
            return {"runs": self._runs, "context_wait_us": self._wait_us, "max_context_wait_us": self._max_wait_us}


class WarmUpError(RuntimeError):
    """A profile could not run its opt shape at load time; the message names the profile and shape."""


def _trt_slot_factory(engine: Any, profile_index: int, spec: ProfileSpec) -> Slot:
    trt_engine: tensorrt_lean.ICudaEngine = engine
    context: tensorrt_lean.IExecutionContext | None = trt_engine.create_execution_context()
    if context is None:
        raise RuntimeError(
            f"TensorRT could not create an execution context for profile {profile_index} (usually out of "
            "GPU memory); lower contexts_per_profile / max_contexts_per_profile or the engine's max batch"
        )
    return ExecutionSlot(context, profile_index, spec)


class EngineSession:
    """A deserialized engine plus a pool of execution slots; ``run`` is safe from many threads.

    Args:
        engine: serialized engine bytes, or a path (local, or gs:// when Beam is installed).
        library: "auto", "tensorrt" or "tensorrt_rtx" (see ``trt_handler.engines.library``).
        contexts_per_profile: execution contexts created per profile up front (>= 1).
        max_contexts_per_profile: most contexts per profile when threads contend; further threads
            wait. Defaults to twice ``contexts_per_profile``.
        sidecar: the build's ``<engine>.json`` (library, version, target GPUs), checked before
            deserializing; read next to an engine path (local or gs://) when not given.
        warm_up: run every profile once at its opt shape before returning (:meth:`warm_up`), so
            the first batch meets a ready engine and a profile that cannot run fails here.
        device: the CUDA device the engine lives on (None: the calling thread's current one). CUDA's
            current device is per thread, so every thread that runs the session is switched to it
            (once per thread): one session per GPU lets a worker use all of its GPUs.

    ``library="tensorrt_lean"`` runs engines full TensorRT built with ``--version-compatible``
    on TensorRT's lean runtime (tensorrt-lean-cu12-bindings).

    Raises:
        EngineCompatibilityError: the engine cannot run here (cause and fix in the message).
        WarmUpError: a profile failed its warm-up run.
        SidecarError: the sidecar next to the engine exists but is not valid JSON.
    """

    def __init__(
        self,
        engine: bytes | str,
        *,
        library: str = "auto",
        contexts_per_profile: int = 1,
        max_contexts_per_profile: int | None = None,
        sidecar: Mapping[str, Any] | None = None,
        warm_up: bool = True,
        device: int | None = None,
    ) -> None:
        _check_counts(contexts_per_profile, max_contexts_per_profile)
        self._device = device
        self._thread_device = threading.local()
        self._use_device()
        data = _read_engine(engine)
        if sidecar is None and isinstance(engine, str):
            sidecar = read_sidecar(engine.removeprefix("file://"))
        module = load_library(library)
        trt_engine, runtime, logger = _deserialize(module, data, sidecar)
        self._setup(
            trt_engine,
            keepalive=(runtime, logger),
            contexts_per_profile=contexts_per_profile,
            max_contexts_per_profile=max_contexts_per_profile,
            slot_factory=_trt_slot_factory,
        )
        self.library = library_label(module)
        if warm_up:
            self.warm_up()

    @classmethod
    def from_engine(
        cls,
        engine: TrtEngine,
        *,
        contexts_per_profile: int = 1,
        max_contexts_per_profile: int | None = None,
        slot_factory: SlotFactory | None = None,
        keepalive: Sequence[Any] = (),
        warm_up: bool = False,
    ) -> EngineSession:
        """A session over an already deserialized engine (or a test double of one).

        ``slot_factory(engine, profile_index, spec)`` makes slots; the default creates a TensorRT
        execution context and an :class:`ExecutionSlot`. ``keepalive`` holds objects (runtime,
        logger) that must outlive the engine.
        """
        _check_counts(contexts_per_profile, max_contexts_per_profile)
        self = cls.__new__(cls)
        self._device = None
        self._thread_device = threading.local()
        self._setup(
            engine,
            keepalive=tuple(keepalive),
            contexts_per_profile=contexts_per_profile,
            max_contexts_per_profile=max_contexts_per_profile,
            slot_factory=slot_factory or _trt_slot_factory,
        )
        self.library = "unknown"
        if warm_up:
            self.warm_up()
        return self

    def _setup(
        self,
        engine: Any,
        *,
        keepalive: tuple[Any, ...],
        contexts_per_profile: int,
        max_contexts_per_profile: int | None,
        slot_factory: SlotFactory,
    ) -> None:
        validate_io(engine)
        self._engine: Any = engine
        self._keepalive = keepalive
        self._profiles = read_profiles(engine)
        cap = max_contexts_per_profile if max_contexts_per_profile is not None else 2 * contexts_per_profile
        create_lock = threading.Lock()

        def factory(profile: int) -> Slot:
            with create_lock:  # context creation is serialized; running is not
                return slot_factory(engine, profile, self._profiles[profile])

        self._pool: SlotPool[Slot] = SlotPool(
            factory, lambda slot: slot.close(), len(self._profiles), prefill=contexts_per_profile, cap=cap
        )
        self._stats = SessionStats()
        self._pool.prefill()
        self._closed = False

    def _use_device(self) -> None:
        """Make this session's GPU current for the calling thread (once per thread)."""
        if self._device is None or getattr(self._thread_device, "done", False):
            return
        from trt_handler.engines import cuda_runtime

        cuda_runtime.set_device(self._device)
        self._thread_device.done = True

    @property
    def device(self) -> int | None:
        """The CUDA device index this session runs on (None: whichever is current)."""
        return self._device

    @property
    def profiles(self) -> list[ProfileSpec]:
        """The engine's optimization profiles, in index order."""
        return list(self._profiles)

    @property
    def max_batch(self) -> int:
        """Largest batch any profile takes; :meth:`run` refuses bigger ones (the planner splits)."""
        return max(p.max_batch for p in self._profiles)

    def get_profiles(self) -> list[ProfileSpec]:
        """Same as :attr:`profiles`, as a method: Beam's ``MultiProcessShared`` proxy forwards
        method calls only, so a handler holding the proxy reads the engine's profiles this way."""
        return self.profiles

    def contexts_created(self) -> list[int]:
        """Execution contexts that exist per profile (grows under contention up to the cap)."""
        return self._pool.created()

    def run(self, batch: ModelBatch) -> Logits:
        """Start and end logits, float32 [B, S], for a padded int32 [B, S] batch. Thread-safe.

        Runs exactly this shape, unpadded and unsplit, on the profile :func:`choose_profile`
        picks; raises its ValueError (naming the shape and the profiles) when none accepts it:
        fitting batches to the profiles is the batch planner's job. Each run's wait for a free
        execution context is recorded in :meth:`stats`.
        """
        if self._closed:
            raise RuntimeError("the engine session is closed; create a new EngineSession")
        self._use_device()
        arrays = _batch_arrays(batch)
        b, s = (int(d) for d in arrays[0].shape)
        profile = choose_profile(self._profiles, b, s)
        t0 = time.perf_counter()
        with self._pool.checkout(profile) as slot:
            waited = time.perf_counter() - t0
            start, end = slot.run(arrays)
        self._stats.record(waited)
        return start, end

    def warm_up(self) -> dict[int, float]:
        """Run every profile once at its opt shape; returns {profile index: seconds} and logs them.

        The first run of a context pays one-time costs (kernel loading, lazy allocations); doing
        it here keeps them off the first real batch, and a profile that cannot run fails at load
        with :class:`WarmUpError` naming it, not in the middle of a pipeline. Not counted in
        :meth:`stats`.
        """
        if self._closed:
            raise RuntimeError("the engine session is closed; create a new EngineSession")
        times: dict[int, float] = {}
        for i, spec in enumerate(self._profiles):
            b, s = spec.opt_batch, spec.opt_seq
            arrays = [np.zeros((b, s), np.int32), np.ones((b, s), np.int32), np.zeros((b, s), np.int32)]
            t0 = time.perf_counter()
            try:
                with self._pool.checkout(i) as slot:
                    start, end = slot.run(arrays)
                if start.shape != (b, s) or end.shape != (b, s):
                    raise RuntimeError(f"it returned logits of shapes {start.shape} and {end.shape}")
            except Exception as exc:
                raise WarmUpError(
                    f"warm-up of optimization profile {i} at its opt shape [{b}, {s}] failed: {exc}. The engine "
                    f"cannot serve this profile here; {REBUILD_FIX}"
                ) from exc
            times[i] = time.perf_counter() - t0
            LOGGER.info("warm-up: profile %d [%d, %d] ran in %.1f ms", i, b, s, times[i] * 1e3)
        return times

    def stats(self) -> dict[str, int]:
        """Cumulative {"runs", "context_wait_us", "max_context_wait_us"} of :meth:`run` calls
        (thread-safe; a method so a ``MultiProcessShared`` proxy can call it)."""
        return self._stats.snapshot()

    def gpu_memory(self) -> dict[str, int] | None:
        """{"free_bytes", "total_bytes", "used_bytes"} of the current GPU (cudaMemGetInfo), or None
        without a usable GPU."""
        from trt_handler.engines import cuda_runtime

        return cuda_runtime.memory_info()

    def close(self) -> None:
        """Free every slot (contexts, buffers, streams), then the engine and runtime; idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._pool.close()
        self._engine = None
        self._keepalive = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_counts(contexts_per_profile: int, max_contexts_per_profile: int | None) -> None:
    if contexts_per_profile < 1:
        raise ValueError(f"contexts_per_profile must be >= 1, got {contexts_per_profile}")
    if max_contexts_per_profile is not None and max_contexts_per_profile < contexts_per_profile:
        raise ValueError(
            f"max_contexts_per_profile ({max_contexts_per_profile}) must be >= contexts_per_profile "
            f"({contexts_per_profile})"
        )


if TYPE_CHECKING:  # checked by `make typecheck` against TensorRT's real runtime stubs, never run

    def _runtime_api_conforms(
        context: tensorrt_lean.IExecutionContext, engine: tensorrt_lean.ICudaEngine
    ) -> tuple[TrtContext, TrtEngine]:
        """TensorRT's IExecutionContext and ICudaEngine have every method the protocols above
        (and so ExecutionSlot and EngineSession) call, with compatible signatures."""
        return context, engine
