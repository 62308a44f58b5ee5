"""The engine sidecar (``<engine>.json``, written by the builder): the one place that reads it.

The sidecar says what the engine is (library, version, targets, precision, optimization
profiles, ONNX sha256, I/O names, engine size/sha256) without deserializing it, so a pipeline
can plan its batches at construction time, before any GPU is touched. It may live next to a
local engine or on anything Beam's FileSystems reads (gs://).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from trt_handler.engines.profiles import ProfileSpec

__all__ = [
    "MAX_BATCH_LIMIT",
    "SidecarError",
    "atomic_write",
    "profiles_from_sidecar",
    "read_cached_sidecar",
    "read_engine_profiles",
    "read_sidecar",
    "sidecar_path",
]

LOGGER = logging.getLogger(__name__)

# A sidecar claiming a larger batch than this is wrong (no QA engine is built that wide).
MAX_BATCH_LIMIT = 4096


class SidecarError(ValueError):
    """A sidecar exists but cannot be used; the message names the file and the fix."""


def sidecar_path(engine_path: str) -> str:
    """Where the sidecar of ``engine_path`` lives."""
    return engine_path + ".json"


def _fs() -> Any:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _read_text(path: str) -> Optional[str]:
    """The file's text, or None when it does not exist (local or any FileSystems scheme)."""
    fs = _fs()
    if not fs.exists(path):
        return None
    from apache_beam.io.filesystem import CompressionTypes

    with fs.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data: bytes = f.read()
    return data.decode("utf-8")


def read_sidecar(engine_path: str) -> Optional[Dict[str, Any]]:
    """The sidecar of ``engine_path`` as a dict; None when there is none.

    Raises SidecarError when the file exists but is not a JSON object: a sidecar that lies is
    worse than none, so it is never silently ignored.
    """
    path = sidecar_path(engine_path)
    text = _read_text(path)
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise SidecarError(
            f"engine sidecar {path} is not JSON ({e}); rebuild the engine with "
            "`python -m trt_handler.engines.build` or delete the sidecar"
        ) from None
    if not isinstance(meta, dict):
        raise SidecarError(f"engine sidecar {path} holds a {type(meta).__name__}, not a JSON object; rebuild the engine")
    return meta


def profiles_from_sidecar(meta: Dict[str, Any], where: str = "the sidecar") -> List[ProfileSpec]:
    """The optimization profiles a sidecar lists; SidecarError when they are missing or invalid.

    Beyond each profile's own ranges, the limits must be sane: no max_batch above
    :data:`MAX_BATCH_LIMIT`, and the profiles' sequence ranges, ordered, cover 1..max_seq with
    no gap and no overlap (as the builder writes them), so every length up to the largest has
    exactly one profile.
    """
    try:
        profiles = [ProfileSpec(**{k: int(v) for k, v in p.items()}) for p in meta["profiles"]]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SidecarError(
            f"engine sidecar {where} is not valid ({type(e).__name__}: {e}); it needs a \"profiles\" list of "
            "{min_batch, opt_batch, max_batch, min_seq, opt_seq, max_seq} objects - rebuild the engine with "
            "`python -m trt_handler.engines.build` or delete the sidecar"
        ) from None
    if not profiles:
        raise SidecarError(f"engine sidecar {where} lists no profiles; rebuild the engine")
    too_big = [p for p in profiles if p.max_batch > MAX_BATCH_LIMIT]
    if too_big:
        raise SidecarError(
            f"engine sidecar {where} claims max_batch {too_big[0].max_batch} (limit {MAX_BATCH_LIMIT}); "
            "the sidecar is damaged or not this project's - rebuild the engine"
        )
    expected_min = 1
    for p in sorted(profiles, key=lambda q: (q.min_seq, q.max_seq)):
        if p.min_seq != expected_min:
            what = "a gap" if p.min_seq > expected_min else "an overlap"
            raise SidecarError(
                f"engine sidecar {where} has {what} in its sequence ranges: a profile starts at {p.min_seq}, "
                f"expected {expected_min} (profiles must cover 1..max_seq contiguously); rebuild the engine"
            )
        expected_min = p.max_seq + 1
    return profiles


def read_engine_profiles(engine_path: str) -> Optional[List[ProfileSpec]]:
    """Profiles from the sidecar of ``engine_path``; None when there is no sidecar."""
    meta = read_sidecar(engine_path)
    if meta is None:
        return None
    return profiles_from_sidecar(meta, sidecar_path(engine_path))


def read_cached_sidecar(engine_path: str) -> Optional[Dict[str, Any]]:
    """The sidecar of a cached engine, or None unless both the engine and a usable sidecar exist.

    The cache's view: a missing engine, a missing sidecar, or a sidecar that is not a JSON object
    (:class:`SidecarError`) all mean "not cached", so the caller rebuilds instead of failing.
    """
    if not _fs().exists(engine_path):
        return None
    try:
        return read_sidecar(engine_path)
    except SidecarError as exc:
        LOGGER.warning("%s; rebuilding the engine", exc)
        return None


def atomic_write(path: Path, data: bytes) -> None:
    """Write a local file via a temporary sibling and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
