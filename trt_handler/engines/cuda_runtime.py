"""CUDA memory layer for the engine session, on cuda-python's runtime API (``cuda.bindings.runtime``).

The classes own pinned host buffers, device buffers and streams: ``close()`` frees once, a leak warns
(``ResourceWarning``). ``cuda.bindings`` is imported on first use, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


class CudaError(RuntimeError):
    """A CUDA runtime call failed; ``name`` is the cudaError_t name (e.g. ``cudaErrorMemoryAllocation``)."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class CudaUnavailableError(CudaError):
    """No usable CUDA here: cuda-python missing, no NVIDIA driver, or no visible GPU."""


@functools.cache
def cudart() -> Any:
    """The ``cuda.bindings.runtime`` module; raises CudaUnavailableError naming the fix without cuda-python."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError as exc:
        raise CudaUnavailableError(f"cuda-python is not installed ({exc}); {_INSTALL_HINT}") from exc


def _error_name(err: Any) -> tuple[str, str]:
    """(name, description) of a cudaError_t, falling back to its repr if the lookup fails."""
    rt = cudart()
    try:
        return rt.cudaGetErrorName(err)[1].decode(), rt.cudaGetErrorString(err)[1].decode()
    except Exception:  # a lookup failure must not hide the original error
        return (getattr(err, "name", str(err)), "")


def check(result: Any, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python result ``(err, *values)``: None, the one value, or a tuple of several.

    Raises CudaError if ``err`` is not success; CudaUnavailableError when it means "no GPU or driver here".
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name, text = _error_name(err)
        if name in _UNAVAILABLE_ERRORS:
            raise CudaUnavailableError(f"{what} failed: {name}: {text} (no NVIDIA GPU or driver is usable here)", name)
        raise CudaError(f"{what} failed: {name}: {text}", name)
    if len(values) > 1:
        return tuple(values)
    return values[0] if values else None


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
    return 0 if unavailable_reason() is not None else int(check(cudart().cudaGetDeviceCount(), "cudaGetDeviceCount"))


def _require_device(index: int) -> Any:
    count = device_count()
    if not 0 <= index < count:
        raise CudaUnavailableError(unavailable_reason() or f"CUDA device {index} does not exist; {count} visible")
    return cudart()


def device_name(index: int = 0) -> str:
    """Marketing name of GPU ``index`` (e.g. "NVIDIA H100 80GB HBM3"); raises CudaUnavailableError without one."""
    rt = _require_device(index)
    raw = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties").name
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
    """{"free_bytes", "total_bytes", "used_bytes"} of the current GPU (``cudaMemGetInfo``); None without one."""
    if unavailable_reason() is not None:
        return None
    free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return {"free_bytes": int(free), "total_bytes": int(total), "used_bytes": int(total) - int(free)}


def driver_version() -> int | None:
    """CUDA version the driver supports (e.g. 13000), or None without cuda-python/driver."""
    try:
        err, version = cudart().cudaDriverGetVersion()
    except CudaUnavailableError:
        return None
    return int(version) if int(err) == 0 and int(version) else None


def set_device(index: int) -> None:
    """Make GPU ``index`` current for the calling thread (CUDA's current device is per thread)."""
    rt = _require_device(index)
    check(rt.cudaSetDevice(index), "cudaSetDevice")


class OwnedResource:
    """Base for objects that own a CUDA resource: ``close()`` frees it once; a leak warns. Subclasses set
    ``self._closed = False`` only once the resource exists, so a half-built one is never freed."""

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

    def __exit__(self, *exc: object) -> None:
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
    """``nbytes`` of memory at address ``ptr``, allocated by the cudart call named ``_alloc``, freed by ``_free``."""

    _alloc = ""
    _free = ""

    def __init__(self, nbytes: int) -> None:
        n = int(nbytes)
        if n <= 0:
            raise ValueError(f"buffer size must be a positive number of bytes, got {nbytes}")
        self.nbytes = n
        self.ptr = int(check(getattr(cudart(), self._alloc)(n), f"{self._alloc}({n})"))
        self._closed = False

    def _release(self) -> None:
        check(getattr(cudart(), self._free)(self.ptr), self._free)

    def _describe(self) -> str:
        return f"{type(self).__name__}({self.nbytes} bytes)"


class PinnedBuffer(_Memory):
    """Page-locked host memory (cudaMallocHost), which makes cudaMemcpyAsync truly asynchronous, seen
    through numpy views that must not be used after :meth:`close`."""

    _alloc = "cudaMallocHost"
    _free = "cudaFreeHost"

    def __init__(self, nbytes: int) -> None:
        super().__init__(nbytes)
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)
        self._bytes: npt.NDArray[np.uint8] = np.ctypeslib.as_array(raw)

    def view(self, dtype: npt.DTypeLike, shape: Sequence[int]) -> npt.NDArray[Any]:
        """A C-contiguous ``dtype`` array of ``shape`` over the start of the buffer (no copy)."""
        self._require_open()
        dt = np.dtype(dtype)
        dims = tuple(int(d) for d in shape)
        need = math.prod(dims) * dt.itemsize
        if need > self.nbytes:
            raise ValueError(f"a {dt} view of shape {dims} needs {need} bytes; this pinned buffer holds {self.nbytes}")
        return self._bytes[:need].view(dt).reshape(dims)

    def _release(self) -> None:
        self._bytes = np.empty(0, dtype=np.uint8)
        super()._release()


