"""Engine session: run a serialized TensorRT engine on QA model batches, from many threads at once.

Layers, each testable on its own:

* pure Python (CPU tests): :func:`validate_io` checks the engine's tensors against what the QA
  features produce, :func:`read_profiles` reads its optimization profiles back, :func:`plan_batches`
  splits a batch to the profiles' maximum, :class:`SlotPool` hands execution slots to threads;
* CUDA (device tests, no TensorRT needed): :class:`ExecutionSlot` drives any object with TensorRT's
  execution-context methods over a :class:`~trt_handler.engines.cuda_runtime.BufferSet` and its stream;
* TensorRT (needs the library and a GPU): :class:`EngineSession` deserializes the engine, explains
  why it cannot when it cannot (:class:`EngineCompatibilityError`, from the findings of
  :mod:`trt_handler.engines.library`, which owns library loading, the TensorRT logger and the validity
  check), and wires the layers together.

Threading: Beam runs several harness threads per worker process and they share one session. Each
call checks out an :class:`ExecutionSlot` (execution context + stream + buffers) for the profile its
batch needs and returns it afterwards, so threads never share a context. ``contexts_per_profile``
slots per profile are created up front; when all of a profile's slots are busy a thread creates one
more, up to ``max_contexts_per_profile`` (default twice ``contexts_per_profile``), and beyond that it
waits for a slot to come back. The cap bounds GPU memory: every context holds its own activation
memory and buffers sized for its profile's maximum.

``tensorrt``/``tensorrt_rtx`` and ``cuda.bindings`` are imported only when a session is built.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from trt_handler.qa.batching import chunks
from trt_handler.engines.profiles import ProfileSpec, choose_profile
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch
from trt_handler.engines.library import (
    INSTALL_FIX,
    NO_GPU_FIX,
    TensorRTMissingError,
    engine_validity,
    library_name,
    library_version,
    load_trt,
    local_gpu,
    make_logger,
    sidecar_findings,
)

if TYPE_CHECKING:  # cuda_runtime is imported lazily so `import trt_handler.engines.session` needs no CUDA
    from typing import Self

    from trt_handler.engines.cuda_runtime import TensorSpec

__all__ = [
    "EngineCompatibilityError",
    "EngineIOError",
    "EngineSession",
    "ExecutionSlot",
    "SlotPool",
    "load_library",
    "plan_batches",
    "read_profiles",
    "validate_io",
]

LOGGER = logging.getLogger(__name__)

Logits = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]

REBUILD_FIX = (
    "rebuild the engine for this GPU and TensorRT version with `make engine` on a machine like "
    "this one, or pass the ONNX model to the handler so it builds a matching engine automatically."
)
IO_FIX = (
    "build the engine from this project's ONNX export (`make onnx` then `make engine`), whose "
    "inputs are int32 [batch, seq] input_ids/attention_mask/token_type_ids and outputs float32 "
    "[batch, seq] start_logits/end_logits."
)

_FIXES = {"no_gpu": NO_GPU_FIX, "no_tensorrt": INSTALL_FIX, "io": IO_FIX}

# Causes in the order a message reports them: the first is the one to fix first.
_CAUSE_ORDER = ("no_tensorrt", "malformed", "version", "gpu_arch", "driver", "no_gpu", "memory", "io", "unknown")


class EngineCompatibilityError(RuntimeError):
    """The engine cannot run here; the message names the cause and the fix.

    ``cause`` is a short key: ``no_tensorrt``, ``malformed`` (corrupt, truncated or not an engine),
    ``version`` (other TensorRT version), ``gpu_arch`` (built for another GPU), ``driver``,
    ``no_gpu``, ``memory``, ``io`` (wrong inputs/outputs) or ``unknown``.
    """

    def __init__(self, cause: str, detail: str, fix: str | None = None) -> None:
        self.cause = cause
        self.detail = detail
        self.fix = fix if fix is not None else _FIXES.get(cause, REBUILD_FIX)
        super().__init__(f"{detail} Fix: {self.fix}")

    def __reduce__(self) -> tuple[Any, ...]:  # custom __init__ args: keep it picklable for Beam
        return (EngineCompatibilityError, (self.cause, self.detail, self.fix))


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


def plan_batches(profiles: Sequence[ProfileSpec], batch: int, seq: int) -> list[tuple[slice, int]]:
    """Split a [batch, seq] batch into row slices that each fit a profile: (rows, profile index).

    Rows are cut at the largest max_batch among the profiles that take ``seq``; nothing is padded,
    so the last slice may be short. Raises ValueError when no profile takes ``seq`` or a slice.
    """
    if batch <= 0 or seq <= 0:
        raise ValueError(f"batch shape must be positive, got [{batch}, {seq}]")
    fitting = [p for p in profiles if p.min_seq <= seq <= p.max_seq]
    if not fitting:
        ranges = ", ".join(f"{p.min_seq}-{p.max_seq}" for p in profiles)
        raise ValueError(
            f"no optimization profile takes sequence length {seq} (the engine takes {ranges}); "
            "pad to a length the engine was built for, or rebuild it with a larger max_seq"
        )
    step = max(p.max_batch for p in fitting)
    return [(sl, choose_profile(profiles, sl.stop - sl.start, seq)) for sl in chunks(batch, step)]


_S = TypeVar("_S")


class SlotPool(Generic[_S]):
    """Per-profile pool of slots: threads check one out, use it alone, and return it.

    ``prefill`` slots per profile are made by :meth:`prefill`; when none is idle a checkout makes a
    new one until the profile has ``cap``, then waits. A slot whose use raised is closed and not
    reused (its stream may hold half-finished work), which frees room for a fresh one.
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
        self._closed = False

    @property
    def cap(self) -> int:
        return self._cap

    def prefill(self) -> None:
        """Create the up-front slots; on failure close those made and re-raise."""
        made: list[tuple[int, _S]] = []
        try:
            for p in range(len(self._idle)):
                for _ in range(self._prefill):
                    made.append((p, self._factory(p)))
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
                if self._created[profile] < self._cap:
                    self._created[profile] += 1
                    return None
                self._cond.wait()

    def _forget(self, profile: int) -> None:
        with self._cond:
            self._created[profile] -= 1
            self._cond.notify()

    @contextmanager
    def checkout(self, profile: int) -> Iterator[_S]:
        """Use a slot of ``profile`` exclusively for the ``with`` block."""
        if not 0 <= profile < len(self._idle):
            raise IndexError(f"profile {profile} does not exist; the engine has {len(self._idle)}")
        slot = self._take(profile)
        if slot is None:
            try:
                slot = self._factory(profile)
            except BaseException:
                self._forget(profile)
                raise
        try:
            yield slot
        except BaseException:
            self._forget(profile)
            self._close(slot)
            raise
        with self._cond:
            if not self._closed:
                self._idle[profile].append(slot)
                self._cond.notify()
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
        if not context.set_optimization_profile_async(self.profile_index, stream.handle):
            raise RuntimeError(
                f"TensorRT refused optimization profile {self.profile_index} for a new execution context; "
                "see the TensorRT log above (if your TensorRT lets only one context use a profile at a "
                "time, pass contexts_per_profile=1, max_contexts_per_profile=1)"
            )
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


