"""Which GPU a process uses, so that every GPU of a multi-GPU worker is used.

Left alone, every SDK harness (or DirectRunner) process would use ``cuda:0``. :func:`assign_device`
picks ``TRT_QA_GPU=<index>``, else a round-robin ticket from a counter file (keyed by boot id and
parent pid, under an ``fcntl`` lock), else ``pid % gpu_count``; a process keeps its first answer.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["ENV_VAR", "assign_device", "visible_gpu_count"]

LOGGER = logging.getLogger(__name__)

ENV_VAR = "TRT_QA_GPU"

_lock = threading.Lock()
# (pid, gpu_count, key) -> GPU index; pid in the key so a forked child does not inherit an answer.
_assigned: Dict[Tuple[int, int, str], int] = {}


def visible_gpu_count() -> int:
    """CUDA GPUs this process can see (honours CUDA_VISIBLE_DEVICES); 0 when none or no CUDA stack.
    Torch's count first: it creates no CUDA context, so a later fork is still safe."""
    try:
        try:
            import torch
        except ImportError:
            from trt_handler.engines.cuda_runtime import device_count

            return int(device_count())
        return int(torch.cuda.device_count())
    except Exception:  # a broken CUDA install, or no cuda-python
        return 0


def _next_ticket(counter_dir: Path, key: str) -> int:
    """Atomically read-and-increment the counter ``counter_dir/<key>``; returns the value read."""
    import fcntl  # POSIX only; ImportError falls back to pid % count

    counter_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(counter_dir / f"{key}.count", os.O_RDWR | os.O_CREAT, 0o666)
    with os.fdopen(fd, "r+", encoding="ascii", errors="replace") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed (after the write is flushed)
        raw = f.read(64).strip()
        ticket = int(raw) if raw.isdigit() else 0
        f.seek(0)
        f.truncate()
        f.write(str(ticket + 1))
    return ticket


def assign_device(gpu_count: Optional[int] = None, *, visible: Optional[int] = None,
                  counter_dir: Optional[os.PathLike[str]] = None, key: Optional[str] = None) -> int:
    """The CUDA device index this process should use, in ``range(gpu_count)`` (None: every visible GPU).

    ``visible`` stands for the GPU count (tests), ``counter_dir`` for ``<tempdir>/trt_qa_gpu_rr`` and
    ``key`` for the round-robin group. Raises ValueError for more GPUs than visible, no GPU visible,
    or a bad ``TRT_QA_GPU``: stacking models on fewer GPUs than planned must not pass silently.
    """
    visible = visible_gpu_count() if visible is None else int(visible)
    if gpu_count is None:
        if visible < 1:
            raise ValueError("no CUDA GPU is visible to this process (CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); use device 'cpu' "
                             "or run on a GPU worker")
    elif isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1:
        raise ValueError(f"gpu_count must be a positive int or None (all visible GPUs), got {gpu_count!r}")
    elif gpu_count > visible:
        raise ValueError(f"asked to spread over {gpu_count} GPUs but only {visible} are visible to this "
                         "process; lower the GPU count (or leave it unset to use all visible GPUs) or "
                         "check CUDA_VISIBLE_DEVICES and the worker's accelerator setting")
    count = visible if gpu_count is None else gpu_count
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        if not override.isdigit():
            raise ValueError(f"{ENV_VAR}={override!r} must be a GPU index (0, 1, ...)")
        index = int(override)
        if index >= count:
            raise ValueError(f"{ENV_VAR}={index} but only {count} GPU(s) are in use (indices 0..{count - 1})")
        return index
    if key is None:  # the round-robin group of this process: <boot id>-<parent pid>
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip().replace("-", "")[:12]
        except OSError:
            boot = "noboot"
        key = f"{boot}-{os.getppid()}"
    cache_key = (os.getpid(), count, key)
    with _lock:
        if cache_key in _assigned:
            return _assigned[cache_key]
        folder = Path(counter_dir) if counter_dir is not None else Path(tempfile.gettempdir()) / "trt_qa_gpu_rr"
        try:
            ticket = _next_ticket(folder, key)
            index, how = ticket % count, f"round-robin ticket {ticket} in {folder}/{key}.count"
        except (ImportError, OSError) as e:
            index, how = os.getpid() % count, f"pid {os.getpid()} % {count} (counter file unusable: {e})"
        _assigned[cache_key] = index
    LOGGER.info("process %d uses GPU %d of %d (%s)", os.getpid(), index, count, how)
    return index
