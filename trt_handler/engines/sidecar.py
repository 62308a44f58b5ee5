"""The engine sidecar (``<engine>.json``, written by the builder): the one place that reads it.

It says what the engine is (library, version, targets, precision, profiles, ONNX and engine sha256,
I/O) without deserializing it, so a pipeline plans its batches before touching a GPU (local or gs://).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

from trt_handler.planning import ProfileSpec

__all__ = [
    "SidecarError",
    "atomic_write",
    "profiles_from_sidecar",
    "read_engine_profiles",
    "read_sidecar",
]

# A sidecar claiming a larger batch than this is wrong (no QA engine is built that wide).
MAX_BATCH_LIMIT = 4096


class SidecarError(ValueError):
    """A sidecar exists but cannot be used; the message names the file and the fix."""


def read_sidecar(engine_path: str) -> Optional[Dict[str, Any]]:
    """The sidecar of ``engine_path`` as a dict; None when there is none, SidecarError when it
    exists but is not a JSON object (a sidecar that lies is worse than none)."""
    from apache_beam.io.filesystems import FileSystems

    path = engine_path + ".json"
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        try:
            meta = json.load(f)
        except ValueError as e:
            raise SidecarError(
                f"engine sidecar {path} is not JSON ({e}); rebuild the engine with "
                "`python -m trt_handler.engines.build` or delete the sidecar"
            ) from None
    if not isinstance(meta, dict):
        raise SidecarError(f"engine sidecar {path} holds a {type(meta).__name__}, not a JSON object; rebuild the engine")
    return meta


def profiles_from_sidecar(meta: Dict[str, Any], where: str = "the sidecar") -> List[ProfileSpec]:
    """The optimization profiles a sidecar lists; SidecarError unless each is valid, none has max_batch
    above :data:`MAX_BATCH_LIMIT` and their sequence ranges cover 1..max_seq with no gap or overlap."""
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
    if too_big := [p for p in profiles if p.max_batch > MAX_BATCH_LIMIT]:
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
    return None if meta is None else profiles_from_sidecar(meta, engine_path + ".json")


def atomic_write(path: Path, data: bytes | IO[bytes]) -> None:
    """Write ``data`` (bytes, or a binary file streamed in 8 MiB blocks) to a local file via a temporary
    sibling and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, 8 << 20)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
