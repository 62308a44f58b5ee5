"""Engine session: run a serialized TensorRT engine on QA model batches, from many threads at once.

``run`` runs exactly the [B, S] it is given on the profile it is given; fitting batches to profiles, and
choosing them, is ``trt_handler.planning``'s job.
Each call checks out an :class:`ExecutionSlot` (context + stream + buffers) of its profile from a
:class:`SlotPool`, so threads never share a context. TensorRT and ``cuda.bindings`` load only with a session.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

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
from trt_handler.engines.sidecar import read_sidecar
from trt_handler.planning import ProfileSpec
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch

if TYPE_CHECKING:
    from typing import Self

    import tensorrt_lean

__all__ = [
    "EngineCompatibilityError",
    "EngineIOError",
    "EngineSession",
    "ExecutionSlot",
    "ProfileBusyError",
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


class Slot(Protocol):
    """What the pool hands out: something that runs one chunk that fits its profile."""

    def run(self, arrays: Sequence[npt.NDArray[Any]]) -> Logits: ...

    def close(self) -> None: ...


def _enum_name(value: Any) -> str:
    """``TensorIOMode.INPUT`` -> "INPUT", ``DataType.INT32`` -> "INT32", for TensorRT or fake enums."""
    return str(getattr(value, "name", value)).rsplit(".", 1)[-1].upper()


def _dims(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


def validate_io(engine: TrtEngine) -> None:
    """Raise EngineIOError listing every way the engine's tensors differ from the QA model's:
    inputs ``INPUT_NAMES`` int32 rank 2, outputs ``OUTPUT_NAMES`` float32 rank 2, nothing else."""
    io: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        mode, dtype = _enum_name(engine.get_tensor_mode(name)), _enum_name(engine.get_tensor_dtype(name))
        io[name] = (mode, dtype, _dims(engine.get_tensor_shape(name)))
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
    problems += [f"unexpected {m.lower()} {n!r}" for n, (m, _, _) in io.items() if n not in INPUT_NAMES + OUTPUT_NAMES]
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
    """The engine's optimization profiles, in index order; EngineIOError when the three inputs
    disagree within a profile (one [B, S] batch sets the same shape on all of them)."""
    out: list[ProfileSpec] = []
    for p in range(max(1, int(engine.num_optimization_profiles))):
        first = _input_ranges(engine, INPUT_NAMES[0], p)
        for name in INPUT_NAMES[1:]:
            r = _input_ranges(engine, name, p)
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


class ProfileBusyError(RuntimeError):
    """TensorRT refused to bind another execution context to a profile one already uses (some
    versions allow one per profile at a time); reaches a caller only when the profile has no slot."""


class SlotPool:
    """Per-profile pool of slots: a thread checks one out, uses it alone, and returns it.

    ``prefill`` slots per profile up front, more on contention up to ``cap``, then checkouts wait.
    A slot whose use raised is closed, not reused. On :class:`ProfileBusyError` the profile stops
    growing at the slots it has (logged once) and threads wait; with no slot at all it is raised.
    """

    def __init__(
        self,
        factory: Callable[[int], Slot],
        num_profiles: int,
        *,
        prefill: int = 1,
        cap: int = 2,
    ) -> None:
        self._factory = factory
        self._cond = threading.Condition()
        self._idle: list[list[Slot]] = [[] for _ in range(num_profiles)]
        self._created = [0] * num_profiles
        self._limit = [cap] * num_profiles  # lowered for a profile TensorRT will not share
        self._closed = False
        try:
            for p in range(num_profiles):
                for k in range(prefill):
                    try:
                        self._idle[p].append(factory(p))
                    except ProfileBusyError as exc:
                        if k == 0:
                            raise
                        self._busy(p, k, exc)
                        break
                    self._created[p] += 1
        except BaseException:
            self.close()  # closes the slots made so far
            raise

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

    def _forget(self, profile: int) -> int:
        """Give back a reserved or failed slot's room; returns the slots the profile still has."""
        with self._cond:
            self._created[profile] -= 1
            self._cond.notify_all()  # waiters of every profile share the condition
            return self._created[profile]

    def _acquire(self, profile: int) -> Slot:
        """An idle slot, or a new one while the profile has room; waits while it is full."""
        idle = self._idle[profile]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(idle) or self._created[profile] < self._limit[profile])
                if self._closed:
                    raise RuntimeError("the engine session is closed; create a new EngineSession")
                if idle:
                    return idle.pop()
                self._created[profile] += 1  # room reserved; the slot is made outside the lock
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

    @contextlib.contextmanager
    def checkout(self, profile: int) -> Iterator[Slot]:
        """Use a slot of ``profile`` exclusively for the ``with`` block."""
        slot = self._acquire(profile)
        try:
            yield slot
        except BaseException:
            self._forget(profile)
            slot.close()
            raise
        with self._cond:
            if not self._closed:
                self._idle[profile].append(slot)
                self._cond.notify_all()  # waiters of every profile share the condition
                return
        slot.close()

    def close(self) -> None:
        """Close idle slots now and checked-out ones when they come back; wake waiting threads."""
        with self._cond:
            self._closed = True
            idle = [slot for slots in self._idle for slot in slots]
            for slots in self._idle:
                slots.clear()
            self._cond.notify_all()
        for slot in idle:
            slot.close()


