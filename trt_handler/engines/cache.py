"""Engines cached by what decides whether they run: GPU, library and version, precision, ONNX, profiles.

A TensorRT engine runs only with the library version that built it and (for full TensorRT) on the
GPU architecture it was built on, so a worker that finds no engine for its GPU builds one and
stores it for the next worker. :func:`ensure_engine` is that step; :func:`engine_key` is its pure
part, testable without a GPU by passing a :class:`~trt_handler.engines.library.GpuDescriptor`.

Layout: ``<cache_dir>/engines/<label>-<key>.engine`` plus ``<...>.engine.json`` (the build
sidecar), where ``label`` is the ONNX's folder name (readability only) and ``key`` starts with the
GPU (or the TensorRT-RTX targets), library, version and precision and ends in a digest of
everything that changes the engine. ``cache_dir`` is a local folder or any URL Beam's FileSystems
opens (gs://).

Concurrency: locally, builders of one key take turns on an advisory lock (``<engine>.lock``,
fcntl), so the SDK harness processes of one Dataflow worker build a missing engine once and the
others wait and reuse it; the engine and sidecar are written to temporary names and renamed
(sidecar first, engine last), so a reader never sees half an engine. On GCS an object write is atomic but there is no rename
guard: concurrent builders of one key each upload, and the last writer wins, which is harmless
because they built the same thing; a reader can briefly see a new sidecar beside the previous
engine of the same key, which is equivalent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from trt_handler.engines.build import (
    BuildOptions,
    build_serialized,
    onnx_sha256,
    write_engine_files,
)
from trt_handler.engines.library import (
    GpuDescriptor,
    library_name,
    library_version,
    load_trt,
    local_gpu,
)
from trt_handler.engines.sidecar import read_cached_sidecar

__all__ = ["KEY_FORMAT", "build_into_cache", "engine_key", "engine_location", "ensure_engine"]

LOGGER = logging.getLogger(__name__)

# Bump when the build recipe changes what an engine is for the same inputs (invalidates caches).
KEY_FORMAT = 1


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")[:limit] or "x"


def engine_key(
    onnx_sha256: str,
    library: str,
    version: str,
    options: BuildOptions,
    gpu: GpuDescriptor | None,
) -> str:
    """File-name-safe cache key, e.g. ``nvidia-l4-sm89-tensorrt_rtx-1.7.1.116-fp16-3f2a...-9c1e...``.

    ``gpu`` is the GPU the engine is built for (always for TensorRT; for TensorRT-RTX when built
    on a worker); None means an ahead-of-time TensorRT-RTX build, named by its targets instead.
    """
    if gpu is not None:
        where = f"{_slug(gpu.name)}-{gpu.sm}"
    else:
        where = "aot-" + ("-".join(options.targets) or "default")
    fields = {
        "format": KEY_FORMAT,
        "gpu": gpu.to_dict() if gpu is not None else None,
        "library": library,
        "version": version,
        "onnx_sha256": onnx_sha256,
        **options.key_fields(),
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return f"{where}-{library}-{_slug(version, 20)}-{options.precision}-{onnx_sha256[:12]}-{digest[:12]}"


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _join(base: str, *parts: str) -> str:
    if _is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base.removeprefix("file://"), *parts))


def engine_location(cache_dir: str | os.PathLike[str], onnx_path: str | os.PathLike[str], key: str) -> str:
    """Where the engine for ``key`` lives in ``cache_dir`` (its sidecar is this + ".json")."""
    onnx = os.fspath(onnx_path)
    folder = onnx.rstrip("/").rsplit("/", 2)[-2] if _is_remote(onnx) else Path(onnx).resolve().parent.name
    return _join(os.fspath(cache_dir), "engines", f"{_slug(folder)}-{key}.engine")


def _local_onnx(onnx_path: str) -> str:
    """``onnx_path`` itself when local; a gs:// (or other remote) ONNX is copied once into the
    temp folder, because the ONNX parser and the hash read local files."""
    if not _is_remote(onnx_path):
        return onnx_path.removeprefix("file://")
    folder = Path(tempfile.gettempdir()) / "trt-qa-onnx" / hashlib.sha256(onnx_path.encode()).hexdigest()[:16]
    local = folder / onnx_path.rsplit("/", 1)[-1]
    if local.is_file():
        return str(local)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, _filesystems().open(onnx_path) as src:
            shutil.copyfileobj(src, out, 8 << 20)
        os.replace(tmp, local)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    LOGGER.info("copied %s to %s for the engine build", onnx_path, local)
    return str(local)


def _filesystems() -> Any:
    """Beam's FileSystems (gs:// and friends), imported only for remote cache dirs."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


