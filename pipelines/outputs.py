"""A batch run's output files, written so that no run loses data (local folders and gs://).

* **Staged, then committed.** The pipeline writes into a staging folder next to the outputs,
  ``<folder>/.qa-staging-<name>-<hash>-<run>/``; only when it has finished does :meth:`OutputRun.commit`
  move its files to ``<prefix>...`` and delete the earlier run's files of that prefix that it did not
  replace (as Beam's own file sinks finalize). A run that fails or is killed (SIGTERM, a preempted VM)
  leaves the earlier outputs whole; the next run on the prefix deletes its staging folder, or, when
  it was killed while committing (a ``COMMIT.json`` in it), finishes that commit first.
* **One live run per prefix.** ``<prefix>.lock`` next to the outputs names the run holding it (pid,
  host, start, heartbeat); a second run is refused in one line. Locally the lock is an ``flock``, which
  dies with its process; on gs:// it is an object created only if absent (a generation precondition),
  its heartbeat rewritten every :data:`HEARTBEAT_SECS`; one not beaten for :data:`STALE_SECS` (or whose
  process is gone from this host) belongs to a dead run and is taken over.
* **Paths as written.** Nothing here globs: earlier outputs are the folder's files whose names are the
  prefix followed by an output tail, listed and deleted by exact name, so ``*``, ``?``, ``[`` or spaces
  in a prefix are plain characters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Pattern

from apache_beam.io.filesystems import FileSystems

__all__ = ["HEARTBEAT_SECS", "STALE_SECS", "OutputBusy", "OutputRun", "escape_glob", "has_glob"]

LOGGER = logging.getLogger(__name__)

HEARTBEAT_SECS = 60.0  # a gs:// lock's heartbeat is rewritten this often
STALE_SECS = 600.0  # a gs:// lock not beaten for this long belongs to a dead run
COMMIT_MARK = "COMMIT.json"
_GLOB = re.compile(r"([*?\[])")


def has_glob(path: str) -> bool:
    """Whether ``path`` holds a glob character (``*``, ``?``, ``[``) of Beam's ``FileSystems.match``."""
    return _GLOB.search(path) is not None


def escape_glob(path: str) -> str:
    """``path`` as a Beam ``FileSystems.match`` pattern that matches that one name (``a[1]*`` -> ``a[[]1][*]``)."""
    return _GLOB.sub(r"[\1]", path)


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def _gcs() -> Any:
    from apache_beam.io.gcp import gcsio

    return gcsio.GcsIO()


class OutputBusy(ValueError):
    """Another live run holds the prefix's lock; the message (one line) names it."""


# --- files, by exact name ----------------------------------------------------------------------------


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if not _is_local(folder) else os.path.join(folder, name)


def _split(path: str) -> tuple[str, str]:
    if _is_local(path):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    folder, _, name = path.rpartition("/")
    return folder, name


def _list_names(folder: str, start: str) -> Dict[str, str]:
    """{name: path} of the files and folders directly in ``folder`` whose names start with ``start``
    (gs://: the objects under ``folder/start``, by their first path component)."""
    if _is_local(folder):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return {}
        return {n: os.path.join(folder, n) for n in names if n.startswith(start)}
    out: Dict[str, str] = {}
    base = folder.rstrip("/") + "/"
    for path, _ in _gcs().list_files(base + start):
        name = path[len(base):].split("/", 1)[0]
        out[name] = base + name
    return out


def _files_under(folder: str) -> List[str]:
    """Every file under ``folder`` (recursively), by path."""
    if _is_local(folder):
        return [os.path.join(root, f) for root, _, files in os.walk(folder) for f in files]
    return [path for path, _ in _gcs().list_files(folder.rstrip("/") + "/")]


def _delete(paths: List[str]) -> None:
    """Delete these files by exact name (Beam's gs:// delete would glob them)."""
    local = [p for p in paths if _is_local(p)]
    for p in local:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
    remote = [p for p in paths if not _is_local(p)]
    for start in range(0, len(remote), 100):
        for path, error in _gcs().delete_batch(remote[start:start + 100]):
            if error is not None and "404" not in str(error) and "NotFound" not in type(error).__name__:
                raise OSError(f"could not delete {path}: {error}")


def _remove_folder(folder: str) -> None:
    if _is_local(folder):
        shutil.rmtree(folder, ignore_errors=True)
    else:
        _delete(_files_under(folder))


def _write(path: str, data: bytes) -> None:
    if _is_local(path):
        from trt_handler.engines.sidecar import atomic_write

        atomic_write(Path(path), data)
    else:
        with FileSystems.create(path) as f:
            f.write(data)


def _read(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return bytes(f.read())


def _rename(pairs: List[tuple[str, str]]) -> None:
    """Move files to their new names, replacing files of those names (local: atomic rename)."""
    for src, dst in pairs:
        if _is_local(src):
            os.replace(src, dst)
    remote = [(s, d) for s, d in pairs if not _is_local(s)]
    if remote:
        FileSystems.rename([s for s, _ in remote], [d for _, d in remote])  # copy + delete, by exact name


# --- the lock ------------------------------------------------------------------------------------------


@dataclass
class Holder:
    """Who holds a lock, as its file says."""

    run: str = "?"
    pid: int = -1
    host: str = "?"
    started: float = 0.0
    heartbeat: float = 0.0

    @classmethod
    def parse(cls, data: bytes) -> Holder:
        try:
            meta = json.loads(data.decode("utf-8"))
            return cls(str(meta["run"]), int(meta["pid"]), str(meta["host"]), float(meta["started"]),
                       float(meta["heartbeat"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()  # unreadable: a lock being written, or not ours

    def dump(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "?"
        beat = f", last heartbeat {now - self.heartbeat:.0f} s ago" if self.heartbeat else ""
        return f"pid {self.pid} on host {self.host}, started {started}{beat}"

    def dead(self, now: float, stale_after: float) -> bool:
        """Whether this holder's run is gone: its process is not alive on this host, or no heartbeat for
        ``stale_after`` seconds (a lock that does not say whose it is counts as beaten when written)."""
        if self.host == socket.gethostname() and self.pid > 0 and not _alive(self.pid):
            return True
        return now - self.heartbeat > stale_after


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _busy(prefix: str, lock: str, holder: Holder) -> OutputBusy:
    return OutputBusy(
        f"--output {prefix}: another run ({holder.describe(time.time())}) is writing outputs with this prefix "
        f"(lock {lock}); wait for it to finish, stop it, or choose another --output")


class _LocalLock:
    """An ``flock`` on ``<prefix>.lock``: the kernel releases it when its process dies, however it dies."""

    def __init__(self, path: str, prefix: str, me: Holder) -> None:
        self.path, self.prefix, self.me = path, prefix, me
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        import fcntl

        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Holder.parse(os.pread(fd, 4096, 0))
                os.close(fd)
                raise _busy(self.prefix, self.path, holder) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its last holder unlinked as we opened it
                os.ftruncate(fd, 0)
                os.pwrite(fd, self.me.dump(), 0)
                self._fd = fd
                return
            os.close(fd)
        raise OSError(f"could not take the lock {self.path}: it keeps being replaced")

    def lost(self) -> bool:
        return False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


class _GcsLock:
    """A gs:// object created only if absent (``if_generation_match=0``), its heartbeat rewritten every
    ``heartbeat`` seconds under a precondition on its own generation; one whose holder is dead is taken
    over under a precondition on the dead holder's generation, so of two runs only one gets it."""

    def __init__(self, path: str, prefix: str, me: Holder, *, heartbeat: float, stale_after: float) -> None:
        from apache_beam.io.gcp import gcsio

        bucket, self._name = gcsio.parse_gcs_path(path)
        self.path, self.prefix, self.me = path, prefix, me
        self._bucket = _gcs().client.bucket(bucket)
        self._heartbeat, self._stale_after = heartbeat, stale_after
        self._generation: Optional[int] = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _blob(self) -> Any:
        """A new handle on the lock object (one that was reloaded downloads through its media link, which
        some emulators do not escape)."""
        return self._bucket.blob(self._name)

    def _put(self, generation: int) -> None:
        blob = self._blob()
        blob.upload_from_string(self.me.dump(), content_type="application/json", if_generation_match=generation)
        self._generation = int(blob.generation if blob.generation is not None else
                               self._bucket.get_blob(self._name).generation)

    def _read(self) -> tuple[bytes, int]:
        """(the lock's content, its generation), or (b"", 0) when there is none."""
        current = self._bucket.get_blob(self._name)
        if current is None:
            return b"", 0
        generation = int(current.generation)
        return self._blob().download_as_bytes(if_generation_match=generation), generation

    def acquire(self) -> None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        for _ in range(5):
            try:  # the holder now, if any (read first: not every GCS emulator honours preconditions)
                data, generation = self._read()
            except (NotFound, PreconditionFailed):
                continue  # deleted or rewritten between the two reads: look again
            if generation:
                holder = Holder.parse(data)
                if not holder.dead(time.time(), self._stale_after):
                    raise _busy(self.prefix, self.path, holder)
                LOGGER.warning("taking over the lock %s of a dead run (%s)", self.path, holder.describe(time.time()))
            try:
                self._put(generation)
            except PreconditionFailed:
                continue  # another run wrote it meanwhile: look again
            if Holder.parse(self._read()[0]).run == self.me.run:
                self._thread = threading.Thread(target=self._beat, name="qa-output-lock", daemon=True)
                self._thread.start()
                return
        raise OSError(f"could not take the lock {self.path}: it keeps changing hands")

    def _beat(self) -> None:
        from google.api_core.exceptions import GoogleAPICallError

        while not self._stop.wait(self._heartbeat):
            self.me.heartbeat = time.time()
            try:
                self._put(self._generation or 0)
            except GoogleAPICallError as exc:  # PreconditionFailed: another run took it over
                LOGGER.error("lost the output lock %s (%s); this run will not replace the outputs", self.path, exc)
                self._lost.set()
                return

    def lost(self) -> bool:
        return self._lost.is_set()

    def release(self) -> None:
        from google.api_core.exceptions import GoogleAPICallError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._generation is not None and not self._lost.is_set():
            with contextlib.suppress(GoogleAPICallError):
                self._blob().delete(if_generation_match=self._generation)
        self._generation = None


# --- a run's outputs -----------------------------------------------------------------------------------


@dataclass
class OutputRun:
    """The outputs of one run at ``prefix``: ``with OutputRun(prefix, tails) as out:`` takes the lock,
    cleans after dead runs and makes the staging folder; the pipeline writes to :meth:`staged` paths;
    :meth:`commit` publishes them once the pipeline has finished. Leaving the block releases the lock
    (and, unless committed, deletes this run's staging folder).

    ``tails``: what may follow the prefix in an output file's name (``-00000-of-00002.jsonl``, ...):
    the earlier outputs a commit replaces are the folder's files named prefix + such a tail.
    """

    prefix: str
    tails: Pattern[str]
    heartbeat: float = HEARTBEAT_SECS
    stale_after: float = STALE_SECS
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    committed: Optional[List[str]] = None

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.endswith(("/", os.sep)):
            raise ValueError(f"--output {self.prefix!r} names a folder; give a file prefix such as "
                             f"{self.prefix or 'out/'}answers (files are written as PREFIX-00000-of-00001.jsonl)")
        self.folder, self.name = _split(self.prefix)
        if not self.name:
            raise ValueError(f"--output {self.prefix!r} has no file name part; give one such as out/answers")
        if not _is_local(self.prefix) and "[" in self.folder:
            raise ValueError(f"--output {self.prefix}: a gs:// folder with '[' in its name cannot be staged (Beam's "
                             "file sinks read it as a pattern); choose a folder without '['")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)[:40]
        self._staging_start = f".qa-staging-{slug}-{hashlib.sha256(self.name.encode()).hexdigest()[:10]}-"
        self.staging = _join(self.folder, self._staging_start + self.run)
        self._alias: Optional[str] = None
        self._lock: Any = None
        self._marked = False

    @property
    def lock_path(self) -> str:
        return self.prefix + ".lock"

    def __enter__(self) -> OutputRun:
        if _is_local(self.prefix):
            self._make_local_folder()
        me = Holder(self.run, os.getpid(), socket.gethostname(), time.time(), time.time())
        self._lock = (_LocalLock(self.lock_path, self.prefix, me) if _is_local(self.prefix) else
                      _GcsLock(self.lock_path, self.prefix, me, heartbeat=self.heartbeat, stale_after=self.stale_after))
        self._lock.acquire()
        try:
            self._clean_after_dead_runs()
            if _is_local(self.staging):
                os.makedirs(self.staging)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self._marked:
                _remove_folder(self.staging)
        finally:
            if self._alias is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._alias)
                    os.rmdir(os.path.dirname(self._alias))
            self._lock.release()

    def _make_local_folder(self) -> None:
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--output {self.prefix}: cannot create the folder {self.folder} ({exc.strerror})") from None
        if not os.access(self.folder, os.W_OK):
            raise ValueError(f"--output {self.prefix}: the folder {self.folder} is not writable")

    def staged(self, tail: str) -> str:
        """The path the pipeline writes the output ``<prefix><tail>`` to (a Beam file prefix, free of
        glob characters: a local staging folder under a folder named with them is reached through a link)."""
        base = self.staging
        if _is_local(base) and has_glob(base):
            if self._alias is None:
                self._alias = os.path.join(tempfile.mkdtemp(prefix="qa-staging-"), "out")
                os.symlink(self.staging, self._alias)
            base = self._alias
        return _join(base, "out" + tail)

    def _earlier_outputs(self) -> Dict[str, str]:
        return {n: p for n, p in _list_names(self.folder, self.name).items() if self.tails.fullmatch(n[len(self.name):])}

    def commit(self) -> List[str]:
        """Publish the staged files as ``<prefix><tail>`` and delete the earlier outputs of the prefix that
        they did not replace; returns the published paths. Refused (RuntimeError) when the lock was lost."""
        if self._lock.lost():
            raise RuntimeError(f"this run lost its lock {self.lock_path} to another run, so it does not replace the "
                               f"outputs; its files stay in {self.staging} until the next run on the prefix")
        names = sorted(self.name + n[len("out"):] for n in _list_names(self.staging, "out"))
        _write(_join(self.staging, COMMIT_MARK), json.dumps({"prefix": self.prefix, "files": names}).encode())
        self._marked = True  # from here on, a failure leaves the staging folder for the next run to finish
        self._finish_commit(self.staging, names)
        self.committed = [_join(self.folder, n) for n in names]
        return self.committed

    def _finish_commit(self, staging: str, names: List[str]) -> None:
        """Move what is still staged into place, delete the earlier outputs not replaced, drop the folder."""
        left = _list_names(staging, "out")
        moves = [(left["out" + n[len(self.name):]], _join(self.folder, n)) for n in names
                 if "out" + n[len(self.name):] in left]
        _rename(moves)
        _delete([p for n, p in self._earlier_outputs().items() if n not in set(names)])
        _remove_folder(staging)

    def _clean_after_dead_runs(self) -> None:
        """With the lock held, every other staging folder of this prefix is a dead run's: finish its commit
        if it had begun one, else delete it."""
        for name, path in sorted(_list_names(self.folder, self._staging_start).items()):
            if name == _split(self.staging)[1]:
                continue
            mark = _join(path, COMMIT_MARK)
            if FileSystems.exists(mark):
                names = json.loads(_read(mark).decode("utf-8"))["files"]
                LOGGER.warning("finishing the commit of a run killed while committing (%s)", path)
                self._finish_commit(path, names)
            else:
                LOGGER.warning("deleting the staging folder of a run that did not finish: %s", path)
                _remove_folder(path)