def select_profile(context: TrtContext, profile_index: int, stream_handle: int) -> None:
    """Bind ``context`` to ``profile_index`` on the stream; raise :class:`ProfileBusyError` when
    TensorRT refuses (returns False or raises), which the pool answers by waiting."""
    refused = f"TensorRT refused optimization profile {profile_index} for a new execution context"
    try:
        ok = context.set_optimization_profile_async(profile_index, stream_handle)
    except Exception as exc:  # TensorRT raises its own error types
        raise ProfileBusyError(f"{refused} ({exc})") from exc
    if not ok:
        raise ProfileBusyError(f"{refused}; see the TensorRT log")


class ExecutionSlot:
    """One execution context bound to one profile, with its own stream and buffers for the profile max.

    Profile and tensor addresses are set once, here; a run queues input shapes, H2D copies,
    ``execute_async_v3`` and D2H copies on the one stream and synchronizes once.
    """

    def __init__(self, context: TrtContext, profile_index: int, spec: ProfileSpec) -> None:
        from trt_handler.engines.cuda_runtime import BufferSet, TensorSpec

        self._context: TrtContext | None = context
        self.profile_index = profile_index
        self.spec = spec
        shape = (spec.max_batch, spec.max_seq)
        self.buffers = BufferSet(
            [TensorSpec(n, np.dtype(np.int32), shape) for n in INPUT_NAMES]
            + [TensorSpec(n, np.dtype(np.float32), shape) for n in OUTPUT_NAMES]
        )
        try:
            select_profile(context, profile_index, self.buffers.stream.handle)
            for name in INPUT_NAMES + OUTPUT_NAMES:
                if not context.set_tensor_address(name, self.buffers.device_ptr(name)):
                    raise RuntimeError(f"TensorRT refused the device address of tensor {name!r}; see the log above")
            self.buffers.stream.synchronize()  # the profile switch may have queued copies
        except BaseException:
            self.close()
            raise

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
                raise RuntimeError(
                    f"TensorRT refused input shape [{b}, {s}] for {name!r} in profile {self.profile_index}"
                )
            self.buffers.upload(name, array)
        if not context.execute_async_v3(self.buffers.stream.handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for shape [{b}, {s}]; see the TensorRT log above")
        hosts = []
        for name in OUTPUT_NAMES:
            shape = _dims(context.get_tensor_shape(name))
            if shape != (b, s):
                raise RuntimeError(f"output {name!r} has shape {shape} for input [{b}, {s}]; expected [{b}, {s}]")
            hosts.append(self.buffers.download(name, (b, s)))
        self.buffers.stream.synchronize()
        return (np.array(hosts[0], dtype=np.float32), np.array(hosts[1], dtype=np.float32))

    def close(self) -> None:
        """Wait for queued work, drop the context (it points at the buffers), then free buffers and stream."""
        with contextlib.suppress(Exception):  # a failed (or closed) stream still gets freed below
            self.buffers.stream.synchronize()
        self._context = None
        self.buffers.close()


def _deserialize(module: Any, data: bytes, sidecar: Mapping[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(engine, runtime, logger): the runtime and logger must outlive the engine.

    On failure the runtime is released before raising (kept alive by a traceback, it would die at
    interpreter exit, when its logger can no longer run Python). Without a GPU a Runtime is made only
    where it can check an engine (TensorRT-RTX): the lean runtime's, made without CUDA, crashes when freed.
    """
    from trt_handler.engines import cuda_runtime

    logger = make_logger(module)
    # the message's "on no GPU (...)" says why
    no_gpu = [("no_gpu", "")] if cuda_runtime.unavailable_reason() is not None else []
    if no_gpu and getattr(module.Runtime, "get_engine_validity", None) is None:
        raise compatibility_error(diagnose(module, None, data, sidecar) + no_gpu, data, module)
    runtime: tensorrt_lean.Runtime = module.Runtime(logger)
    engine: tensorrt_lean.ICudaEngine | None = None
    findings = diagnose(module, runtime, data, sidecar) + findings_from_log(logger) + no_gpu
    if not findings:
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            unknown = ("unknown", "deserialize_cuda_engine failed and TensorRT logged no error")
            findings = findings_from_log(logger) or [unknown]
    if engine is None:
        del runtime
        raise compatibility_error(findings, data, module)
    return engine, runtime, logger


def _read_engine(engine: bytes | bytearray | memoryview | str) -> bytes:
    """Engine bytes from bytes, a local path, or (through Beam's FileSystems) a gs:// path."""
    if isinstance(engine, (bytes, bytearray, memoryview)):
        return bytes(engine)
    path = str(engine).removeprefix("file://")
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as f:
            return bytes(f.read())
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"engine file {path} does not exist; build one with `make engine`, or pass the ONNX model "
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

    ``engine``: serialized bytes or a path (local or gs://), checked against ``sidecar`` (default: the
    ``<engine>.json`` next to a path) before deserializing. ``contexts_per_profile`` slots per profile exist
    up front, up to ``max_contexts_per_profile`` (default twice that) under contention. ``device``: the CUDA
    device (None: the current one), made current once in each thread that runs the session.
    Raises EngineCompatibilityError (cause and fix in the message), WarmUpError, SidecarError.
    """

    _device: int | None = None
    library = "unknown"

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
        self._device = device
        self._thread_device = threading.local()
        self._use_device()
        data = _read_engine(engine)
        if sidecar is None and isinstance(engine, str):
            sidecar = read_sidecar(engine.removeprefix("file://"))
        module = load_library(library)
        self.library = library_label(module)
        trt_engine, runtime, logger = _deserialize(module, data, sidecar)
        self._setup(trt_engine, (runtime, logger), _trt_slot_factory, contexts_per_profile, max_contexts_per_profile)
        if warm_up:
            self.warm_up()

    @classmethod
    def from_engine(
        cls,
        engine: TrtEngine,
        *,
        contexts_per_profile: int = 1,
        max_contexts_per_profile: int | None = None,
        slot_factory: SlotFactory = _trt_slot_factory,
        warm_up: bool = False,
    ) -> EngineSession:
        """A session over an already deserialized engine (or a test double of one); slots come from
        ``slot_factory(engine, profile_index, spec)``."""
        self = cls.__new__(cls)
        self._setup(engine, (), slot_factory, contexts_per_profile, max_contexts_per_profile)
        if warm_up:
            self.warm_up()
        return self

    def _setup(
        self,
        engine: Any,
        keepalive: tuple[Any, ...],
        slot_factory: SlotFactory,
        contexts_per_profile: int,
        max_contexts_per_profile: int | None,
    ) -> None:
        if contexts_per_profile < 1:
            raise ValueError(f"contexts_per_profile must be >= 1, got {contexts_per_profile}")
        cap = 2 * contexts_per_profile if max_contexts_per_profile is None else max_contexts_per_profile
        if cap < contexts_per_profile:
            raise ValueError(
                f"max_contexts_per_profile ({cap}) must be >= contexts_per_profile ({contexts_per_profile})"
            )
        validate_io(engine)
        self._engine: Any = engine
        self._keepalive = keepalive  # the runtime and logger must outlive the engine
        self._profiles = read_profiles(engine)
        create_lock = threading.Lock()

        def factory(profile: int) -> Slot:
            with create_lock:  # context creation is serialized; running is not
                return slot_factory(engine, profile, self._profiles[profile])

        self._pool = SlotPool(factory, len(self._profiles), prefill=contexts_per_profile, cap=cap)
        self._stats_lock = threading.Lock()
        self._stats = {"runs": 0, "context_wait_us": 0, "max_context_wait_us": 0}
        self._closed = False

    def _use_device(self) -> None:
        """Make this session's GPU current for the calling thread (once per thread)."""
        if self._device is None or getattr(self._thread_device, "done", False):
            return
        from trt_handler.engines import cuda_runtime

        cuda_runtime.set_device(self._device)
        self._thread_device.done = True

    @property
    def profiles(self) -> list[ProfileSpec]:
        """The engine's optimization profiles, in index order."""
        return list(self._profiles)

    @property
    def max_batch(self) -> int:
        """Largest batch any profile takes; :meth:`run` refuses bigger ones (the planner splits)."""
        return max(p.max_batch for p in self._profiles)

    def get_profiles(self) -> list[ProfileSpec]:
        """:attr:`profiles` as a method, for Beam's ``MultiProcessShared`` proxy (it forwards only methods)."""
        return self.profiles

    def run(self, batch: ModelBatch, profile: int) -> Logits:
        """Start and end logits, float32 [B, S], for a padded int32 [B, S] batch. Thread-safe.

        Runs exactly this shape on ``profile``, the one the planner chose (``planning.plan_model_calls``);
        ValueError, naming the shape and the profile's ranges, when that profile does not accept it. The
        wait for a free execution context is recorded in :meth:`stats`.
        """
        self._use_device()
        arrays = _batch_arrays(batch)
        b, s = (int(d) for d in arrays[0].shape)
        if not 0 <= profile < len(self._profiles) or not self._profiles[profile].accepts(b, s):
            ranges = ", ".join(f"#{i}: batch {p.min_batch}-{p.max_batch} x seq {p.min_seq}-{p.max_seq}"
                               for i, p in enumerate(self._profiles))
            raise ValueError(f"optimization profile {profile} does not accept shape [{b}, {s}]; profiles: {ranges}")
        t0 = time.perf_counter()
        with self._pool.checkout(profile) as slot:
            waited_us = round((time.perf_counter() - t0) * 1e6)
            start, end = slot.run(arrays)
        with self._stats_lock:
            self._stats["runs"] += 1
            self._stats["context_wait_us"] += waited_us
            self._stats["max_context_wait_us"] = max(self._stats["max_context_wait_us"], waited_us)
        return start, end

    def warm_up(self) -> dict[int, float]:
        """Run every profile once at its opt shape (off the first real batch; not in :meth:`stats`);
        returns {profile index: seconds}. A profile that cannot run raises :class:`WarmUpError`."""
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
        """Cumulative {"runs", "context_wait_us", "max_context_wait_us"} of :meth:`run` calls (thread-safe;
        a method so a ``MultiProcessShared`` proxy can call it; subtract two for an interval)."""
        with self._stats_lock:
            return dict(self._stats)

    def gpu_memory(self) -> dict[str, int] | None:
        """{"free_bytes", "total_bytes", "used_bytes"} of the current GPU, or None without a usable GPU."""
        from trt_handler.engines import cuda_runtime

        return cuda_runtime.memory_info()

    def close(self) -> None:
        """Free every slot (contexts, buffers, streams), then the engine and runtime; idempotent."""
        self._closed = True
        self._pool.close()
        self._engine = None
        self._keepalive = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # checked by `make typecheck` against TensorRT's real runtime stubs, never run

    def _runtime_api_conforms(
        context: tensorrt_lean.IExecutionContext, engine: tensorrt_lean.ICudaEngine
    ) -> tuple[TrtContext, TrtEngine]:
        """TensorRT's IExecutionContext and ICudaEngine have every method the protocols above call."""
        return context, engine