def load_library(library: str) -> Any:
    """The TensorRT module for ``library`` ("auto", "tensorrt", "tensorrt_rtx"), from
    ``trt_lib.load_trt``; raises EngineCompatibilityError (cause ``no_tensorrt``) naming what
    could not be imported."""
    try:
        return load_trt(library)
    except TensorRTMissingError as exc:
        missing = " and ".join(exc.missing)
        raise EngineCompatibilityError(
            "no_tensorrt", f"TensorRT is not installed for library={library!r} ({missing} cannot be imported)."
        ) from exc
    except ImportError as exc:  # the library is there but something it needs is not
        raise EngineCompatibilityError("no_tensorrt", f"TensorRT is not installed for library={library!r} ({exc}).") from exc


def _library_label(module: Any) -> str:
    return f"{getattr(module, '__name__', 'tensorrt')} {getattr(module, '__version__', '?')}"


def _gpu_label() -> str:
    """"NVIDIA H100 80GB HBM3 (sm_90)" or the reason there is no GPU."""
    from trt_handler.engines import cuda_runtime

    reason = cuda_runtime.unavailable_reason()
    if reason is not None:
        return f"no GPU ({reason})"
    try:
        major, minor = cuda_runtime.compute_capability()
        return f"{cuda_runtime.device_name()} (sm_{major}{minor})"
    except cuda_runtime.CudaError as exc:
        return f"a GPU that cannot be queried ({exc})"


