"""The client side of a GPU's inference server: find it (or start it), hand it windows, get logits.

Servers are found by a key: the hash of what they serve (the pickled loader and options) and the
GPU index, so every process of a worker that runs the same model on the same GPU reaches the same
server, and a swapped model gets its own. Under ``<folder>/<key>``: ``.sock`` (the listening socket:
the server is ready), ``.auth`` (the connection key, mode 0600), ``.spec``, ``.log``, ``.pid``,
``.lock`` (held while a server is started, so only one starts).

Failures: a request the server cannot serve comes back as a failed window (its questions are
dead-lettered with the reason); a server that dies mid-request fails that request with
:class:`InferenceServerError` naming its log, and the next request starts a new server; a request
that outlasts ``request_timeout_s`` raises TimeoutError and is cancelled.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from trt_handler.answer_batch import ModelCallError
from trt_handler.qa.types import Window, WindowLogits
from trt_handler.serving.options import ServerOptions
from trt_handler.serving.shm import ClientSegment, request_arrays, request_nbytes

__all__ = ["InferenceClient", "InferenceServerError", "server_base"]

LOGGER = logging.getLogger(__name__)


class InferenceServerError(RuntimeError):
    """The inference server could not be started, or went away during a request."""


def server_base(loader: Callable[[], Any], options: ServerOptions, device: Optional[int]) -> Path:
    """``<folder>/<key>``: where the server of ``loader`` on GPU ``device`` (None: the CPU) keeps its files."""
    served = dataclasses.replace(options, request_timeout_s=None, start_timeout_s=ServerOptions.start_timeout_s)
    digest = hashlib.sha256(pickle.dumps((loader, served), protocol=4)).hexdigest()[:20]  # client-only fields out
    return options.folder() / f"qa-{digest}-{'cpu' if device is None else f'gpu{device}'}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _connect(base: Path) -> Optional[Connection]:
    """A connection to the server at ``base``, or None when none listens there."""
    try:
        authkey = base.with_suffix(".auth").read_bytes()
        return Client(str(base.with_suffix(".sock")), family="AF_UNIX", authkey=authkey)
    except (OSError, EOFError, AuthenticationError):
        return None


def _start(base: Path, spec: bytes, device: Optional[int], options: ServerOptions) -> Connection:
    """Start the server of ``base`` (under its lock: one start per key) and connect once it listens."""
    with _file_lock(base.with_suffix(".lock")):
        conn = _connect(base)  # another process may have started it while this one waited for the lock
        if conn is not None:
            return conn
        base.with_suffix(".sock").unlink(missing_ok=True)  # a dead server's socket
        auth = base.with_suffix(".auth")
        fd = os.open(f"{auth}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        os.replace(f"{auth}.tmp", auth)
        base.with_suffix(".spec").write_bytes(spec)
        env = dict(os.environ)
        if device is not None:
            env["TRT_QA_GPU"] = str(device)  # backends.devices.assign_device: the server's GPU
        log_path = base.with_suffix(".log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "trt_handler.serving.server", str(base)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # outlives the process that started it
        LOGGER.info("started inference server pid %d for %s (log %s)", proc.pid, base.name, log_path)
        deadline = time.monotonic() + options.start_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise InferenceServerError(
                    f"the inference server {base.name} exited with code {code} while loading the model; "
                    f"the end of {log_path}:\n{_tail(log_path)}")
            conn = _connect(base)
            if conn is not None:
                return conn
            if time.monotonic() > deadline:
                proc.kill()
                raise InferenceServerError(f"the inference server {base.name} did not listen within "
                                           f"{options.start_timeout_s:.0f} s; the end of {log_path}:\n{_tail(log_path)}")
            time.sleep(0.05)


class _ThreadState:
    """A client thread's connection, segment and request numbers."""

    def __init__(self) -> None:
        self.conn: Optional[Connection] = None
        self.segment: Optional[ClientSegment] = None
        self.next_id = 0

    def drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None

    def drop_segment(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None


class InferenceClient:
    """A :class:`~trt_handler.answer_batch.WindowModel` whose model runs in the inference server of
    GPU ``device`` (None: a CPU server), started from ``loader`` (a picklable callable returning an
    object with ``runner`` and ``plan``, e.g. a handler's ``load_local``) if none runs yet.

    Thread-safe: each thread has its own connection and segment. Creating one connects (and starts
    the server if needed), so a model that cannot load fails here, not on the first batch.
    """

    def __init__(self, loader: Callable[[], Any], options: ServerOptions = ServerOptions(),
                 device: Optional[int] = None) -> None:
        self._spec = pickle.dumps((loader, options), protocol=4)
        self._options = options
        self._device = device
        self.base = server_base(loader, options, device)
        self._local = threading.local()
        self._states: List[_ThreadState] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        atexit.register(self.close)  # unlink this process's segments (else the resource tracker warns of leaks)
        self._state()  # connect now

    def __getstate__(self) -> Dict[str, Any]:
        raise TypeError("an InferenceClient holds connections: pickle the handler, not the loaded model")

    def _state(self) -> _ThreadState:
        if os.getpid() != self._pid:  # a forked child: the parent's connections and segments are not its own
            self._local, self._states, self._pid = threading.local(), [], os.getpid()
        state: Optional[_ThreadState] = getattr(self._local, "state", None)
        if state is None:
            state = _ThreadState()
            self._local.state = state
            with self._lock:
                self._states.append(state)
        if state.conn is None:
            state.conn = _connect(self.base) or _start(self.base, self._spec, self._device, self._options)
        return state

    def window_logits(self, windows: Sequence[Window]) -> List[Union[WindowLogits, ModelCallError]]:
        if not windows:
            return []
        lengths = np.fromiter((w.length for w in windows), dtype=np.int32, count=len(windows))
        tokens = int(lengths.sum())
        state = self._state()
        need = request_nbytes(len(windows), tokens)
        if state.segment is None or state.segment.size < need:
            state.drop_segment()
            state.segment = ClientSegment(2 * need)
        arrays = request_arrays(state.segment.buf, len(windows), tokens)
        arrays.lengths[:] = lengths
        np.concatenate([w.input_ids for w in windows], out=arrays.input_ids)
        np.concatenate([w.token_type_ids for w in windows], out=arrays.token_type_ids)
        state.next_id += 1
        try:
            failed = self._exchange(state, ("infer", state.next_id, state.segment.name, len(windows), tokens))
        except TimeoutError:
            del arrays
            state.drop_segment()  # the server may still write into it: the next request uses a new one
            raise
        errors: Dict[int, ModelCallError] = {}
        for message, indices in (failed or {}).items():
            error = ModelCallError(message)
            errors.update((int(i), error) for i in indices)
        out: List[Union[WindowLogits, ModelCallError]] = []
        start = 0
        for i, n in enumerate(lengths.tolist()):
            out.append(errors[i] if i in errors else WindowLogits(arrays.start_logits[start:start + n].copy(),
                                                                  arrays.end_logits[start:start + n].copy()))
            start += n
        del arrays  # no view of the segment may outlive the call (it can be replaced)
        return out

    def _exchange(self, state: _ThreadState, message: Tuple[Any, ...]) -> Any:
        """Send ``message`` and wait for its answer: the failed windows of a request, or the stats."""
        conn = state.conn
        assert conn is not None
        timeout = self._options.request_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            conn.send(message)
            while True:
                wait = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
                if wait <= 0:
                    break
                if not conn.poll(wait):
                    continue
                reply = conn.recv()
                if reply[0] == "stats" and message[0] == "stats":
                    return reply[1]
                if reply[0] == "done" and message[0] == "infer" and reply[1] == message[1]:
                    return reply[2]
                # an answer to a request this thread gave up on: ignore it
        except (EOFError, OSError) as e:
            state.drop_connection()
            raise InferenceServerError(
                f"the inference server {self.base.name} went away during a request ({type(e).__name__}: {e}); "
                f"the next request starts a new one. The end of its log {self.base.with_suffix('.log')}:\n"
                f"{_tail(self.base.with_suffix('.log'))}") from e
        if message[0] == "infer":
            with contextlib.suppress(OSError):
                conn.send(("cancel", message[1]))
        raise TimeoutError(f"the inference server {self.base.name} did not answer within {timeout} s; "
                           "the request was cancelled")

    def stats(self) -> Dict[str, Any]:
        """The server's totals (``InferenceServer.stats``)."""
        return dict(self._exchange(self._state(), ("stats",)))

    def server_pid(self) -> Optional[int]:
        try:
            return int(self.base.with_suffix(".pid").read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Close every thread's connection and segment (the server lingers, then exits). Idempotent; in a
        forked child that never used the client, the parent's connections and segments are left alone."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            state.drop_connection()
            state.drop_segment()
        self._local = threading.local()
