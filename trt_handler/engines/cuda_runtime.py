"""CUDA memory layer for the engine session, on cuda-python's runtime API (``cuda.bindings.runtime``).

Why this module exists: TensorRT only takes device pointers and a stream handle, so something has
to own the page-locked host buffers, the device buffers and the streams, copy between them
asynchronously and free them exactly once. Each class here owns one resource the way Polygraphy's
runner does: ``close()`` frees it (idempotent), ``with`` closes it, and a leaked object warns with
a ``ResourceWarning`` from its finalizer and frees what it can.

Only numpy is imported at module level; ``cuda.bindings`` is imported on first use, so this module
imports on machines without cuda-python (job submission, CPU tests) and says clearly what is
missing when a GPU call is made there.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are never evaluated at runtime here
    from typing import Self

__all__ = [
    "BufferSet",
    "CudaError",
    "CudaUnavailableError",
    "DeviceBuffer",
    "OwnedResource",
    "PinnedBuffer",
    "Stream",
    "TensorSpec",
    "check",
    "compute_capability",
    "copy_device_to_device_async",
    "copy_device_to_host_async",
    "copy_host_to_device_async",
    "cudart",
    "device_count",
    "device_name",
    "driver_version",
    "memory_info",
    "set_device",
    "unavailable_reason",
]

_INSTALL_HINT = "install cuda-python (pip install 'cuda-python>=12.6', or this package's [gpu] extra)"

# Error names that mean "there is no usable GPU here" rather than "this call was wrong".
_UNAVAILABLE_ERRORS = frozenset(
    {
        "cudaErrorNoDevice",
        "cudaErrorInsufficientDriver",
        "cudaErrorStubLibrary",
        "cudaErrorCallRequiresNewerDriver",
        "cudaErrorSystemDriverMismatch",
        "cudaErrorSystemNotReady",
        "cudaErrorCompatNotSupportedOnDevice",
        "cudaErrorDevicesUnavailable",
        "cudaErrorInitializationError",
    }
)

_cudart_module: Any = None
_cudart_lock = threading.Lock()


class CudaError(RuntimeError):
    """A CUDA runtime call failed; ``name`` is the cudaError_t name (e.g. ``cudaErrorMemoryAllocation``)."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class CudaUnavailableError(CudaError):
    """No usable CUDA here: cuda-python missing, no NVIDIA driver, or no visible GPU."""


def cudart() -> Any:
    """The ``cuda.bindings.runtime`` module, imported on first use.

    Raises CudaUnavailableError naming the fix when cuda-python is not installed.
    """
    global _cudart_module
    if _cudart_module is not None:
        return _cudart_module
    with _cudart_lock:
        if _cudart_module is None:
            try:
                _cudart_module = importlib.import_module("cuda.bindings.runtime")
            except ImportError:
                try:  # cuda-python < 12.6 exposed the same API as cuda.cudart
                    _cudart_module = importlib.import_module("cuda.cudart")
                except ImportError as exc:
                    raise CudaUnavailableError(f"cuda-python is not installed ({exc}); {_INSTALL_HINT}") from exc
    return _cudart_module


def _error_name(err: Any) -> tuple[str, str]:
    """(name, description) of a cudaError_t, falling back to its repr if the lookup fails."""
    rt = cudart()
    try:
        name = rt.cudaGetErrorName(err)[1]
        text = rt.cudaGetErrorString(err)[1]
        return (
            name.decode() if isinstance(name, bytes) else str(name),
            text.decode() if isinstance(text, bytes) else str(text),
        )
    except Exception:  # noqa: BLE001 - a lookup failure must not hide the original error
        return (getattr(err, "name", str(err)), "")