def _check_before_loading(
    module: Any, runtime: Any, data: bytes, sidecar: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """(cause, sentence) pairs for why ``data`` cannot be deserialized; [] when no check finds a problem.

    ``trt_lib.engine_validity`` decides where the library can check (TensorRT-RTX); where it cannot
    (TensorRT proper), the build sidecar's view (library version, target GPUs) stands in.
    """
    state, findings = engine_validity(module, runtime, data)
    if state == "SUBOPTIMAL":
        LOGGER.warning("TensorRT says the engine is valid but suboptimal for this GPU; consider rebuilding it here")
    if state != "UNCHECKED":
        return [(f.cause, f.sentence) for f in findings]
    if sidecar:
        mismatches = sidecar_findings(sidecar, library_name(module), library_version(module), local_gpu())
        if mismatches:
            return [(f.cause, f.text) for f in mismatches]
    LOGGER.warning("%s has no engine validity query; deserialization will tell.", _library_label(module))
    return []


# Causes guessed from TensorRT's log lines.
_LOG_CAUSES = (
    ("malformed", ("magictag", "magic tag", "truncated", "corrupt", "not a trt engine", "serialization assertion")),
    ("version", ("library version", "version mismatch", "plan file is not compatible", "serialization version")),
    ("gpu_arch", ("incompatible device", "expecting compute", "compute capability", "unsupported_cc", "sm version", "architecture")),
    ("driver", ("driver is too old", "runtime is too old")),
    ("no_gpu", ("cudaerror 35", "cudaerror 100", "driver version is insufficient", "no cuda-capable device")),
    ("memory", ("out of memory", "cudaerror 2:")),
)


def _causes_from_log(lines: Sequence[str]) -> list[str]:
    text = " ".join(lines).lower()
    return [cause for cause, needles in _LOG_CAUSES if any(n in text for n in needles)]


def _compatibility_error(findings: Sequence[tuple[str, str]], data: bytes, module: Any) -> EngineCompatibilityError:
    """One error naming every cause found, ordered so the first is the one to fix first."""
    causes = sorted({c for c, _ in findings}, key=_CAUSE_ORDER.index) or ["unknown"]
    sentences = "; ".join(dict.fromkeys(s for _, s in findings if s)) or "TensorRT cannot load it here"
    detail = (
        f"cannot load the TensorRT engine ({len(data)} bytes) with {_library_label(module)} on "
        f"{_gpu_label()}: {sentences}."
    )
    fix = " Also: ".join(dict.fromkeys(_FIXES.get(c, REBUILD_FIX) for c in causes))
    return EngineCompatibilityError(causes[0], detail, fix)


def _deserialize(module: Any, data: bytes, sidecar: Mapping[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(engine, runtime, logger) — the runtime and logger must outlive the engine.

    On failure the runtime is released before raising: a traceback that kept it alive would
    destroy it at interpreter exit, when its logger callback can no longer run Python.
    """
    from trt_handler.engines import cuda_runtime

    logger = make_logger(module)
    runtime = module.Runtime(logger)
    engine = None
    findings = _check_before_loading(module, runtime, data, sidecar)
    findings += _log_findings(logger)
    if cuda_runtime.unavailable_reason() is not None:
        findings.append(("no_gpu", ""))  # the message's "on no GPU (...)" already says why
    if not findings:
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            findings = _log_findings(logger) or [("unknown", "deserialize_cuda_engine failed and TensorRT logged no error")]
    if engine is None:
        del runtime
        raise _compatibility_error(findings, data, module)
    return engine, runtime, logger


def _log_findings(logger: Any) -> list[tuple[str, str]]:
    """Findings from the TensorRT errors logged so far (then forgotten): causes guessed from the text."""
    errors: list[str] = list(getattr(logger, "errors", []))
    if not errors:
        return []
    logger.errors.clear()
    said = "TensorRT says: " + " | ".join(e.strip().rstrip(".") for e in errors[-3:])
    return [(cause, said) for cause in _causes_from_log(errors) or ["unknown"]]


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


def _read_sidecar(path: str) -> dict[str, Any] | None:
    """The build sidecar ``<path>.json`` next to a local engine, or None (absent or unreadable)."""
    try:
        with open(path.removeprefix("file://") + ".json", encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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


def _trt_slot_factory(engine: Any, profile_index: int, spec: ProfileSpec) -> Slot:
    context = engine.create_execution_context()
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
            deserializing; read next to a local engine path when not given.

    Raises:
        EngineCompatibilityError: the engine cannot run here (cause and fix in the message).
    """

    def __init__(
        self,
        engine: bytes | str,
        *,
        library: str = "auto",
        contexts_per_profile: int = 1,
        max_contexts_per_profile: int | None = None,
        sidecar: Mapping[str, Any] | None = None,
    ) -> None:
        _check_counts(contexts_per_profile, max_contexts_per_profile)
        data = _read_engine(engine)
        if sidecar is None and isinstance(engine, str):
            sidecar = _read_sidecar(engine)
        module = load_library(library)
        trt_engine, runtime, logger = _deserialize(module, data, sidecar)
        self._setup(
            trt_engine,
            keepalive=(runtime, logger),
            contexts_per_profile=contexts_per_profile,
            max_contexts_per_profile=max_contexts_per_profile,
            slot_factory=_trt_slot_factory,
        )
        self.library = _library_label(module)

    @classmethod
    def from_engine(
        cls,
        engine: TrtEngine,
        *,
        contexts_per_profile: int = 1,
        max_contexts_per_profile: int | None = None,
        slot_factory: SlotFactory | None = None,
        keepalive: Sequence[Any] = (),
    ) -> EngineSession:
        """A session over an already deserialized engine (or a test double of one).

        ``slot_factory(engine, profile_index, spec)`` makes slots; the default creates a TensorRT
        execution context and an :class:`ExecutionSlot`. ``keepalive`` holds objects (runtime,
        logger) that must outlive the engine.
        """
        _check_counts(contexts_per_profile, max_contexts_per_profile)
        self = cls.__new__(cls)
        self._setup(
            engine,
            keepalive=tuple(keepalive),
            contexts_per_profile=contexts_per_profile,
            max_contexts_per_profile=max_contexts_per_profile,
            slot_factory=slot_factory or _trt_slot_factory,
        )
        self.library = "unknown"
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
        self._pool.prefill()
        self._closed = False

    @property
    def profiles(self) -> list[ProfileSpec]:
        """The engine's optimization profiles, in index order."""
        return list(self._profiles)

    @property
    def max_batch(self) -> int:
        """Largest batch any profile takes; bigger batches are split by :meth:`run`."""
        return max(p.max_batch for p in self._profiles)

    def get_profiles(self) -> list[ProfileSpec]:
        """Same as :attr:`profiles`, as a method: Beam's ``MultiProcessShared`` proxy forwards
        method calls only, so a handler holding the proxy reads the engine's profiles this way."""
        return self.profiles

    def contexts_created(self) -> list[int]:
        """Execution contexts that exist per profile (grows under contention up to the cap)."""
        return self._pool.created()

    def run(self, batch: ModelBatch) -> Logits:
        """Start and end logits, float32 [B, S], for a padded int32 [B, S] batch.

        Batches over a profile's max batch are split and run slice by slice (each slice one
        synchronize); smaller ones run at their own shape, unpadded. Thread-safe.
        """
        if self._closed:
            raise RuntimeError("the engine session is closed; create a new EngineSession")
        arrays = _batch_arrays(batch)
        b, s = arrays[0].shape
        plan = plan_batches(self._profiles, int(b), int(s))
        start = np.empty((b, s), dtype=np.float32)
        end = np.empty((b, s), dtype=np.float32)
        for rows, profile in plan:
            with self._pool.checkout(profile) as slot:
                start[rows], end[rows] = slot.run([a[rows] for a in arrays])
        return start, end

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
