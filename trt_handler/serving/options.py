"""The inference server's settings: how long and how large it pools, how deep it queues, when it goes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["ServerOptions"]


@dataclass(frozen=True)
class ServerOptions:
    """Settings of a GPU's inference server and of its clients.

    ``pool_windows``: the server starts a pool once this many windows wait, or once the oldest
    request has waited ``max_wait_ms``; a pool takes at most ``max_pool_windows`` windows (whole
    requests), sorted by length and cut into model calls by the planner. ``queue_depth``: model calls
    in flight on the device at once (copies of one overlap compute of another). ``request_timeout_s``:
    a client gives up on a request after this long (None: never; a dead server is noticed at once
    either way). ``linger_s``: the server exits this long after its last client left.
    ``start_timeout_s``: how long a client waits for a new server to load its model. ``directory``:
    where servers keep their sockets and logs (default ``<tmp>/trt-qa-servers-<uid>``).
    """

    pool_windows: int = 2048
    max_wait_ms: float = 20.0
    max_pool_windows: int = 8192
    queue_depth: int = 3
    request_timeout_s: Optional[float] = 600.0
    linger_s: float = 60.0
    start_timeout_s: float = 900.0
    directory: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("pool_windows", "max_pool_windows", "queue_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"server {name} must be a positive int, got {value!r}")
        if self.max_pool_windows < self.pool_windows:
            raise ValueError(f"server max_pool_windows ({self.max_pool_windows}) must be at least pool_windows "
                             f"({self.pool_windows})")
        for name in ("max_wait_ms", "linger_s"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"server {name} must be zero or more, got {getattr(self, name)!r}")
        for name in ("request_timeout_s", "start_timeout_s"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"server {name} must be positive seconds, got {value!r}")

    def folder(self) -> Path:
        """Where servers keep sockets, logs and specs: private to this user (mode 0700)."""
        path = Path(self.directory) if self.directory else Path(tempfile.gettempdir()) / f"trt-qa-servers-{os.getuid()}"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path
