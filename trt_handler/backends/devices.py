"""Which GPU a process uses, so that every GPU of a multi-GPU worker is used.

A Dataflow GPU worker runs several SDK harness processes (one per vCPU, or one with
``no_use_multiple_sdk_containers``), and Beam's DirectRunner in ``multi_processing`` mode runs
``direct_num_workers`` processes. Left alone, each one would put its model on ``cuda:0`` and the
other GPUs of the machine would sit idle. :func:`assign_device` picks one GPU per process, in this
order:

1. ``TRT_QA_GPU=<index>`` in the environment: that GPU (an operator's override; checked against
   the GPU count).
2. A round-robin over the processes of this host that share a parent (the harness boot program,
   the DirectRunner's main process): an integer counter in a file under the system temp dir,
   keyed by the boot id and the parent pid, read and incremented under an exclusive ``fcntl``
   lock. The n-th process to ask gets GPU ``n % gpu_count``, so N processes over G GPUs differ
   by at most one per GPU.
3. When the counter file cannot be used (no ``fcntl``, temp dir not writable): ``pid % gpu_count``.

A process keeps its first answer (one model copy per process, whichever handler asks); a forked
child asks again. Asking for more GPUs than are visible is refused with a ValueError, since it
would silently stack several processes' models on fewer GPUs than planned.

Nothing heavy is imported at module level; :func:`visible_gpu_count` imports torch (or
cuda-python) only when called.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["ENV_VAR", "assign_device", "counter_key", "resolve_device", "visible_gpu_count"]

LOGGER = logging.getLogger(__name__)

ENV_VAR = "TRT_QA_GPU"
_COUNTER_DIR_NAME = "trt_qa_gpu_rr"

_lock = threading.Lock()
# (pid, gpu_count, key) -> (index, how); pid in the key so a forked child does not inherit an answer.
_assigned: Dict[Tuple[int, int, str], Tuple[int, str]] = {}


def visible_gpu_count() -> int:
    """CUDA GPUs this process can see (honours CUDA_VISIBLE_DEVICES); 0 when none or no CUDA stack.

    Uses ``torch.cuda.device_count()`` when torch is importable (it does not create a CUDA
    context, so a later fork is still safe), else cuda-python's ``cudaGetDeviceCount``.
    """
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        try:
            return int(torch.cuda.device_count())
        except Exception:  # pragma: no cover - broken CUDA install
            return 0
    try:
        from trt_handler.engines.cuda_runtime import device_count
        return int(device_count())
    except Exception:
        return 0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip().replace("-", "")[:12]
    except OSError:
        return "noboot"


def counter_key() -> str:
    """The round-robin group of this process: ``<boot id>-<parent pid>``."""
    return f"{_boot_id()}-{os.getppid()}"


def _next_ticket(counter_dir: Path, key: str) -> int:
    """Atomically read-and-increment the counter ``counter_dir/<key>``; returns the value read."""
    import fcntl  # POSIX only; ImportError falls back to pid % count

    counter_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(counter_dir / f"{key}.count", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.read(fd, 64).decode("ascii", "replace").strip()
            ticket = int(raw) if raw.isdigit() else 0
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(ticket + 1).encode("ascii"))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return ticket


def _check_count(gpu_count: Optional[int], visible: int) -> int:
    if gpu_count is None:
        if visible < 1:
            raise ValueError("no CUDA GPU is visible to this process (CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); use device 'cpu' "
                             "or run on a GPU worker")
        return visible
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1:
        raise ValueError(f"gpu_count must be a positive int or None (all visible GPUs), got {gpu_count!r}")
    if gpu_count > visible:
        raise ValueError(f"asked to spread over {gpu_count} GPUs but only {visible} are visible to this "
                         "process; lower the GPU count (or leave it unset to use all visible GPUs) or "
                         "check CUDA_VISIBLE_DEVICES and the worker's accelerator setting")
    return gpu_count


def assign_device(gpu_count: Optional[int] = None, *, visible: Optional[int] = None,
                  counter_dir: Optional[os.PathLike[str]] = None, key: Optional[str] = None) -> int:
    """The CUDA device index this process should use, in ``range(gpu_count)``.

    Args:
        gpu_count: GPUs to spread over; None uses every visible GPU.
        visible: GPUs visible to this process; None asks :func:`visible_gpu_count`. (Tests on a
            machine without a GPU pass it to stand for a GPU host.)
        counter_dir: where the round-robin counters live; default ``<tempdir>/trt_qa_gpu_rr``.
        key: round-robin group; default :func:`counter_key` (boot id + parent pid).

    Raises:
        ValueError: gpu_count larger than the visible GPUs, no GPU visible, or a bad ``TRT_QA_GPU``.
    """
    count = _check_count(gpu_count, visible_gpu_count() if visible is None else int(visible))
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        if not override.isdigit():
            raise ValueError(f"{ENV_VAR}={override!r} must be a GPU index (0, 1, ...)")
        index = int(override)
        if index >= count:
            raise ValueError(f"{ENV_VAR}={index} but only {count} GPU(s) are in use (indices 0..{count - 1})")
        return index
    group = counter_key() if key is None else key
    cache_key = (os.getpid(), count, group)
    with _lock:
        if cache_key in _assigned:
            return _assigned[cache_key][0]
        folder = Path(counter_dir) if counter_dir is not None else Path(tempfile.gettempdir()) / _COUNTER_DIR_NAME
        try:
            ticket = _next_ticket(folder, group)
            index, how = ticket % count, f"round-robin ticket {ticket} in {folder}/{group}.count"
        except (ImportError, OSError) as e:
            index, how = os.getpid() % count, f"pid {os.getpid()} % {count} (counter file unusable: {e})"
        _assigned[cache_key] = (index, how)
    LOGGER.info("process %d uses GPU %d of %d (%s)", os.getpid(), index, count, how)
    return index


def resolve_device(device: str, gpu_count: Optional[int] = None) -> str:
    """``"cuda"`` -> ``"cuda:<assign_device(gpu_count)>"``; ``"cpu"`` and ``"cuda:N"`` unchanged.

    The form a handler passes to :class:`~trt_handler.backends.torch_runner.TorchRunner`.
    """
    text = str(device).strip().lower()
    if text == "cuda":
        return f"cuda:{assign_device(gpu_count)}"
    if text == "cpu" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ValueError(f"device must be 'cpu', 'cuda' (one GPU per process, round-robin) or 'cuda:N', got {device!r}")
