"""The inference server of one GPU: pools the windows of every client, plans full calls, keeps the
device queue deep, answers each request in its client's shared memory.

Threads: the accept loop (main thread), one reader per client connection, the dispatcher (takes a
pool, plans it with :func:`~trt_handler.answer_batch.plan_model_calls`, pads and submits each call,
at most ``queue_depth`` in flight), and the completer (waits for each call in order, writes its
logits into the clients' segments, answers every request whose last call it was). A call that fails
fails only the windows in it; a client that goes away loses only its own requests.

Run as ``python -m trt_handler.serving.server <base>`` by :mod:`trt_handler.serving.client`: it
unpickles ``<base>.spec`` (a loader returning an object with ``runner`` and ``plan``, and the
:class:`ServerOptions`), loads the model, then listens on ``<base>.sock`` with the key in
``<base>.auth``. A listening socket means the model is loaded.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import mmap
import os
import pickle
import queue
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from trt_handler.answer_batch import AsyncRunner
from trt_handler.planning import BatchPlan, ModelCall, check_logits_shape, pad_call, plan_model_calls
from trt_handler.qa.types import ModelBatch
from trt_handler.serving.options import ServerOptions
from trt_handler.serving.shm import RequestArrays, map_segment, request_arrays

__all__ = ["InferenceServer", "main"]

LOGGER = logging.getLogger(__name__)

# Messages (pickled tuples, never arrays):
#   client -> server: ("infer", request id, segment name, windows, tokens) | ("cancel", request id) | ("stats",)
#   server -> client: ("done", request id, {message: [window index, ...]} of failed windows, or None)
#                   | ("stats", dict)


class PooledWindow(NamedTuple):
    """A window of a request, as views into its client's segment (what ``pad_call`` reads)."""

    length: int
    input_ids: np.ndarray
    token_type_ids: np.ndarray


