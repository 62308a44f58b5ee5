"""CUDA memory layer for the engine session, on cuda-python's runtime API (``cuda.bindings.runtime``).

TensorRT takes only device pointers and a stream handle; the classes here own the page-locked host
buffers, device buffers and streams behind them. ``close()`` frees a resource once, ``with`` closes
it, and a leaked object warns with a ``ResourceWarning`` and frees what it can. ``cuda.bindings`` is
imported on first use, so this module imports without cuda-python and says what is missing when used.
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


class OwnedResource:
    """Base for objects that own a CUDA resource: ``close()`` frees it once; a leak warns.

    Subclasses set ``self._closed = False`` only once the resource exists, so a constructor that
    fails half-way never makes the finalizer free something that was never allocated.
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
    """Page-locked host memory (cudaMallocHost), seen through numpy views.

    Page-locked memory is what makes cudaMemcpyAsync truly asynchronous (pageable memory makes the
    driver stage the copy and block). Views from :meth:`view` must not be used after :meth:`close`.
    """

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


def _copy_async(dst: int, src: int, nbytes: int, kind: str, stream: Stream) -> None:
    """Queue cudaMemcpyAsync of ``nbytes`` from ``src`` to ``dst`` on ``stream``; ``kind`` names a cudaMemcpyKind."""
    rt = cudart()
    direction = getattr(rt.cudaMemcpyKind, kind)
    check(rt.cudaMemcpyAsync(dst, src, int(nbytes), direction, stream.raw), f"cudaMemcpyAsync({kind})")


def _contiguous(array: npt.NDArray[Any], role: str) -> None:
    if not array.flags.c_contiguous:
        raise ValueError(f"{role} array must be C-contiguous for a raw copy; pass np.ascontiguousarray(a)")


def copy_host_to_device_async(dst_ptr: int, src: npt.NDArray[Any], stream: Stream) -> None:
    """Queue a copy of all of ``src`` to device address ``dst_ptr`` on ``stream``.

    Asynchronous only when ``src`` is page-locked (a :class:`PinnedBuffer` view); it must stay alive
    and unchanged until the stream is synchronized.
    """
    _contiguous(src, "source")
    _copy_async(dst_ptr, src.ctypes.data, src.nbytes, "cudaMemcpyHostToDevice", stream)


def copy_device_to_host_async(dst: npt.NDArray[Any], src_ptr: int, stream: Stream) -> None:
    """Queue a copy of ``dst.nbytes`` bytes from device address ``src_ptr`` into ``dst`` on ``stream``."""
    _contiguous(dst, "destination")
    _copy_async(dst.ctypes.data, src_ptr, dst.nbytes, "cudaMemcpyDeviceToHost", stream)


def copy_device_to_device_async(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    """Queue a device-to-device copy of ``nbytes`` on ``stream``."""
    _copy_async(dst_ptr, src_ptr, nbytes, "cudaMemcpyDeviceToDevice", stream)


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

    Allocating per batch costs more than a BERT forward pass on small batches, so one set is sized
    for a profile's maximum and reused for every smaller [B, S]; its device pointers never change,
    so TensorRT tensor addresses are set once. Not thread-safe: one thread uses a set at a time.
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
        spec = self._spec(name)
        dims = tuple(int(d) for d in shape)
        if math.prod(dims) > math.prod(spec.max_shape):
            raise ValueError(
                f"tensor {name!r} of shape {dims} does not fit its buffer, sized for {spec.max_shape}; "
                "split the batch or use a profile with a larger maximum"
            )
        return self._pinned[name].view(spec.dtype, dims)

    def upload(self, name: str, array: npt.NDArray[Any]) -> None:
        """Copy ``array`` into the pinned buffer (casting int64 token ids to the tensor's dtype), then
        queue its copy to the device buffer."""
        host = self._host_view(name, array.shape)
        np.copyto(host, array, casting="same_kind")
        copy_host_to_device_async(self._device[name].ptr, host, self.stream)

    def download(self, name: str, shape: Sequence[int]) -> npt.NDArray[Any]:
        """Queue a copy of the first ``shape`` elements from the device into the pinned buffer and
        return that pinned view: read it only after :meth:`synchronize`, copy it before the next batch."""
        host = self._host_view(name, shape)
        copy_device_to_host_async(host, self._device[name].ptr, self.stream)
        return host

    def synchronize(self) -> None:
        self.stream.synchronize()

    def _release(self) -> None:
        with contextlib.suppress(Exception):  # copies in flight must finish before their memory goes
            self.stream.synchronize()
        self._pinned.clear()
        self._device.clear()
        self._owned.close()

    def _describe(self) -> str:
        return f"BufferSet({sorted(self._specs)})"
