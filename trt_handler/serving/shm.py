"""Shared memory between a client and the inference server: one segment per client thread, one request
in it at a time, laid out as

    int32 lengths[W] | int32 input_ids[T] | int32 token_type_ids[T] | float32 start[T] | float32 end[T]

for W windows of T real tokens in all (no padding crosses processes). The client writes the first
three, the server writes the logits in place and answers with a small message; nothing is pickled.
The client creates and owns the segment (``multiprocessing.shared_memory``: its resource tracker
unlinks it even when the client dies); the server maps it by name from ``/dev/shm`` and never unlinks it.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Optional

import numpy as np

__all__ = ["ClientSegment", "RequestArrays", "map_segment", "request_arrays", "request_nbytes"]

SHM_FOLDER = "/dev/shm"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
MIN_SEGMENT = 4 << 20


def request_nbytes(windows: int, tokens: int) -> int:
    """Bytes of a request of ``windows`` windows holding ``tokens`` real tokens."""
    return 4 * windows + 16 * tokens


@dataclass
class RequestArrays:
    """Views of one request in a segment (valid while the segment is mapped)."""

    lengths: np.ndarray         # int32 [W]
    input_ids: np.ndarray       # int32 [T], the windows one after another
    token_type_ids: np.ndarray  # int32 [T]
    start_logits: np.ndarray    # float32 [T]
    end_logits: np.ndarray      # float32 [T]


def request_arrays(buffer: Any, windows: int, tokens: int) -> RequestArrays:
    """The request's views of ``buffer`` (a segment's memoryview or mmap); ValueError if it is too small."""
    need = request_nbytes(windows, tokens)
    if windows < 1 or tokens < windows or len(buffer) < need:
        raise ValueError(f"a request of {windows} windows and {tokens} tokens needs {need} bytes of shared memory; "
                         f"the segment has {len(buffer)}")
    offsets = np.cumsum([0, 4 * windows, 4 * tokens, 4 * tokens, 4 * tokens])
    views = [np.frombuffer(buffer, dtype=dt, count=n, offset=int(off)) for dt, n, off in
             zip((np.int32, np.int32, np.int32, np.float32, np.float32), (windows, tokens, tokens, tokens, tokens),
                 offsets)]
    return RequestArrays(*views)


class ClientSegment:
    """A client thread's segment, at least ``nbytes`` (and 4 MiB) large; ``close`` unlinks it."""

    def __init__(self, nbytes: int) -> None:
        self._shm: Optional[shared_memory.SharedMemory] = shared_memory.SharedMemory(
            create=True, size=max(int(nbytes), MIN_SEGMENT))
        self.name: str = self._shm.name.lstrip("/")
        self.size: int = self._shm.size

    @property
    def buf(self) -> Any:
        if self._shm is None:
            raise ValueError(f"shared-memory segment {self.name} is closed")
        return self._shm.buf

    def close(self) -> None:
        """Unmap and unlink (views of it must be gone). Idempotent."""
        if self._shm is None:
            return
        shm, self._shm = self._shm, None
        shm.close()
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def map_segment(name: str) -> mmap.mmap:
    """The server's writable mapping of a client's segment (Linux ``/dev/shm``); stays valid after the
    client unlinks it, until the server drops it."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a shared-memory segment name")
    path = os.path.join(SHM_FOLDER, name)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError as e:
        raise ValueError(f"shared-memory segment {path} does not exist (the inference server needs the client on "
                         "the same machine, and Linux shared memory in /dev/shm)") from e
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