class _Client:
    """One client connection: its socket (sends under a lock) and its mapped segments."""

    def __init__(self, conn: Connection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.alive = True
        self._send_lock = threading.Lock()
        self._segments: collections.OrderedDict[str, mmap.mmap] = collections.OrderedDict()

    def arrays(self, name: str, windows: int, tokens: int) -> RequestArrays:
        segment = self._segments.pop(name, None) or map_segment(name)
        self._segments[name] = segment  # most recent last; a client uses one at a time, two around a timeout
        while len(self._segments) > 4:
            self._segments.popitem(last=False)  # unmapped once no request views it any more
        return request_arrays(segment, windows, tokens)

    def send(self, message: Tuple[Any, ...]) -> None:
        if not self.alive:
            return
        with self._send_lock:
            try:
                self.conn.send(message)
            except (OSError, EOFError, ValueError):
                self.alive = False  # gone: its requests are dropped, nobody else waits for them


class _Request:
    """A client's batch of windows while the server holds it."""

    __slots__ = ("client", "id", "arrays", "lengths", "starts", "arrived", "calls_left", "failed", "cancelled")

    def __init__(self, client: _Client, request_id: int, arrays: RequestArrays, lengths: np.ndarray) -> None:
        self.client = client
        self.id = request_id
        self.arrays = arrays
        self.lengths = lengths
        self.starts = np.concatenate(([0], np.cumsum(lengths[:-1]))).astype(np.int64)
        self.arrived = time.monotonic()
        self.calls_left = 0
        self.failed: Dict[str, List[int]] = {}
        self.cancelled = False

    @property
    def windows(self) -> int:
        return int(self.lengths.shape[0])

    def window(self, w: int) -> PooledWindow:
        s, n = int(self.starts[w]), int(self.lengths[w])
        return PooledWindow(n, self.arrays.input_ids[s:s + n], self.arrays.token_type_ids[s:s + n])

    @property
    def wanted(self) -> bool:
        return self.client.alive and not self.cancelled


class _Failed:
    """Stands for the pending result of a call that could not even be submitted."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    def result(self) -> Any:
        raise self._error


Member = Tuple[_Request, int]  # (request, window index): one row of a call


class InferenceServer:
    """Serves ``runner`` (a :class:`Runner`; an :class:`AsyncRunner` is submitted to) with ``plan``."""

    def __init__(self, runner: Any, plan: BatchPlan, options: ServerOptions = ServerOptions(),
                 description: str = "") -> None:
        self._runner = runner
        self._plan = plan
        self._options = options
        self.description = description or type(runner).__name__
        self._executor: Optional[ThreadPoolExecutor] = None
        if isinstance(runner, AsyncRunner):
            submit: Callable[[ModelBatch, int], Any] = runner.submit
        else:  # run() blocks: a few threads keep queue_depth calls going
            self._executor = ThreadPoolExecutor(options.queue_depth, thread_name_prefix="qa-server-run")
            submit = functools.partial(self._executor.submit, runner.run)
        self._submit = submit
        self._cond = threading.Condition()
        self._pool: Deque[_Request] = collections.deque()
        self._pooled = 0
        self._slots = threading.Semaphore(options.queue_depth)
        self._done: queue.Queue[Optional[Tuple[ModelCall, List[Member], Any, float]]] = queue.Queue()
        self._stop = threading.Event()
        self._clients = 0
        self._numbers = itertools.count(1)
        self._idle_since = time.monotonic()
        self._in_flight = 0
        self._stats: Dict[str, float] = collections.defaultdict(float)
        self._started = time.monotonic()
        self._last_ready = 0.0

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, listener: Listener, wake: Callable[[], None]) -> None:
        """Accept clients until stopped (idle for ``linger_s``, ``stop()``, SIGTERM); ``wake`` makes one
        connection to ``listener`` so that a blocked accept returns."""
        self._wake = wake
        workers = [threading.Thread(target=self._dispatch_loop, name="qa-server-dispatch", daemon=True),
                   threading.Thread(target=self._complete_loop, name="qa-server-complete", daemon=True),
                   threading.Thread(target=self._watch_idle, name="qa-server-idle", daemon=True)]
        for t in workers:
            t.start()
        try:
            while not self._stop.is_set():
                try:
                    conn = listener.accept()
                except (OSError, EOFError, AuthenticationError) as e:  # a failed handshake, or the listener closed
                    if not self._stop.is_set():
                        LOGGER.warning("a connection was refused: %s", e)
                    continue
                if self._stop.is_set():
                    conn.close()
                    break
                threading.Thread(target=self._serve_client, args=(conn,), name="qa-server-client",
                                 daemon=True).start()
        finally:
            self._shutdown(workers)

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            wake = getattr(self, "_wake", None)
            if wake is not None:
                threading.Thread(target=wake, daemon=True).start()

    def _shutdown(self, workers: Sequence[threading.Thread]) -> None:
        self._stop.set()
        with self._cond:
            left = list(self._pool)
            self._pool.clear()
            self._pooled = 0
            self._cond.notify_all()
        for request in left:
            self._fail(request, range(request.windows), "the inference server is shutting down")
            self._answer(request)
        workers[0].join(timeout=30)  # the dispatcher submits nothing more
        self._done.put(None)
        workers[1].join(timeout=60)  # calls in flight complete and are answered
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        LOGGER.info("inference server stopped: %s", self.stats())

    def _watch_idle(self) -> None:
        while not self._stop.wait(0.2):
            with self._cond:
                idle = self._clients == 0 and not self._pool and self._in_flight == 0
                if not idle:
                    self._idle_since = time.monotonic()
                elif time.monotonic() - self._idle_since >= self._options.linger_s:
                    LOGGER.info("no client for %.0f s: stopping", self._options.linger_s)
                    self.stop()

    def _serve_client(self, conn: Connection) -> None:
        client = _Client(conn, next(self._numbers))
        with self._cond:
            self._clients += 1
        try:
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    break
                self._handle(client, message)
        finally:
            client.alive = False
            with self._cond:
                self._clients -= 1
                mine = [r for r in self._pool if r.client is client]
                for request in mine:
                    self._pool.remove(request)
                    self._pooled -= request.windows
            if mine:
                LOGGER.info("client %d went away: %d pooled requests dropped", client.number, len(mine))
            conn.close()

    def _handle(self, client: _Client, message: Any) -> None:
        kind = message[0] if isinstance(message, tuple) and message else None
        if kind == "infer":
            self._accept_request(client, *message[1:])
        elif kind == "cancel":
            with self._cond:
                for request in list(self._pool):
                    if request.client is client and request.id == message[1]:
                        request.cancelled = True
                        self._pool.remove(request)
                        self._pooled -= request.windows
                self._stats["cancelled"] += 1
        elif kind == "stats":
            client.send(("stats", self.stats()))
        else:
            LOGGER.warning("client %d sent an unknown message %r; ignored", client.number, kind)

    def _accept_request(self, client: _Client, request_id: int, name: str, windows: int, tokens: int) -> None:
        try:
            arrays = client.arrays(name, int(windows), int(tokens))
            lengths = arrays.lengths.astype(np.int64)
            if lengths.min() < 1 or int(lengths.sum()) != tokens:
                raise ValueError(f"window lengths {lengths.min()}..{lengths.max()} summing to {int(lengths.sum())} "
                                 f"do not describe {tokens} tokens")
            if lengths.max() > self._plan.max_seq:
                raise ValueError(f"a window has {lengths.max()} tokens, more than the longest profile "
                                 f"({self._plan.max_seq}); make windows with a max_seq_length the model's profiles cover")
        except ValueError as e:
            client.send(("done", request_id, {f"bad request: {e}": list(range(int(windows)))}))
            return
        request = _Request(client, request_id, arrays, lengths)
        with self._cond:
            self._pool.append(request)
            self._pooled += request.windows
            self._stats["requests"] += 1
            self._cond.notify_all()

    # -- dispatching -----------------------------------------------------------------------------

    def _take(self) -> Optional[List[_Request]]:
        """The next pool (whole requests, oldest first), once ``pool_windows`` wait or the oldest has
        waited ``max_wait_ms``; None when stopping."""
        wait = self._options.max_wait_ms / 1000
        with self._cond:
            while True:
                if self._stop.is_set():
                    return None
                if self._pool:
                    age = time.monotonic() - self._pool[0].arrived
                    if self._pooled >= self._options.pool_windows or age >= wait:
                        break
                    self._cond.wait(wait - age)
                else:
                    self._cond.wait()
            taken: List[_Request] = []
            count = 0
            while self._pool and (not taken or count + self._pool[0].windows <= self._options.max_pool_windows):
                request = self._pool.popleft()
                taken.append(request)
                count += request.windows
            self._pooled -= count
            return taken

    def _dispatch_loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            try:
                self._run_pool(taken)
            except Exception as e:  # noqa: BLE001 - a planning bug must fail these requests, not the server
                LOGGER.exception("pool of %d requests failed", len(taken))
                for request in taken:
                    if request.calls_left == 0:
                        self._fail(request, range(request.windows), f"{type(e).__name__}: {e}")
                        self._answer(request)

    def _run_pool(self, requests: List[_Request]) -> None:
        members: List[Member] = [(r, w) for r in requests for w in range(r.windows)]
        windows = [r.window(w) for r, w in members]
        calls = plan_model_calls([w.length for w in windows], self._plan)
        touched = [{id(members[i][0]): members[i][0] for i in c.indices}.values() for c in calls]
        for requests_of_call in touched:
            for request in requests_of_call:
                request.calls_left += 1
        stats = self._stats
        stats["pools"] += 1
        stats["pooled_windows"] += len(windows)
        stats["max_pool_requests"] = max(stats["max_pool_requests"], len(requests))
        stats["max_pool_clients"] = max(stats["max_pool_clients"], len({id(r.client) for r in requests}))
        for call, requests_of_call in zip(calls, touched):
            rows = [members[i] for i in call.indices]
            if not any(r.wanted for r in requests_of_call):  # every request of it cancelled or its client gone
                self._done.put((call, rows, None, time.monotonic()))
                continue
            self._slots.acquire()
            with self._cond:
                self._in_flight += 1
            t0 = time.monotonic()
            try:
                pending = self._submit(pad_call(windows, call), call.profile)  # the profile the planner chose
            except Exception as e:  # noqa: BLE001 - this call fails, the next ones may not
                pending = _Failed(e)
            self._done.put((call, rows, pending, t0))

    # -- completing ------------------------------------------------------------------------------

    def _complete_loop(self) -> None:
        while True:
            item = self._done.get()
            if item is None:
                return
            call, rows, pending, t0 = item
            if pending is not None:
                self._complete(call, rows, pending, t0)
            done: Dict[int, _Request] = {}
            for request, _ in rows:
                done[id(request)] = request
            for request in done.values():
                request.calls_left -= 1
                if request.calls_left == 0:
                    self._answer(request)

    def _complete(self, call: ModelCall, rows: List[Member], pending: Any, t0: float) -> None:
        try:
            try:
                start, end = (np.asarray(x, dtype=np.float32) for x in pending.result())
                check_logits_shape(start, end, call)
            finally:
                self._slots.release()
                with self._cond:
                    self._in_flight -= 1
        except Exception as e:  # noqa: BLE001 - the windows of this call fail with its reason
            LOGGER.warning("model call %s failed: %s: %s", call.shape, type(e).__name__, e)
            self._stats["failed_calls"] += 1
            message = f"the model call {call.shape} holding this window failed: {type(e).__name__}: {e}"
            for request, w in rows:
                self._fail(request, [w], message)
            return
        ready = time.monotonic()
        real = 0
        for row, (request, w) in enumerate(rows):
            n = int(request.lengths[w])
            real += n
            if request.wanted:
                s = int(request.starts[w])
                request.arrays.start_logits[s:s + n] = start[row, :n]
                request.arrays.end_logits[s:s + n] = end[row, :n]
        stats = self._stats
        stats["calls"] += 1
        stats["windows"] += len(rows)
        stats["rows"] += call.rows
        stats["padded_tokens"] += call.rows * call.seq_len
        stats["real_tokens"] += real
        stats["busy_s"] += ready - max(t0, self._last_ready)
        self._last_ready = ready

    def _fail(self, request: _Request, windows: Any, message: str) -> None:
        request.failed.setdefault(message, []).extend(windows)

    def _answer(self, request: _Request) -> None:
        if request.wanted:
            request.client.send(("done", request.id, request.failed or None))
        request.arrays = None  # type: ignore[assignment]  # the views go: the segment may be unmapped

    def stats(self) -> Dict[str, Any]:
        """Totals since start: requests, pools (and the most requests and clients one pool held), calls,
        windows, rows, padded and real tokens, device busy seconds (calls back to back), failed calls;
        and clients connected, uptime."""
        out: Dict[str, Any] = {k: (round(v, 3) if isinstance(v, float) and not v.is_integer() else int(v))
                               for k, v in self._stats.items()}
        out.update(clients=self._clients, uptime_s=round(time.monotonic() - self._started, 3),
                   description=self.description, pid=os.getpid())
        return out


# -- the server process ------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m trt_handler.serving.server <base>``: load, listen on ``<base>.sock``, serve until idle."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m trt_handler.serving.server <base path> (started by trt_handler.serving.client)",
              file=sys.stderr)
        return 2
    base = Path(args[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    loader, options = pickle.loads(base.with_suffix(".spec").read_bytes())
    authkey = base.with_suffix(".auth").read_bytes()
    t0 = time.monotonic()
    loaded = loader()
    description = f"{type(loaded.runner).__name__} {getattr(loaded.runner, 'device', '')}".strip()
    LOGGER.info("model loaded in %.1f s: %s; plan %s", time.monotonic() - t0, description, loaded.plan)
    server = InferenceServer(loaded.runner, loaded.plan, options, description=description)
    address = str(base.with_suffix(".sock"))
    signal.signal(signal.SIGTERM, _raise_stop)
    listener = Listener(address, family="AF_UNIX", backlog=128, authkey=authkey)
    base.with_suffix(".pid").write_text(str(os.getpid()), encoding="ascii")

    def wake() -> None:
        try:
            Client(address, family="AF_UNIX", authkey=authkey).close()
        except OSError:
            pass

    LOGGER.info("serving on %s", address)
    try:
        server.serve(listener, wake)
    except (_Stop, KeyboardInterrupt) as e:
        LOGGER.info("stopping: %s", e or "interrupted")
        server.stop()
    finally:
        listener.close()  # removes the socket file
        base.with_suffix(".pid").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
