"""INT8 post-training calibration (TensorRT 10 only): real SQuAD windows through an entropy calibrator.

TensorRT 11 and TensorRT-RTX removed implicit INT8; there the answer is Q/DQ nodes (:data:`QDQ_FIX`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from trt_handler.engines.library import library_version
from trt_handler.engines.sidecar import atomic_write
from trt_handler.planning import ProfileSpec
from trt_handler.qa.batching import pad_windows
from trt_handler.qa.types import ModelBatch, Window

__all__ = ["QDQ_FIX", "CalibrationError", "calibration_batches", "setup_int8", "squad_windows"]

QDQ_FIX = (
    "quantize explicitly instead: insert Q/DQ nodes into the ONNX (NVIDIA ModelOpt, "
    "`python -m modelopt.onnx.quantization --onnx_path model.onnx --quantize_mode int8`) and build that "
    "ONNX with --precision fp32, which keeps the Q/DQ types (strongly typed)"
)


class CalibrationError(RuntimeError):
    """INT8 calibration cannot run (no data, or this TensorRT has no implicit INT8); says what to do."""


def squad_windows(data: str | os.PathLike[str], tokenizer: str | os.PathLike[str], seq_len: int) -> Iterator[Window]:
    """The windows the pipeline makes from ``data`` (SQuAD JSON/JSONL), lazily, in file order; query 64
    and stride 128 scaled down for short ``seq_len``; questions with a FeatureError are skipped."""
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import FeatureConfig, WindowMaker, load_tokenizer

    query, stride = 64, 128
    if seq_len < query + stride + 4:
        query = min(query, seq_len // 4)
        stride = min(stride, (seq_len - query - 3) // 2)
    config = FeatureConfig(max_seq_length=seq_len, doc_stride=stride, max_query_length=query)
    maker = WindowMaker(load_tokenizer(str(tokenizer)), config)
    examples = load_examples(str(data))
    for start in range(0, len(examples), 64):  # tokenize lazily: a few batches need few questions
        for windows in maker.windows_many(examples[start:start + 64]):
            if not isinstance(windows, Exception):
                yield from windows


def calibration_batches(
    data: str, tokenizer: str, *, batch_size: int, seq_len: int, max_batches: int
) -> Iterator[ModelBatch]:
    """Up to ``max_batches`` full [batch_size, seq_len] int32 batches of :func:`squad_windows`;
    CalibrationError when ``data`` has not even one."""
    windows = squad_windows(data, tokenizer, seq_len)
    for made in range(max_batches):
        chunk = list(itertools.islice(windows, batch_size))
        if len(chunk) < batch_size:
            if made == 0:
                raise CalibrationError(
                    f"{data} gave fewer than {batch_size} windows; INT8 calibration needs at least one full batch"
                )
            return
        yield pad_windows(chunk, seq_len)


def _make_calibrator(trt: ModuleType, batches: Sequence[ModelBatch], batch_size: int, cache_path: str | None) -> Any:
    """An IInt8EntropyCalibrator2 feeding ``batches`` to the GPU through cuda_runtime buffers
    (one device buffer per input, reused; ``close()`` frees them after the build)."""
    from trt_handler.engines import cuda_runtime

    base: Any = trt.IInt8EntropyCalibrator2
    pending = iter(batches)

    class SquadCalibrator(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)
            self.buffers: dict[str, Any] = {}

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            batch = next(pending, None)
            if batch is None:
                return None
            feed = batch.as_feed()
            rt = cuda_runtime.cudart()
            ptrs = []
            for name in names:
                host = feed[name]
                if name not in self.buffers:  # every batch has the same shape: one buffer per input
                    self.buffers[name] = cuda_runtime.DeviceBuffer(host.nbytes)
                buf = self.buffers[name]
                kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
                cuda_runtime.check(rt.cudaMemcpy(buf.ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
                ptrs.append(buf.ptr)
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return Path(cache_path).read_bytes() if cache_path and Path(cache_path).is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path:
                atomic_write(Path(cache_path), bytes(cache))

        def close(self) -> None:
            for buf in self.buffers.values():
                buf.close()
            self.buffers.clear()

    return SquadCalibrator()


def setup_int8(trt: ModuleType, config: Any, profiles: Sequence[Any], specs: Sequence[ProfileSpec], *,
               data: str | None, tokenizer: str, cache: str | None, max_batches: int) -> tuple[Any, dict[str, Any]]:
    """Weakly typed INT8 (+FP16 fallback) calibrated on the largest bucket's profile: (calibrator, sidecar
    info), the caller closes the calibrator after the build; CalibrationError without implicit INT8."""
    if not hasattr(trt, "IInt8EntropyCalibrator2") or "INT8" not in trt.BuilderFlag.__members__:
        raise CalibrationError(
            f"TensorRT {library_version(trt)} removed implicit INT8 (calibration and BuilderFlag.INT8); "
            f"{QDQ_FIX}."
        )
    spec = specs[-1]  # TensorRT calibrates at the calibration profile's opt shape
    batches = [] if not data else list(calibration_batches(
        data, tokenizer, batch_size=spec.opt_batch, seq_len=spec.opt_seq, max_batches=max_batches,
    ))
    calibrator = _make_calibrator(trt, batches, spec.opt_batch, cache)
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profiles[-1])
    return calibrator, {"data": data, "cache": cache, "batch": [spec.opt_batch, spec.opt_seq], "batches": len(batches)}