@contextlib.contextmanager
def _build_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock for building ``path`` (local caches on POSIX; else no-op)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock, writes stay atomic
        fcntl = None  # type: ignore[assignment]
    if fcntl is None or _is_remote(path):
        yield
        return
    lock = Path(path + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _engine_digest(path: str) -> tuple[int, str]:
    """(size, sha256) of the engine file at ``path`` (local or through Beam's FileSystems)."""
    h = hashlib.sha256()
    size = 0
    with (_filesystems().open(path) if _is_remote(path) else open(path, "rb")) as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _cached(path: str) -> dict[str, Any] | None:
    """The sidecar of an intact cached engine; None when the engine or its sidecar is missing or
    unusable, or the engine's size or sha256 differ from what its sidecar recorded (a truncated
    upload, a damaged disk): such an engine is rebuilt, never served."""
    sidecar = read_cached_sidecar(path)
    if sidecar is None:
        return None
    want_size, want_sha = sidecar.get("engine_bytes"), sidecar.get("engine_sha256")
    if want_size is None or want_sha is None:
        LOGGER.warning("cached sidecar %s.json records no engine size/sha256; rebuilding the engine", path)
        return None
    size, sha = _engine_digest(path)
    if size != want_size or sha != want_sha:
        LOGGER.warning(
            "cached engine %s is damaged (%d bytes, sha256 %s..., its sidecar says %s bytes, %s...); rebuilding it",
            path, size, sha[:12], want_size, str(want_sha)[:12],
        )
        return None
    return sidecar


def _store(path: str, data: bytes, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    if not _is_remote(path):
        return write_engine_files(path, data, sidecar)
    fs = _filesystems()
    out = dict(sidecar, engine=path.rsplit("/", 1)[-1])
    for target, payload in ((path + ".json", json.dumps(out, indent=2, sort_keys=True).encode()), (path, data)):
        with fs.create(target) as f:  # last writer wins (see module docstring)
            f.write(payload)
    return out


def build_into_cache(
    onnx_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    options: BuildOptions,
    *,
    gpu: GpuDescriptor | None = None,
    force: bool = False,
    module: ModuleType | None = None,
) -> tuple[str, dict[str, Any]]:
    """(engine path, sidecar): the cached engine for these inputs, built and stored on a miss
    (a hit's sidecar carries ``cache_hit: True``).

    ``gpu`` None keys the engine by its TensorRT-RTX targets (ahead-of-time builds); full TensorRT
    always builds for, and is keyed by, the local GPU.
    """
    trt = module if module is not None else load_trt(options.library)
    lib, version = library_name(trt), library_version(trt)
    options.check_library(lib)
    if lib == "tensorrt" and gpu is None:
        gpu = local_gpu()
        if gpu is None:
            raise RuntimeError(
                "TensorRT builds engines on the GPU they run on, and no GPU is usable here. Fix: build on the "
                "GPU machine (NGC container), or use --library tensorrt_rtx to build ahead of time without a GPU."
            )
    local = _local_onnx(os.fspath(onnx_path))
    key = engine_key(onnx_sha256(local), lib, version, options, gpu)
    path = engine_location(cache_dir, onnx_path, key)
    cached = None if force else _cached(path)
    if cached is not None:
        LOGGER.info("engine cache hit: %s", path)
        return path, dict(cached, cache_hit=True)
    if lib == "tensorrt" and gpu is not None and options.timing_cache is None and not _is_remote(os.fspath(cache_dir)):
        timing = _join(os.fspath(cache_dir), "timing", f"{_slug(gpu.name)}-{gpu.sm}-{lib}-{_slug(version, 20)}.cache")
        options = replace(options, timing_cache=timing)
    with _build_lock(path):
        cached = None if force else _cached(path)  # another process may have built it meanwhile
        if cached is not None:
            LOGGER.info("engine built by another process meanwhile: %s", path)
            return path, dict(cached, cache_hit=True)
        LOGGER.info("engine cache miss: building %s", path)
        data, sidecar = build_serialized(local, options, module=trt)
        return path, _store(path, data, sidecar)


def ensure_engine(
    onnx_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    options: BuildOptions | None = None,
    *,
    gpu: GpuDescriptor | None = None,
) -> str:
    """Path of an engine for ``onnx_path`` (local or gs://) that runs on this machine's GPU, built
    on a cache miss.

    TensorRT-RTX engines are built for exactly this GPU's architecture unless ``options.targets``
    names several (which must include it). ``gpu`` overrides the detected GPU (tests, or a
    build box preparing engines for another GPU with TensorRT-RTX).
    """
    if gpu is None:
        gpu = local_gpu()
    if gpu is None:
        from trt_handler.engines.cuda_runtime import unavailable_reason

        raise RuntimeError(
            f"ensure_engine builds engines for this machine's GPU, and none is usable here ({unavailable_reason()}). "
            "Fix: call it on the GPU worker, or build ahead of time with `python -m trt_handler.engines.build --library "
            "tensorrt_rtx --targets sm75,sm89 ...` and pass that engine file."
        )
    options = options if options is not None else BuildOptions()
    trt = load_trt(options.library)
    if library_name(trt) == "tensorrt_rtx":
        if not options.targets:
            options = replace(options, targets=(gpu.sm,))
        elif gpu.sm not in options.targets and "current" not in options.targets:
            raise ValueError(
                f"targets {', '.join(options.targets)} do not include this GPU ({gpu.name}, {gpu.sm}); "
                f"add {gpu.sm} or leave targets empty to build for this GPU"
            )
    return build_into_cache(onnx_path, cache_dir, options, gpu=gpu, module=trt)[0]