class DeviceBuffer(_Memory):
    """Device memory (cudaMalloc) on the calling thread's current GPU."""

    _alloc = "cudaMalloc"
    _free = "cudaFree"


class Stream(OwnedResource):
    """A non-blocking CUDA stream: work on it never waits for the legacy default stream."""

    def __init__(self) -> None:
        rt = cudart()
        self.raw: Any = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self._closed = False

    @property
    def handle(self) -> int:
        """The cudaStream_t as an int, the form TensorRT's ``execute_async_v3`` takes."""
        return int(self.raw)

    def synchronize(self) -> None:
        """Block until all work queued on this stream has finished (raises what the work raised)."""
        self._require_open()
        check(cudart().cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")

    def _release(self) -> None:
        check(cudart().cudaStreamDestroy(self.raw), "cudaStreamDestroy")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a :class:`BufferSet`: its dtype and the largest shape it must hold."""

    name: str
    dtype: np.dtype[Any]
    max_shape: tuple[int, ...]

    @property
    def max_nbytes(self) -> int:
        return math.prod(self.max_shape) * self.dtype.itemsize


class BufferSet(OwnedResource):
    """Pinned host + device buffers for named tensors, sized once for their maximum shape, and a stream.

    Reused for every smaller [B, S] (allocating per batch costs more than a small BERT batch), so its
    device pointers, and TensorRT's tensor addresses, never change. Not thread-safe.
    """

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        if not specs:
            raise ValueError("a BufferSet needs at least one TensorSpec")
        self._specs = {s.name: s for s in specs}
        if len(self._specs) != len(specs):
            raise ValueError(f"tensor names must be unique, got {[s.name for s in specs]}")
        self._pinned: dict[str, PinnedBuffer] = {}
        self._device: dict[str, DeviceBuffer] = {}
        with contextlib.ExitStack() as owned:  # on a failed allocation, frees what was made
            self.stream = owned.enter_context(Stream())
            for spec in specs:
                self._pinned[spec.name] = owned.enter_context(PinnedBuffer(spec.max_nbytes))
                self._device[spec.name] = owned.enter_context(DeviceBuffer(spec.max_nbytes))
            self._owned = owned.pop_all()  # closed newest first by _release
        self._closed = False

    def _spec(self, name: str) -> TensorSpec:
        self._require_open()
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"no buffer named {name!r}; this set holds {sorted(self._specs)}") from None

    def device_ptr(self, name: str) -> int:
        """Device address of tensor ``name``'s buffer (fixed for the life of the set)."""
        return self._device[self._spec(name).name].ptr

    def _host_view(self, name: str, shape: Sequence[int]) -> npt.NDArray[Any]:
        spec = self._spec(name)  # a clear error for an unknown name or a closed set
        return self._pinned[name].view(spec.dtype, shape)

    def _copy_async(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        rt = cudart()
        direction = getattr(rt.cudaMemcpyKind, kind)
        check(rt.cudaMemcpyAsync(dst, src, int(nbytes), direction, self.stream.raw), f"cudaMemcpyAsync({kind})")

    def upload(self, name: str, array: npt.NDArray[Any]) -> None:
        """Copy ``array`` into the pinned buffer (casting int64 token ids to the tensor's dtype), then
        queue its copy to the device buffer."""
        host = self._host_view(name, array.shape)
        np.copyto(host, array, casting="same_kind")
        self._copy_async(self._device[name].ptr, host.ctypes.data, host.nbytes, "cudaMemcpyHostToDevice")

    def download(self, name: str, shape: Sequence[int]) -> npt.NDArray[Any]:
        """Queue a copy of the first ``shape`` elements from the device into the pinned buffer and
        return that pinned view: read it after the stream synchronizes, copy it before the next batch."""
        host = self._host_view(name, shape)
        self._copy_async(host.ctypes.data, self._device[name].ptr, host.nbytes, "cudaMemcpyDeviceToHost")
        return host

    def _release(self) -> None:
        with contextlib.suppress(Exception):  # copies in flight must finish before their memory goes
            self.stream.synchronize()
        self._owned.close()

    def _describe(self) -> str:
        return f"BufferSet({sorted(self._specs)})"