def check(result: Any, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python result ``(err, *values)``; raise CudaError if ``err`` is not success.

    Returns None for calls with no outputs, the value for one output, a tuple for several.
    Errors that mean "no GPU or driver here" raise CudaUnavailableError.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        name, text = _error_name(err)
        cls = CudaUnavailableError if name in _UNAVAILABLE_ERRORS else CudaError
        hint = " (no NVIDIA GPU or driver is usable here)" if cls is CudaUnavailableError else ""
        raise cls(f"{what} failed: {name}: {text}{hint}", name)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return values


def unavailable_reason() -> str | None:
    """None when CUDA is usable here, else a sentence saying exactly what is missing."""
    try:
        rt = cudart()
    except CudaUnavailableError as exc:
        return str(exc)
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0:
        name, text = _error_name(err)
        if name == "cudaErrorInsufficientDriver":
            return (
                f"no usable NVIDIA driver ({name}: {text}); this machine has no NVIDIA driver, or one "
                "older than this cuda-python needs (cuda-bindings 13 needs driver >= 580, 12.x needs >= 525)"
            )
        if name == "cudaErrorNoDevice":
            return f"no CUDA GPU is visible ({name}: {text}); check CUDA_VISIBLE_DEVICES and the worker's accelerator"
        return f"CUDA cannot start ({name}: {text})"
    if int(count) == 0:
        return "no CUDA GPU is visible (cudaGetDeviceCount returned 0); check CUDA_VISIBLE_DEVICES"
    return None


def device_count() -> int:
    """Number of visible CUDA GPUs; 0 when cuda-python, the driver or a GPU is missing (never raises)."""
    if unavailable_reason() is not None:
        return 0
    return int(check(cudart().cudaGetDeviceCount(), "cudaGetDeviceCount"))


def _require_device(index: int) -> Any:
    reason = unavailable_reason()
    if reason is not None:
        raise CudaUnavailableError(reason)
    count = device_count()
    if not 0 <= index < count:
        raise CudaUnavailableError(f"CUDA device {index} does not exist; {count} visible")
    return cudart()


def device_name(index: int = 0) -> str:
    """Marketing name of GPU ``index`` (e.g. "NVIDIA H100 80GB HBM3"); raises CudaUnavailableError without one."""
    rt = _require_device(index)
    props = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    raw = props.name
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
    return str(raw)


def compute_capability(index: int = 0) -> tuple[int, int]:
    """(major, minor) of GPU ``index``, e.g. (9, 0) for H100; raises CudaUnavailableError without one."""
    rt = _require_device(index)
    attr = rt.cudaDeviceAttr
    major = check(rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, index), "cudaDeviceGetAttribute")
    minor = check(rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, index), "cudaDeviceGetAttribute")
    return (int(major), int(minor))


def memory_info() -> dict[str, int] | None:
    """GPU memory of the current device as {"free_bytes", "total_bytes", "used_bytes"}
    (``cudaMemGetInfo``); None when cuda-python, the driver or a GPU is missing (never raises then)."""
    if unavailable_reason() is not None:
        return None
    free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return {"free_bytes": int(free), "total_bytes": int(total), "used_bytes": int(total) - int(free)}


def driver_version() -> int | None:
    """CUDA version the driver supports (e.g. 13000), or None without cuda-python/driver."""
    try:
        rt = cudart()
    except CudaUnavailableError:
        return None
    err, version = rt.cudaDriverGetVersion()
    if int(err) != 0 or int(version) == 0:
        return None
    return int(version)


def set_device(index: int) -> None:
    """Make GPU ``index`` current for the calling thread (CUDA's current device is per thread)."""
    rt = _require_device(index)
    check(rt.cudaSetDevice(index), "cudaSetDevice")


_O = TypeVar("_O", bound="OwnedResource")


