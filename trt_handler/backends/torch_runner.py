"""PyTorch backend: a Hugging Face BERT QA checkpoint run with SDPA attention on CPU or a CUDA GPU.

Same call shape as :class:`~trt_handler.backends.onnx_runner.OnnxRunner` and the TensorRT engine
session (``run(ModelBatch) -> (start, end)``, float32 numpy ``[B, S]``), so the handlers treat all
three alike. On a GPU it also has an asynchronous form, so the CPU work of one batch (windows,
padding, answers) overlaps the GPU work of another::

    pending = runner.submit(batch)      # H2D copy, model, D2H copy queued on this thread's stream
    ...                                 # CPU work here runs while the GPU computes
    start, end = pending.result()       # waits on the CUDA event of this batch only

How ``submit`` works on CUDA: the three int32 inputs are written into one pinned host tensor
``[3, B, S]`` and copied to the GPU with one non-blocking copy on the calling thread's own CUDA
stream; the model runs under ``torch.inference_mode`` on that stream; both logits are cast to
float32 on the GPU and copied non-blocking into one pinned host tensor ``[2, B, S]``; a CUDA event
is recorded after that copy. ``Pending.result()`` waits on that event (nothing else), then copies
the logits out of pinned memory into ordinary numpy arrays so pinned pages are not held downstream.

Threads: Beam runs several work threads per process and they may share one runner (one copy of the
weights). Each thread gets its own CUDA stream (``threading.local``), so two threads' batches
overlap on the GPU and one thread's ``result()`` never waits for another thread's batch. Fresh
pinned tensors per call come from PyTorch's caching host allocator, which does not hand a block
back out until the copies queued on it have finished, so two outstanding submits never share a
staging buffer.

On CPU ``submit`` computes at once and returns a finished ``Pending``.

``torch`` and ``transformers`` are imported inside the class, so importing this module is cheap
(a Beam pipeline that never builds a runner does not load them).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import numpy as np

from trt_handler.qa.types import ModelBatch

__all__ = ["DTYPES", "Pending", "TorchRunner"]

# Accepted dtype names -> torch attribute names.
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}

Logits = Tuple[np.ndarray, np.ndarray]


def _check_batch(batch: ModelBatch, max_positions: int) -> Tuple[int, int]:
    arrays = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"ModelBatch arrays must all be [B, S], got shapes "
                         f"{[tuple(a.shape) for a in arrays]}")
    b, s = next(iter(shapes))
    if b < 1 or s < 1:
        raise ValueError(f"ModelBatch is empty ({b}x{s})")
    if s > max_positions:
        raise ValueError(f"sequence length {s} is longer than the model's {max_positions} positions; "
                         "use shorter windows (max_seq_length) or a model with more positions")
    for a in arrays:
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"ModelBatch arrays must be integer, got {a.dtype}")
    return int(b), int(s)


class Pending:
    """The logits of one submitted batch; ``result()`` returns ``(start, end)`` float32 ``[B, S]``.

    ``result()`` may be called more than once (it returns the same arrays) and from any thread.
    """

    __slots__ = ("_event", "_host", "_keep", "_result", "_lock")

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
                host = self._host.numpy()
                self._result = (np.array(host[0], dtype=np.float32, copy=True),
                                np.array(host[1], dtype=np.float32, copy=True))
                self._host = self._keep = self._event = None
            return self._result


class TorchRunner:
    """A BERT QA checkpoint (Hugging Face folder) on one device, fp32/fp16/bf16, SDPA attention.

    Args:
        model_dir: a local folder that ``AutoModelForQuestionAnswering.from_pretrained`` reads
            (config.json + weights). Never a hub id: a typo must not turn into a download.
        device: ``"cpu"``, ``"cuda"`` (the current CUDA device) or ``"cuda:N"``. To spread the
            processes of one worker over its GPUs, pass
            :func:`trt_handler.backends.devices.resolve_device` ``("cuda")``.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (weights and activations).
        attn_implementation: passed to transformers; ``"sdpa"`` (default) uses
            ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
            on GPU), ``"eager"`` the plain matmul-softmax path.
        cpu_threads: if set, ``torch.set_num_threads`` for CPU runs (process-wide in torch).

    Use :meth:`from_model` to wrap a model object already built (the benchmarks' random BERT-large).
    """

    def __init__(self, model_dir: Union[str, os.PathLike[str]], *, device: str = "cpu", dtype: str = "fp32",
                 attn_implementation: str = "sdpa", cpu_threads: Optional[int] = None) -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {path} has no config.json; pass a local Hugging Face checkpoint folder "
                "(config.json + model.safetensors), e.g. one saved with save_pretrained"
            )
        torch = self._import_torch()
        torch_dtype = self._torch_dtype(torch, dtype)
        dev = self._torch_device(torch, device)
        from transformers import AutoModelForQuestionAnswering

        model = AutoModelForQuestionAnswering.from_pretrained(
            str(path), dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=True,
        )
        self._setup(torch, model, dev, torch_dtype, cpu_threads, source=str(path))

    @classmethod
    def from_model(cls, model: Any, *, device: str = "cpu", dtype: str = "fp32",
                   cpu_threads: Optional[int] = None) -> TorchRunner:
        """Wrap an existing ``*ForQuestionAnswering`` module (moved to ``device`` and ``dtype``)."""
        self = cls.__new__(cls)
        torch = cls._import_torch()
        self._setup(torch, model, cls._torch_device(torch, device), cls._torch_dtype(torch, dtype),
                    cpu_threads, source=type(model).__name__)
        return self

    # -- construction helpers ---------------------------------------------------------------

    @staticmethod
    def _import_torch() -> Any:
        try:
            import torch
        except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
            raise ModuleNotFoundError("the torch backend needs PyTorch and transformers: "
                                      "pip install torch transformers") from e
        return torch

    @staticmethod
    def _torch_dtype(torch: Any, dtype: str) -> Any:
        name = DTYPES.get(str(dtype).lower())
        if name is None:
            raise ValueError(f"dtype must be one of fp32, fp16, bf16, got {dtype!r}")
        return getattr(torch, name)

    @staticmethod
    def _torch_device(torch: Any, device: str) -> Any:
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

    def _setup(self, torch: Any, model: Any, dev: Any, torch_dtype: Any, cpu_threads: Optional[int],
               source: str) -> None:
        if cpu_threads is not None:
            if not isinstance(cpu_threads, int) or cpu_threads < 1:
                raise ValueError(f"cpu_threads must be a positive int or None, got {cpu_threads!r}")
            torch.set_num_threads(cpu_threads)
        self._torch = torch
        self.device = dev
        self.dtype = torch_dtype
        self.source = source
        self._model = model.to(device=dev, dtype=torch_dtype).eval()
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
        """{free_bytes, total_bytes, used_bytes} of this runner's GPU (the engine session's form);
        None on the CPU."""
        if not self.is_cuda:
            return None
        free, total = self._torch.cuda.mem_get_info(self.device)
        return {"free_bytes": int(free), "total_bytes": int(total), "used_bytes": int(total - free)}

    # -- running ------------------------------------------------------------------------------

    def _stream(self) -> Any:
        """This thread's CUDA stream (created on first use)."""
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._torch.cuda.Stream(device=self.device)
            self._local.stream = stream
        return stream

    def _forward(self, dev_inputs: Any) -> Any:
        """[3, B, S] int tensor on the device -> [2, B, S] float32 logits on the device."""
        torch = self._torch
        ids, mask, types = (t.long() for t in dev_inputs.unbind(0))
        out = self._model(input_ids=ids, attention_mask=mask, token_type_ids=types, return_dict=True)
        return torch.stack((out.start_logits, out.end_logits)).float()

    def submit(self, batch: ModelBatch) -> Pending:
        """Queue ``batch`` on this thread's stream; ``.result()`` gives ``(start, end)``."""
        if self._closed:
            raise RuntimeError("TorchRunner is closed")
        b, s = _check_batch(batch, self.max_positions)
        torch = self._torch
        if not self.is_cuda:
            host = torch.from_numpy(np.stack([batch.input_ids, batch.attention_mask, batch.token_type_ids])
                                    .astype(np.int64, copy=False))
            with torch.inference_mode():
                logits = self._forward(host).numpy()
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
        # host_in stays referenced until the event: the caching host allocator also guards it, this
        # makes it explicit.
        return Pending(event=event, host=host_out, keep=(host_in, dev_in, logits))

    def run(self, batch: ModelBatch) -> Logits:
        """``(start_logits, end_logits)``, float32 numpy ``[B, S]``; waits for this batch only."""
        return self.submit(batch).result()

    def warm_up(self, shapes: Iterable[Tuple[int, int]]) -> None:
        """Run each ``(batch, seq)`` once (kernel selection, allocator pools) and wait for all."""
        pendings = []
        for b, s in shapes:
            ids = np.zeros((int(b), int(s)), dtype=np.int32)
            ids[:, 0] = 101
            mask = np.ones_like(ids)
            types = np.zeros_like(ids)
            types[:, s // 2:] = 1
            pendings.append(self.submit(ModelBatch(ids, mask, types)))
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

    def __repr__(self) -> str:
        return (f"TorchRunner({self.source!r}, device={str(self.device)!r}, dtype={self.dtype}, "
                f"attn={self.attn_implementation!r})")
