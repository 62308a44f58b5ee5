"""PyTorch backend: a Hugging Face BERT QA checkpoint run with SDPA attention on CPU or a CUDA GPU.

On CUDA ``submit`` stages the inputs in pinned memory and queues copy, model and copy back on the
calling thread's own stream, so threads sharing a runner overlap. ``torch`` is imported only when a
runner is built.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import numpy as np

from trt_handler.qa.types import ModelBatch

__all__ = ["Pending", "TorchRunner"]

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

Logits = Tuple[np.ndarray, np.ndarray]


def _check_batch(batch: ModelBatch, max_positions: int) -> Tuple[int, int]:
    arrays = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    shapes = [tuple(a.shape) for a in arrays]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2 or 0 in shapes[0]:
        raise ValueError(f"ModelBatch arrays must all be [B, S] with B, S >= 1, got shapes {shapes}")
    if not all(np.issubdtype(a.dtype, np.integer) for a in arrays):
        raise ValueError(f"ModelBatch arrays must be integer, got {[a.dtype for a in arrays]}")
    b, s = shapes[0]
    if s > max_positions:
        raise ValueError(f"sequence length {s} is longer than the model's {max_positions} positions; "
                         "use shorter windows (max_seq_length) or a model with more positions")
    return int(b), int(s)


class Pending:
    """The logits of one submitted batch: ``result()`` gives ``(start, end)`` float32 ``[B, S]``,
    the same arrays on every call, from any thread."""

    def __init__(self, *, result: Optional[Logits] = None, event: Any = None, host: Any = None,
                 keep: Any = None) -> None:
        self._result = result
        self._event = event
        self._host = host    # pinned [2, B, S] float32 the D2H copy writes into
        self._keep = keep    # device tensors that must live until the event has fired
        self._lock = threading.Lock()

    def done(self) -> bool:
        """True when ``result()`` would not wait."""
        return self._result is not None or self._event is None or bool(self._event.query())

    def result(self) -> Logits:
        with self._lock:
            if self._result is None:
                self._event.synchronize()
                logits = np.array(self._host.numpy(), dtype=np.float32)  # a copy out of pinned memory
                self._result = (logits[0], logits[1])
                self._host = self._keep = self._event = None
            return self._result


class TorchRunner:
    """A BERT QA checkpoint on one device, fp32/fp16/bf16; one runner may serve all Beam threads.

    ``model_dir`` is a local checkpoint folder, never a hub id (a typo must not turn into a download);
    ``cpu_threads`` sets ``torch.set_num_threads``, which is process-wide.
    """

    def __init__(self, model_dir: Union[str, os.PathLike[str]], *, device: str = "cpu", dtype: str = "fp32",
                 attn_implementation: str = "sdpa", cpu_threads: Optional[int] = None) -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {path} has no config.json; pass a local Hugging Face checkpoint folder "
                "(config.json + model.safetensors), e.g. one saved with save_pretrained"
            )

        def load(torch_dtype: Any) -> Any:
            from transformers import AutoModelForQuestionAnswering

            return AutoModelForQuestionAnswering.from_pretrained(
                str(path), dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=True)

        self._setup(load, device, dtype, cpu_threads)

    @classmethod
    def from_model(cls, model: Any, *, device: str = "cpu", dtype: str = "fp32",
                   cpu_threads: Optional[int] = None) -> TorchRunner:
        """Wrap an existing ``*ForQuestionAnswering`` module (moved to ``device`` and ``dtype``)."""
        self = cls.__new__(cls)
        self._setup(lambda _: model, device, dtype, cpu_threads)
        return self

    def _setup(self, load: Callable[[Any], Any], device: str, dtype: str, cpu_threads: Optional[int]) -> None:
        try:
            import torch
        except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
            raise ModuleNotFoundError("the torch backend needs PyTorch and transformers: "
                                      "pip install torch transformers") from e
        name = _DTYPES.get(str(dtype).lower())
        if name is None:
            raise ValueError(f"dtype must be one of fp32, fp16, bf16, got {dtype!r}")
        dev = _torch_device(torch, device)
        if cpu_threads is not None:
            if not isinstance(cpu_threads, int) or cpu_threads < 1:
                raise ValueError(f"cpu_threads must be a positive int or None, got {cpu_threads!r}")
            torch.set_num_threads(cpu_threads)
        self._torch = torch
        self.device = dev
        self.dtype = getattr(torch, name)
        self._model = load(self.dtype).to(device=dev, dtype=self.dtype).eval()
        config = getattr(self._model, "config", None)
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 30))
        self.attn_implementation = getattr(config, "_attn_implementation", None)
        self._local = threading.local()
        self._closed = False
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # weights are on the GPU before any side stream reads them

    @property
    def is_cuda(self) -> bool:
        return bool(self.device.type == "cuda")

    def gpu_memory(self) -> Optional[Dict[str, int]]:
        """{free_bytes, total_bytes, used_bytes} of this runner's GPU; None on the CPU."""
        if not self.is_cuda:
            return None
        free, total = self._torch.cuda.mem_get_info(self.device)
        return {"free_bytes": int(free), "total_bytes": int(total), "used_bytes": int(total - free)}

    def _stream(self) -> Any:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._torch.cuda.Stream(device=self.device)
            self._local.stream = stream
        return stream

    def _forward(self, dev_inputs: Any) -> Any:
        """[3, B, S] int tensor on the device -> [2, B, S] float32 logits on the device."""
        ids, mask, types = (t.long() for t in dev_inputs.unbind(0))
        out = self._model(input_ids=ids, attention_mask=mask, token_type_ids=types, return_dict=True)
        return self._torch.stack((out.start_logits, out.end_logits)).float()

    def submit(self, batch: ModelBatch, profile: int = 0) -> Pending:
        """Queue ``batch`` on this thread's stream; ``.result()`` gives ``(start, end)``. A PyTorch
        model takes any shape: ``profile`` (the planner's choice) changes nothing."""
        if self._closed:
            raise RuntimeError("TorchRunner is closed")
        b, s = _check_batch(batch, self.max_positions)
        torch = self._torch
        if not self.is_cuda:
            ids = np.stack([batch.input_ids, batch.attention_mask, batch.token_type_ids], dtype=np.int64)
            with torch.inference_mode():
                logits = self._forward(torch.from_numpy(ids)).numpy()
            return Pending(result=(np.ascontiguousarray(logits[0]), np.ascontiguousarray(logits[1])))
        host_in = torch.empty((3, b, s), dtype=torch.int32, pin_memory=True)
        view = host_in.numpy()
        view[0] = batch.input_ids
        view[1] = batch.attention_mask
        view[2] = batch.token_type_ids
        host_out = torch.empty((2, b, s), dtype=torch.float32, pin_memory=True)
        stream = self._stream()
        with torch.cuda.device(self.device), torch.cuda.stream(stream), torch.inference_mode():
            dev_in = host_in.to(self.device, non_blocking=True)
            logits = self._forward(dev_in)
            host_out.copy_(logits, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        # host_in stays referenced until the event (PyTorch's caching host allocator guards it too)
        return Pending(event=event, host=host_out, keep=(host_in, dev_in, logits))

    def run(self, batch: ModelBatch, profile: int = 0) -> Logits:
        """``(start_logits, end_logits)``, float32 numpy ``[B, S]``; waits for this batch only."""
        return self.submit(batch, profile).result()

    def warm_up(self, shapes: Iterable[Tuple[int, int]]) -> None:
        """Run each ``(batch, seq)`` once (kernel selection, allocator pools) and wait for all."""
        pendings = []
        for b, s in shapes:
            ids = np.zeros((int(b), int(s)), dtype=np.int32)
            ids[:, 0] = 101
            types = np.zeros_like(ids)
            types[:, s // 2:] = 1
            pendings.append(self.submit(ModelBatch(ids, np.ones_like(ids), types)))
        for p in pendings:
            p.result()

    def close(self) -> None:
        """Drop the model (frees GPU memory once nothing else holds it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.is_cuda:
            self._torch.cuda.synchronize(self.device)
        self._model = None
        self._local = threading.local()
        if self.is_cuda:
            self._torch.cuda.empty_cache()

    def __enter__(self) -> TorchRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _torch_device(torch: Any, device: str) -> Any:
    """``device`` as a torch.device with its index, checked against the visible GPUs."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device {device!r} asked for, but only {count} CUDA GPU(s) are visible")
        dev = torch.device("cuda", index)
    return dev
