"""ONNX Runtime (CPU) reference backend: a bundle's ``model.onnx``, ``run(ModelBatch) -> (start, end)``
like the engine session, so laptops, CI and the GPU check compare against it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch

__all__ = ["OnnxRunner"]

_INT32 = "tensor(int32)"
_FLOAT = "tensor(float)"
_REEXPORT = "re-export the model with `python -m trt_handler.engines.export --model M --cache-dir C`"


def _check_model_io(inputs: List[Any], outputs: List[Any], source: str) -> None:
    """Raise ValueError unless the graph (ORT NodeArgs) takes int32 [B, S] INPUT_NAMES, gives float32 OUTPUT_NAMES."""
    got_in = {i.name: (i.type, len(i.shape)) for i in inputs}
    got_out = {o.name: o.type for o in outputs}
    if got_in != {n: (_INT32, 2) for n in INPUT_NAMES} or any(got_out.get(n) != _FLOAT for n in OUTPUT_NAMES):
        shown_in = ", ".join(f"{n} {t} rank {r}" for n, (t, r) in sorted(got_in.items())) or "none"
        shown_out = ", ".join(f"{n} {t}" for n, t in sorted(got_out.items())) or "none"
        raise ValueError(
            f"ONNX model {source} has inputs [{shown_in}] and outputs [{shown_out}], but the QA handlers need "
            f"int32 [batch, seq] inputs {', '.join(INPUT_NAMES)} and float32 outputs {', '.join(OUTPUT_NAMES)}; "
            f"{_REEXPORT}"
        )


class OnnxRunner:
    """One ONNX Runtime CPU session for a BERT QA model; ``run`` is thread-safe.

    ``onnx_path``: a local ``.onnx`` file, or the model as bytes (read from gs://: no external data).
    ``intra_op_threads``: threads inside one run; None keeps ONNX Runtime's default (one per core).
    """

    def __init__(self, onnx_path: Union[str, os.PathLike[str], bytes], *, intra_op_threads: Optional[int] = None):
        import onnxruntime as ort  # type: ignore[import-untyped]

        if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise ValueError(f"intra_op_threads must be a positive int or None, got {intra_op_threads!r}")
        model: Union[str, bytes] = onnx_path if isinstance(onnx_path, bytes) else str(Path(onnx_path))
        source = f"<{len(model)} bytes>" if isinstance(model, bytes) else model
        if isinstance(model, str) and not Path(model).is_file():
            raise FileNotFoundError(f"ONNX model {model} does not exist; pass a bundle's model.onnx or {_REEXPORT}")
        opts = ort.SessionOptions()
        # Full graph optimization fuses attention/LayerNorm/GELU for CPU; one run at a time per call,
        # parallel inside it, which is what batched BERT wants.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        try:
            self._session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime raises its own Fail/InvalidGraph types
            raise ValueError(f"ONNX Runtime cannot load {source}: {e}; {_REEXPORT}") from e
        _check_model_io(self._session.get_inputs(), self._session.get_outputs(), source)

    def run(self, batch: ModelBatch, profile: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """Start and end logits, float32 [B, S], for a padded int32 batch (any shape: ``profile``, the
        planner's choice, changes nothing)."""
        feed = {k: np.ascontiguousarray(v, dtype=np.int32) for k, v in batch.as_feed().items()}
        start, end = self._session.run(list(OUTPUT_NAMES), feed)
        return np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)
