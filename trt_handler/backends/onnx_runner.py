"""ONNX Runtime (CPU) reference backend: runs a model bundle's ``model.onnx`` on a ModelBatch.

The TensorRT engine session and this runner share one call shape (``run(ModelBatch) -> (start,
end)``), so the handlers, the export check and the GPU comparison treat both alike. ONNX Runtime is
the reference: laptops, CI and the engine check compare against it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch

__all__ = ["OnnxRunner", "check_model_io"]

_INT32 = "tensor(int32)"
_FLOAT = "tensor(float)"
_REEXPORT = "re-export the model with `python -m trt_handler.engines.export --model M --cache-dir C`"


def check_model_io(inputs: List[Any], outputs: List[Any], source: str) -> None:
    """Raise ValueError unless the graph takes int32 [B, S] INPUT_NAMES and gives float32 OUTPUT_NAMES.

    ``inputs``/``outputs`` are ONNX Runtime NodeArg lists (anything with name, type and shape).
    """
    got_in = {i.name: (i.type, len(i.shape)) for i in inputs}
    want_in = {n: (_INT32, 2) for n in INPUT_NAMES}
    if got_in != want_in:
        shown = ", ".join(f"{n} {t} rank {r}" for n, (t, r) in sorted(got_in.items())) or "none"
        raise ValueError(
            f"ONNX model {source} has inputs [{shown}], but the QA handlers need int32 [batch, seq] "
            f"inputs {', '.join(INPUT_NAMES)}; {_REEXPORT}"
        )
    got_out = {o.name: o.type for o in outputs}
    missing = [n for n in OUTPUT_NAMES if got_out.get(n) != _FLOAT]
    if missing:
        shown = ", ".join(f"{n} {t}" for n, t in sorted(got_out.items())) or "none"
        raise ValueError(
            f"ONNX model {source} has outputs [{shown}], but the QA handlers need float32 outputs "
            f"{', '.join(OUTPUT_NAMES)}; {_REEXPORT}"
        )


class OnnxRunner:
    """One ONNX Runtime CPU session for a BERT QA model.

    Args:
        onnx_path: a local ``.onnx`` file, or the serialized model as bytes (how the handler passes
            a model read from gs://; such a model must not use external data).
        intra_op_threads: threads ONNX Runtime may use inside one run; None keeps its default (one
            per physical core). Set it when several runners or Beam threads share a machine.

    ``run`` is thread-safe (ONNX Runtime sessions are), so Beam threads can share one runner.
    """

    def __init__(self, onnx_path: Union[str, os.PathLike[str], bytes], *, intra_op_threads: Optional[int] = None):
        import onnxruntime as ort  # type: ignore[import-untyped]

        if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise ValueError(f"intra_op_threads must be a positive int or None, got {intra_op_threads!r}")
        if isinstance(onnx_path, bytes):
            source = f"<{len(onnx_path)} bytes>"
            model: Union[str, bytes] = onnx_path
        else:
            path = Path(onnx_path)
            source = str(path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"ONNX model {path} does not exist; pass a model bundle's model.onnx or {_REEXPORT}"
                )
            model = str(path)
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
        check_model_io(self._session.get_inputs(), self._session.get_outputs(), source)
        self.source = source
        self.intra_op_threads = intra_op_threads

    def run(self, batch: ModelBatch) -> Tuple[np.ndarray, np.ndarray]:
        """Start and end logits, float32 [B, S], for a padded int32 batch."""
        feed = {k: np.ascontiguousarray(v, dtype=np.int32) for k, v in batch.as_feed().items()}
        start, end = self._session.run(list(OUTPUT_NAMES), feed)
        return np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxRunner({self.source!r}, intra_op_threads={self.intra_op_threads})"