class OwnedResource:
    """Base for objects that own a CUDA resource: ``close()`` frees it once; a leak warns.

    Subclasses set ``self._closed = False`` only after the resource exists, so a constructor
    that fails half-way never makes the finalizer free something that was never allocated.
    """

    _closed: bool = True

    def _release(self) -> None:
        raise NotImplementedError(type(self))

    def _describe(self) -> str:
        return type(self).__name__

    @property
    def closed(self) -> bool:
        return self._closed

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self._describe()} is closed; create a new one")

    def close(self) -> None:
        """Free the resource; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:
            warnings.warn(
                f"{self._describe()} was not closed; call close() or use it in a 'with' block "
                "so its CUDA memory is freed when you decide, not when the garbage collector runs",
                ResourceWarning,
                stacklevel=2,
            )
            with contextlib.suppress(Exception):  # finalizers must not raise (CUDA may be unloading)
                self.close()


class _Memory(OwnedResource):
    """``nbytes`` of CUDA-allocated memory at address ``ptr``; subclasses allocate and free it."""

    _nbytes: int
    _ptr: int

    @staticmethod
    def _checked_nbytes(nbytes: int) -> int:
        n = int(nbytes)
        if n <= 0:
            raise ValueError(f"buffer size must be a positive number of bytes, got {nbytes}")
        return n

    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def _describe(self) -> str:
        return f"{type(self).__name__}({self._nbytes} bytes)"


class PinnedBuffer(_Memory):
    """Page-locked host memory (cudaMallocHost) of ``nbytes``, seen through numpy views.

    Page-locked memory is what makes cudaMemcpyAsync truly asynchronous; pageable memory makes the
    driver stage the copy and block. Views returned by :meth:`view` alias this memory and must not
    be used after :meth:`close`.
    """

    def __init__(self, nbytes: int) -> None:
        self._nbytes = self._checked_nbytes(nbytes)
        self._ptr = int(check(cudart().cudaMallocHost(self._nbytes), f"cudaMallocHost({self._nbytes})"))
        self._closed = False
        raw = (ctypes.c_uint8 * self._nbytes).from_address(self._ptr)
        self._bytes: npt.NDArray[np.uint8] = np.ctypeslib.as_array(raw)

    def view(self, dtype: npt.DTypeLike, shape: Sequence[int]) -> npt.NDArray[Any]:
        """A C-contiguous ``dtype`` array of ``shape`` over the start of the buffer (no copy)."""
        self._require_open()
        dt = np.dtype(dtype)
        dims = tuple(int(d) for d in shape)
        need = math.prod(dims) * dt.itemsize
        if need > self._nbytes:
            raise ValueError(f"a {dt} view of shape {dims} needs {need} bytes; this pinned buffer holds {self._nbytes}")
        return self._bytes[:need].view(dt).reshape(dims)

    def _release(self) -> None:
        self._bytes = np.empty(0, dtype=np.uint8)
        check(cudart().cudaFreeHost(self._ptr), "cudaFreeHost")


class DeviceBuffer(_Memory):
    """Device memory (cudaMalloc) of ``nbytes`` on the calling thread's current GPU."""

    def __init__(self, nbytes: int) -> None:
        self._nbytes = self._checked_nbytes(nbytes)
        self._ptr = int(check(cudart().cudaMalloc(self._nbytes), f"cudaMalloc({self._nbytes})"))
        self._closed = False

    def _release(self) -> None:
        check(cudart().cudaFree(self._ptr), "cudaFree")


