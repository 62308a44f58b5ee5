"""Tests for the cuda-python memory layer.

Tests marked ``gpu`` use a real GPU (page-locked memory, async copies, streams, threads) and are
skipped, with the reason, where cuda-python or a GPU is missing. The rest run anywhere; the
no-GPU error path is tested only where there is no GPU.
"""

from __future__ import annotations

import gc
import importlib.util
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from tests.helpers import GPU_SKIP, needs_gpu, run_threads
from trt_handler.engines import cuda_runtime as cr

needs_cuda_python = pytest.mark.skipif(
    importlib.util.find_spec("cuda") is None, reason="cuda-python is not installed"
)
no_gpu_only = pytest.mark.skipif(
    GPU_SKIP is None or GPU_SKIP.startswith("cuda-python"),
    reason="tests the no-GPU error path; this machine has a GPU (or no cuda-python at all)",
)


# --------------------------------------------------------------------------------------------
# Anywhere
# --------------------------------------------------------------------------------------------


def test_imports_without_cuda_python() -> None:
    """The CUDA and engine modules import with numpy alone, and say what is missing when used."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('cuda', 'tensorrt', 'tensorrt_rtx', 'apache_beam'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import trt_handler.engines.cuda_runtime as cr, trt_handler.engines.session, trt_handler.gpu_check\n"
        "print(cr.unavailable_reason())\n"
        "print(cr.device_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    reason, count = out.stdout.strip().splitlines()
    assert "cuda-python is not installed" in reason and "pip install" in reason
    assert count == "0"


@needs_cuda_python
def test_check_unpacks_results_and_raises_named_errors() -> None:
    rt = cr.cudart()
    ok = rt.cudaError_t.cudaSuccess
    assert cr.check((ok,)) is None
    assert cr.check((ok, 7)) == 7
    assert cr.check((ok, 1, 2)) == (1, 2)
    with pytest.raises(cr.CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation") as info:
        cr.check((rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    assert info.value.name == "cudaErrorMemoryAllocation"
    assert not isinstance(info.value, cr.CudaUnavailableError)
    with pytest.raises(cr.CudaUnavailableError, match="no NVIDIA GPU or driver"):
        cr.check((rt.cudaError_t.cudaErrorNoDevice,), "cudaGetDeviceCount")


@needs_cuda_python
@no_gpu_only
def test_no_gpu_is_a_clear_error_not_a_crash() -> None:
    reason = cr.unavailable_reason()
    assert reason is not None and ("driver" in reason or "GPU" in reason)
    assert cr.device_count() == 0
    assert cr.driver_version() is None
    for call in (cr.device_name, cr.compute_capability):
        with pytest.raises(cr.CudaUnavailableError, match="NVIDIA driver|CUDA GPU"):
            call()
    with pytest.raises(cr.CudaUnavailableError):
        cr.PinnedBuffer(16)
    with pytest.raises(cr.CudaUnavailableError):
        cr.Stream()


def test_sizes_are_checked_before_cuda_is_touched() -> None:
    for cls in (cr.PinnedBuffer, cr.DeviceBuffer):
        with pytest.raises(ValueError, match="positive number of bytes"):
            cls(0)
    with pytest.raises(ValueError, match="at least one"):
        cr.BufferSet([])
    spec = cr.TensorSpec("x", np.dtype(np.int32), (2, 3))
    assert spec.max_nbytes == 24
    with pytest.raises(ValueError, match="unique"):
        cr.BufferSet([spec, spec])


class _Counted(cr.OwnedResource):
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self._closed = False

    def _release(self) -> None:
        self.log.append("released")


def test_owned_resource_closes_once_and_warns_on_leak() -> None:
    log: list[str] = []
    with _Counted(log) as r:
        assert not r.closed
    assert r.closed and log == ["released"]
    r.close()
    assert log == ["released"]

    leaked = _Counted(log)
    with pytest.warns(ResourceWarning, match="was not closed"):
        leaked.__del__()
    assert log == ["released", "released"]


def test_half_built_resource_neither_warns_nor_frees() -> None:
    class Failing(cr.OwnedResource):
        def __init__(self) -> None:
            raise RuntimeError("allocation failed")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError):
            Failing()
        gc.collect()


# --------------------------------------------------------------------------------------------
# Real GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
def test_device_queries() -> None:
    assert cr.device_count() >= 1
    name = cr.device_name()
    assert name and "\0" not in name
    major, minor = cr.compute_capability()
    assert isinstance(major, int) and isinstance(minor, int) and major >= 5
    version = cr.driver_version()
    assert version is not None and version >= 11000
    with pytest.raises(cr.CudaUnavailableError, match="does not exist"):
        cr.device_name(cr.device_count())
    cr.set_device(0)


@pytest.mark.gpu
@needs_gpu
def test_pinned_buffer_views_alias_page_locked_memory() -> None:
    with cr.PinnedBuffer(4096) as buf:
        assert buf.ptr % 256 == 0 and buf.nbytes == 4096
        a = buf.view(np.int32, (4, 8))
        a[...] = np.arange(32, dtype=np.int32).reshape(4, 8)
        b = buf.view(np.int32, (32,))
        assert b.ctypes.data == buf.ptr
        np.testing.assert_array_equal(b, np.arange(32))
        with pytest.raises(ValueError, match="needs 8192 bytes"):
            buf.view(np.float64, (1024,))
    assert buf.closed
    with pytest.raises(RuntimeError, match="closed"):
        buf.view(np.uint8, (1,))
    buf.close()  # idempotent


@pytest.mark.gpu
@needs_gpu
def test_stream_is_non_blocking_and_owned() -> None:
    stream = cr.Stream()
    assert stream.handle != 0  # not the legacy default stream
    stream.synchronize()
    stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        stream.synchronize()


@pytest.mark.gpu
@needs_gpu
def test_real_cuda_errors_are_named() -> None:
    with pytest.raises(cr.CudaError, match="cudaErrorMemoryAllocation"):
        cr.DeviceBuffer(1 << 50)  # 1 PiB: a plain allocation that fails at once
    with cr.DeviceBuffer(16) as ok:  # the failure is not sticky
        assert ok.ptr


@pytest.mark.gpu
@needs_gpu
def test_leaked_device_buffer_warns_and_is_freed() -> None:
    def leak() -> None:
        cr.DeviceBuffer(1 << 20)  # dropped at once, never closed
        gc.collect()

    with pytest.warns(ResourceWarning, match=r"DeviceBuffer\(1048576 bytes\) was not closed"):
        leak()


def _specs(max_shape: tuple[int, int], dtype: type = np.int32) -> list[cr.TensorSpec]:
    return [
        cr.TensorSpec("ids", np.dtype(dtype), max_shape),
        cr.TensorSpec("out", np.dtype(dtype), max_shape),
    ]


def _echo(buffers: cr.BufferSet, data: np.ndarray) -> np.ndarray:
    """Upload ``data`` as "ids", copy it on the device to "out", download: H2D, D2D, D2H queued back
    to back, one synchronize, so correct only if the stream keeps them in order."""
    buffers.upload("ids", data)
    rt = cr.cudart()
    nbytes = data.size * buffers._specs["out"].dtype.itemsize
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    cr.check(rt.cudaMemcpyAsync(buffers.device_ptr("out"), buffers.device_ptr("ids"), nbytes, kind, buffers.stream.raw))
    host = buffers.download("out", data.shape)
    buffers.stream.synchronize()
    return np.array(host)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float16, np.int64])
def test_async_round_trip_through_the_device(dtype: type) -> None:
    data = (np.random.default_rng(0).standard_normal((33, 129)) * 1000).astype(dtype)
    with cr.BufferSet(_specs((33, 129), dtype)) as buffers:
        np.testing.assert_array_equal(_echo(buffers, data), data)


@pytest.mark.gpu
@needs_gpu
def test_buffer_set_reuses_its_buffers_for_every_shape() -> None:
    rng = np.random.default_rng(1)
    with cr.BufferSet(_specs((16, 384))) as buffers:
        pointers = (buffers.device_ptr("ids"), buffers.device_ptr("out"))
        for shape in [(16, 384), (3, 17), (1, 1), (16, 128), (7, 384), (2, 256)]:
            data = rng.integers(0, 30522, size=shape, dtype=np.int32)
            np.testing.assert_array_equal(_echo(buffers, data), data)
            assert (buffers.device_ptr("ids"), buffers.device_ptr("out")) == pointers
        # int64 token ids are cast to the tensor's int32 on upload
        wide = rng.integers(0, 30522, size=(4, 9), dtype=np.int64)
        np.testing.assert_array_equal(_echo(buffers, wide), wide.astype(np.int32))
        with pytest.raises(ValueError, match="needs 26112 bytes"):
            buffers.upload("ids", np.zeros((17, 384), np.int32))
        with pytest.raises(KeyError, match="no buffer named"):
            buffers.device_ptr("missing")
    assert buffers.closed


@pytest.mark.gpu
@needs_gpu
def test_threads_each_with_their_own_buffer_set_and_stream() -> None:
    n_threads, rounds = 8, 40
    start = threading.Barrier(n_threads)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with cr.BufferSet(_specs((32, 384))) as buffers:
            pointers = buffers.device_ptr("ids")
            start.wait(timeout=60)
            for _ in range(rounds):
                shape = (int(rng.integers(1, 33)), int(rng.integers(1, 385)))
                data = rng.integers(-(2**31), 2**31 - 1, size=shape, dtype=np.int32)
                got = _echo(buffers, data)
                if not np.array_equal(got, data):
                    raise AssertionError(f"thread {seed}: wrong data back for shape {shape}")
                assert buffers.device_ptr("ids") == pointers

    run_threads(work, n_threads, timeout=120)
