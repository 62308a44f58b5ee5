"""A local Google Cloud Storage for tests: gcp-storage-emulator on 127.0.0.1, in this process.

Beam's ``FileSystems`` (``gs://`` paths) talks to it through google-cloud-storage, which honours
``STORAGE_EMULATOR_HOST``; with no credentials Beam uses an anonymous client, so nothing leaves
the machine. Use the ``gcs_emulator`` fixture (import it into a test module or conftest)::

    from tests.gcs_emulator import gcs_emulator  # noqa: F401  (pytest fixture)

    def test_reads_gs(gcs_emulator):
        path = gcs_emulator.upload(local_file, "models/model.onnx")  # -> "gs://<bucket>/models/model.onnx"

or, outside pytest, ``with GcsEmulator() as gcs: ...``.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import pytest

__all__ = ["GcsEmulator", "gcs_emulator"]

# Env vars the emulator needs: where the client connects, and no probing for GCE credentials
# (the metadata-server lookup would wait on network timeouts first).
_ENV = ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK", "GOOGLE_CLOUD_PROJECT")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GcsEmulator:
    """In-memory GCS server with one bucket; sets the env so Beam's gs:// IO reaches it.

    Args:
        bucket: bucket created at start; a unique name by default so tests don't collide.
    """

    def __init__(self, bucket: Optional[str] = None) -> None:
        self.bucket = bucket or f"test-{uuid.uuid4().hex[:12]}"
        self.host = "127.0.0.1"
        self.port = 0
        self._server: object = None
        self._saved_env: Dict[str, Optional[str]] = {}
        self._saved_creds: Optional[Tuple[bool, Any]] = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> GcsEmulator:
        try:
            from gcp_storage_emulator.server import create_server  # type: ignore[import-untyped]
        except ModuleNotFoundError:
            pytest.skip("gcp-storage-emulator is not installed (pip install 'trt-bert-qa-beam[dev]')")
        self.port = _free_port()
        server = create_server(self.host, self.port, in_memory=True, default_bucket=self.bucket)
        server.start()
        self._server = server
        self._saved_env = {k: os.environ.get(k) for k in _ENV}
        os.environ["STORAGE_EMULATOR_HOST"] = self.endpoint
        os.environ["NO_GCE_CHECK"] = "True"
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "test-project")
        self._use_anonymous_beam_credentials()
        return self

    def _use_anonymous_beam_credentials(self) -> None:
        """Make Beam connect anonymously at once instead of after ~20 s of credential retries.

        Beam looks for Application Default Credentials with exponential backoff before falling
        back to an anonymous client, and caches the answer per process; pre-setting that cache
        (restored on stop) skips the wait. A Beam internal, hence the guard.
        """
        try:
            from apache_beam.internal.gcp.auth import _Credentials
        except ImportError:  # pragma: no cover - Beam without the gcp extra
            return
        self._saved_creds = (_Credentials._credentials_init, _Credentials._credentials)
        _Credentials._credentials_init = True
        _Credentials._credentials = None

    def stop(self) -> None:
        if self._saved_creds is not None:
            from apache_beam.internal.gcp.auth import _Credentials

            _Credentials._credentials_init, _Credentials._credentials = self._saved_creds
            self._saved_creds = None
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, name: str) -> str:
        """``gs://<bucket>/<name>``."""
        return f"gs://{self.bucket}/{name.lstrip('/')}"

    def upload(self, local: Union[str, Path], name: str) -> str:
        """Copy a local file (or every file under a local folder) to ``name``; returns its gs:// URL."""
        from apache_beam.io.filesystems import FileSystems

        src = Path(local)
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for f in files:
            dest = self.url(name if src.is_file() else f"{name.rstrip('/')}/{f.relative_to(src).as_posix()}")
            with open(f, "rb") as fin, FileSystems.create(dest) as fout:
                for block in iter(lambda: fin.read(8 << 20), b""):
                    fout.write(block)
        return self.url(name)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """A running emulator for the test session (one bucket; tests use their own object names)."""
    with GcsEmulator() as emulator:
        yield emulator
