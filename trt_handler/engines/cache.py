"""Engines cached by what decides whether they run: GPU, library and version, precision, ONNX, profiles.

:func:`ensure_engine` builds and stores on a miss; :func:`engine_key` is its pure part. Layout:
``<cache_dir>/engines/<onnx folder>-<key>.engine`` + ``.engine.json`` (sidecar), ``cache_dir`` local or
gs://. Locally, builders of one key take turns on an fcntl lock (``<engine>.lock``: a worker's SDK harness
processes build once) and files are renamed into place; on GCS object writes are atomic but unguarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from trt_handler.engines.builder import BuildOptions, build_serialized, onnx_sha256, resolve_library, write_engine_files
from trt_handler.engines.library import GpuDescriptor, library_name, load_trt, local_gpu
from trt_handler.engines.sidecar import SidecarError, atomic_write, engine_file_problem, read_sidecar

__all__ = ["build_into_cache", "engine_key", "engine_location", "ensure_engine"]

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
    """File-name-safe cache key, e.g. ``nvidia-l4-sm89-tensorrt_rtx-1.7.1.116-fp16-3f2a...-9c1e...``;
    ``gpu`` None is an ahead-of-time TensorRT-RTX build, named by its targets instead."""
    where = f"{_slug(gpu.name)}-{gpu.sm}" if gpu is not None else "aot-" + ("-".join(options.targets) or "default")
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
    from apache_beam.io.filesystems import FileSystems

    if not _is_remote(onnx_path):
        return onnx_path.removeprefix("file://")
    folder = Path(tempfile.gettempdir()) / "trt-qa-onnx" / hashlib.sha256(onnx_path.encode()).hexdigest()[:16]
    local = folder / onnx_path.rsplit("/", 1)[-1]
    if not local.is_file():
        with FileSystems.open(onnx_path) as src:
            atomic_write(local, src)
        LOGGER.info("copied %s to %s for the engine build", onnx_path, local)
    return str(local)


@contextlib.contextmanager
def _build_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock for building ``path`` (local caches; remote ones: no-op)."""
    if _is_remote(path):
        yield
        return
    import fcntl

    lock = Path(path + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def _cached(path: str) -> dict[str, Any] | None:
    """The sidecar of an intact cached engine; None (rebuild it) when the engine or its sidecar is
    missing or unusable, or the engine's sha256 is not the one its sidecar recorded."""
    from apache_beam.io.filesystems import FileSystems

    try:
        sidecar = read_sidecar(path) if FileSystems.exists(path) else None
    except SidecarError as exc:
        LOGGER.warning("%s; rebuilding the engine", exc)
        return None
    if sidecar is None:
        return None
    problem = engine_file_problem(path, sidecar)
    if problem is not None:
        LOGGER.warning("cached engine %s is damaged or unrecorded (%s); rebuilding it", path, problem)
        return None
    return sidecar


def build_into_cache(
    onnx_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    options: BuildOptions,
    *,
    gpu: GpuDescriptor | None = None,
    force: bool = False,
    module: ModuleType | None = None,
) -> tuple[str, dict[str, Any]]:
    """(engine path, sidecar) of the cached engine, built and stored on a miss (a hit's sidecar has
    ``cache_hit: True``). ``gpu`` None: TensorRT-RTX ahead of time; full TensorRT always uses the local GPU."""
    trt, lib, version = resolve_library(options, module)
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
        return path, write_engine_files(path, data, sidecar)


def ensure_engine(
    onnx_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    options: BuildOptions | None = None,
    *,
    gpu: GpuDescriptor | None = None,
) -> str:
    """Path of an engine for ``onnx_path`` (local or gs://) that runs on this machine's GPU (or ``gpu``),
    built on a miss; TensorRT-RTX targets this GPU's architecture unless ``options.targets`` (incl. it) say."""
    gpu = gpu if gpu is not None else local_gpu()
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
