"""The engine sidecar (``<engine>.json``, written by the builder): the one place that reads it.

It says what the engine is (library, version, targets, precision, profiles, ONNX and engine sha256,
I/O) without deserializing it, so a pipeline plans its batches before touching a GPU (local or gs://).
"""

from __future__ import annotations

import hashlib
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
    "bundle_record",
    "engine_file_problem",
    "profiles_from_sidecar",
    "read_engine_profiles",
    "read_sidecar",
    "sha256_of",
    "verify_engine_file",
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


def sha256_of(path: str) -> str:
    """sha256 of a local or remote file (FileSystems, no decompression), read in 8 MiB blocks."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    h = hashlib.sha256()
    local = "://" not in path or path.startswith("file://")
    with (open(path.removeprefix("file://"), "rb") if local
          else FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)) as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def engine_file_problem(engine_path: str, sidecar: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the engine file against its sidecar (size, then sha256), or None when it is the
    engine the sidecar describes; a sidecar that records neither says so."""
    from apache_beam.io.filesystems import FileSystems

    want_size, want_sha = sidecar.get("engine_bytes"), sidecar.get("engine_sha256")
    if not isinstance(want_sha, str) or len(want_sha) != 64:
        return "its sidecar records no engine_sha256"
    got_size = FileSystems.get_filesystem(engine_path).size(engine_path)  # by exact name (match would glob)
    if isinstance(want_size, int) and got_size != want_size:
        return f"it is {got_size:,} bytes, its sidecar recorded {want_size:,}"
    got = sha256_of(engine_path)
    return None if got == want_sha else f"it has sha256 {got[:16]}..., its sidecar recorded {want_sha[:16]}..."


def verify_engine_file(engine_path: str, sidecar: Dict[str, Any]) -> None:
    """SidecarError (cause and fix) unless the engine file has the size and sha256 its sidecar recorded."""
    problem = engine_file_problem(engine_path, sidecar)
    if problem is not None:
        raise SidecarError(
            f"engine {engine_path} is not the engine its sidecar {engine_path}.json describes: {problem}. Cause: "
            "the engine was rebuilt or copied without its sidecar, or the file is damaged or cut short. Fix: copy "
            "the engine together with its .json sidecar, or build it again with `python -m trt_handler.engines.build`."
        )


def bundle_record(onnx_path: str | os.PathLike[str]) -> Dict[str, Any]:
    """The ``tokenizer`` and ``canaries`` record of the model bundle an engine is built from (the
    export.json beside its ONNX), for the engine's sidecar; empty when the ONNX has no such bundle."""
    meta_path = Path(onnx_path).parent / "export.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: meta[k] for k in ("tokenizer", "canaries") if isinstance(meta, dict) and meta.get(k) is not None}


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