class Stream(OwnedResource):
    """A non-blocking CUDA stream: work on it never waits for the legacy default stream."""

    def __init__(self) -> None:
        rt = cudart()
        flags = rt.cudaStreamNonBlocking
        self._stream: Any = check(rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        self._closed = False

    @property
    def handle(self) -> int:
        """The cudaStream_t as an int, the form TensorRT's ``execute_async_v3`` takes."""
        return int(self._stream)

    @property
    def raw(self) -> Any:
        """The cuda-python ``cudaStream_t`` object."""
        return self._stream

    def synchronize(self) -> None:
        """Block until all work queued on this stream has finished (raises what the work raised)."""
        self._require_open()
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def _release(self) -> None:
        check(cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")

    def _describe(self) -> str:
        return "Stream"


def _contiguous(array: npt.NDArray[Any], role: str) -> None:
    if not array.flags.c_contiguous:
        raise ValueError(f"{role} array must be C-contiguous for a raw copy; pass np.ascontiguousarray(a)")


_COPY_KINDS = {"H2D": "cudaMemcpyHostToDevice", "D2H": "cudaMemcpyDeviceToHost", "D2D": "cudaMemcpyDeviceToDevice"}


def _copy_async(dst: int, src: int, nbytes: int, kind: str, stream: Stream) -> None:
    """Queue cudaMemcpyAsync of ``nbytes`` from address ``src`` to ``dst`` on ``stream``; ``kind``
    is a key of ``_COPY_KINDS`` ("H2D", "D2H", "D2D")."""
    rt = cudart()
    direction = getattr(rt.cudaMemcpyKind, _COPY_KINDS[kind])
    check(rt.cudaMemcpyAsync(dst, src, int(nbytes), direction, stream.raw), f"cudaMemcpyAsync({kind})")


def copy_host_to_device_async(dst_ptr: int, src: npt.NDArray[Any], stream: Stream) -> None:
    """Queue a copy of ``src`` (all its bytes) to device address ``dst_ptr`` on ``stream``.

    ``src`` should be page-locked (a :class:`PinnedBuffer` view) for the copy to be asynchronous,
    and must stay alive and unchanged until the stream is synchronized.
    """
    _contiguous(src, "source")
    _copy_async(dst_ptr, src.ctypes.data, src.nbytes, "H2D", stream)


def copy_device_to_host_async(dst: npt.NDArray[Any], src_ptr: int, stream: Stream) -> None:
    """Queue a copy of ``dst.nbytes`` bytes from device address ``src_ptr`` into ``dst`` on ``stream``."""
    _contiguous(dst, "destination")
    _copy_async(dst.ctypes.data, src_ptr, dst.nbytes, "D2H", stream)


def copy_device_to_device_async(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    """Queue a device-to-device copy of ``nbytes`` on ``stream``."""
    _copy_async(dst_ptr, src_ptr, nbytes, "D2D", stream)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a :class:`BufferSet`: its dtype and the largest shape it must hold."""

    name: str
    dtype: np.dtype[Any]
    max_shape: tuple[int, ...]
    is_input: bool

    @property
    def max_nbytes(self) -> int:
        return math.prod(self.max_shape) * self.dtype.itemsize


class BufferSet(OwnedResource):
    """Pinned host + device buffers for named tensors, sized once for their maximum shape, and a stream.

    Why: allocating per batch costs more than a BERT forward pass on small batches, so one set is
    sized for an optimization profile's maximum and reused for every smaller [B, S]; the device
    pointers never change, which lets TensorRT tensor addresses be set once. Not thread-safe: one
    thread uses a set at a time (the engine session's pool guarantees it).
    """

    def __init__(self, specs: Sequence[TensorSpec], stream: Stream | None = None) -> None:
        if not specs:
            raise ValueError("a BufferSet needs at least one TensorSpec")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"tensor names must be unique, got {names}")
        self._specs: dict[str, TensorSpec] = {s.name: s for s in specs}
        self._owned: list[OwnedResource] = []
        self._pinned: dict[str, PinnedBuffer] = {}
        self._device: dict[str, DeviceBuffer] = {}
        try:
            self._stream = stream if stream is not None else self._own(Stream())
            for spec in specs:
                self._pinned[spec.name] = self._own(PinnedBuffer(spec.max_nbytes))
                self._device[spec.name] = self._own(DeviceBuffer(spec.max_nbytes))
        except BaseException:
            with contextlib.suppress(Exception):  # the allocation error is the one to report
                self._free_owned()
            raise
        self._closed = False

    def _own(self, resource: _O) -> _O:
        self._owned.append(resource)
        return resource

    def _free_owned(self) -> None:
        errors: list[BaseException] = []
        for resource in reversed(self._owned):
            try:
                resource.close()
            except Exception as exc:  # noqa: BLE001 - free the rest, report the first failure
                errors.append(exc)
        self._owned.clear()
        if errors:
            raise errors[0]

    @property
    def stream(self) -> Stream:
        return self._stream

    @property
    def specs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def device_ptr(self, name: str) -> int:
        """Device address of tensor ``name``'s buffer (fixed for the life of the set)."""
        return self._device[self._spec(name).name].ptr

    def _spec(self, name: str) -> TensorSpec:
        self._require_open()
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"no buffer named {name!r}; this set holds {sorted(self._specs)}") from None

    def _host_view(self, name: str, shape: Sequence[int]) -> npt.NDArray[Any]:
        spec = self._spec(name)
        dims = tuple(int(d) for d in shape)
        if math.prod(dims) > math.prod(spec.max_shape):
            raise ValueError(
                f"tensor {name!r} of shape {dims} does not fit its buffer, sized for {spec.max_shape}; "
                "split the batch or use a profile with a larger maximum"
            )
        return self._pinned[name].view(spec.dtype, dims)

    def upload(self, name: str, array: npt.NDArray[Any]) -> None:
        """Copy ``array`` into the pinned buffer, then queue its copy to the device buffer.

        Integer inputs of another width (int64 token ids) are cast to the tensor's dtype here.
        """
        host = self._host_view(name, array.shape)
        np.copyto(host, array, casting="same_kind")
        copy_host_to_device_async(self._device[name].ptr, host, self._stream)

    def download(self, name: str, shape: Sequence[int]) -> npt.NDArray[Any]:
        """Queue a copy of the first ``shape`` elements from the device into the pinned buffer.

        Returns the pinned view; read it only after :meth:`synchronize`, and copy it before the next
        batch overwrites it.
        """
        host = self._host_view(name, shape)
        copy_device_to_host_async(host, self._device[name].ptr, self._stream)
        return host

    def synchronize(self) -> None:
        self._stream.synchronize()

    def _release(self) -> None:
        with contextlib.suppress(Exception):  # copies in flight must finish before their memory goes
            self._stream.synchronize()
        self._pinned.clear()
        self._device.clear()
        self._free_owned()

    def _describe(self) -> str:
        return f"BufferSet({sorted(self._specs)})"
