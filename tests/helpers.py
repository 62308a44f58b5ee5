"""Helpers shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from trt_handler.engines import cuda_runtime as cr
from trt_handler.qa.types import QAExample, QuestionWindows, Window


def gpu_skip_reason() -> str | None:
    """Why GPU tests cannot run here, or None when cuda-python and a GPU are usable."""
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return "cuda-python is not installed"
    return cr.unavailable_reason()


GPU_SKIP = gpu_skip_reason()
needs_gpu = pytest.mark.skipif(GPU_SKIP is not None, reason=f"needs a CUDA GPU: {GPU_SKIP}")


def run_threads(work: Callable[[int], None], n_threads: int = 8, timeout: float = 120.0) -> None:
    """Run ``work(0)`` .. ``work(n_threads - 1)`` on as many threads; fail if one raised or is still
    running after ``timeout`` seconds (each thread's failure is reported, not just the first)."""
    errors: list[BaseException] = []

    def guarded(seed: int) -> None:
        try:
            work(seed)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(seed,)) for seed in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout} s"
    assert not errors, errors


def ada_window(example_id: str, index: int) -> Window:
    """A window over the whole context "Ada wrote it." ([CLS] q [SEP] 3 context tokens [SEP])."""
    offsets = np.array([[-1, -1], [-1, -1], [-1, -1], [0, 3], [4, 9], [10, 13], [-1, -1]], dtype=np.int32)
    is_ctx = np.array([0, 0, 0, 1, 1, 1, 0], dtype=bool)
    return Window(example_id, index, np.arange(7, dtype=np.int32), is_ctx.astype(np.int32), offsets,
                  is_ctx, is_ctx.copy())


def coded_window(example_id: str, length: int, index: int = 0) -> Window:
    """A window whose token ids encode it (id = position + 1000 x (index + 1)); tokens 3.. are
    context with 2-character offsets, so logits made from the ids trace back to their window."""
    ids = (np.arange(length, dtype=np.int32) + 1000 * (index + 1)) % 30000
    is_ctx = np.arange(length) >= 3
    offsets = np.stack([np.arange(length) * 2, np.arange(length) * 2 + 1], axis=1).astype(np.int32)
    offsets[~is_ctx] = -1
    return Window(example_id, index, ids, is_ctx.astype(np.int32), offsets, is_ctx, is_ctx.copy())


def coded_question(qid: str, *lengths: int) -> QuestionWindows:
    """A question with one :func:`coded_window` per length, over a context long enough for all."""
    ex = QAExample(qid, "q?", "ab" * (max(lengths) + 2))
    return QuestionWindows(ex, tuple(coded_window(qid, n, i) for i, n in enumerate(lengths)), raw=f"raw-{qid}")


def link_bundle(src: Path, dest: Path) -> Path:
    """A copy of model bundle ``src`` at ``dest``: its small files copied, model.onnx linked (the
    hash check follows the link), so a test can edit the manifest without touching the original."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "model.onnx":
            os.symlink(f.resolve(), dest / f.name)
        elif f.is_file():
            shutil.copy(f, dest / f.name)
    return dest
