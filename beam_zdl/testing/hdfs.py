"""LocalHdfs: a real HDFS (Hadoop's MiniDFSCluster) for tests and demos.

One NameNode and one DataNode run in a child JVM started from
``java/hdfs/MiniHdfs.java`` (a single-file source program; no compile step)
with Hadoop's jars resolved by Maven (see ``jars.py``). Storage lives in a
temporary folder; WebHDFS serves on the NameNode's HTTP port on 127.0.0.1.

By project convention the host:port of an ``hdfs://`` URI is the NameNode's
HTTP (WebHDFS) address, so ``LocalHdfs().url`` is ``hdfs://127.0.0.1:<http>``
and ``beam_zdl.storage.open_storage`` talks WebHDFS to it.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from pathlib import Path

import requests

import beam_zdl.testing.jars as jars
from beam_zdl.testing._process import LocalServer, ServerProcess, free_port, wait_until

__all__ = ["LocalHdfs"]

_LOGGER = logging.getLogger(__name__)

# Made by the first clean stop (``-XX:ArchiveClassesAtExit``, about 4 s extra
# once), used by every later start. It lives beside the jars, so a new pom
# (which re-resolves the folder) drops it; a JDK that cannot use it ignores it.
_CDS_ARCHIVE = "minihdfs.jsa"

_READY = re.compile(r"MINIHDFS READY http=(\d+) rpc=(\d+)")

# Start-up is dominated by JIT and class loading: C1 only and the serial GC
# cut it from about 5 s to about 3.3 s on a 2-core machine, and a class-data
# sharing archive of Hadoop's classes (see ``_CDS_ARCHIVE``) to about 2.6 s.
_JVM_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xss512k",
              "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true",
              "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]


class LocalHdfs(LocalServer):
    """A MiniDFSCluster (1 NameNode, 1 DataNode) with WebHDFS on loopback.

    Use as a context manager, or call ``start()`` and ``stop()``. ``kill()``
    SIGKILLs the JVM and keeps its storage; ``restart()`` starts it again on
    the same port and storage.

    Args:
        workdir: where the cluster keeps its storage and log; a new temporary
            folder (deleted on ``stop``) when None.
        heap_mb: the JVM's maximum heap.
        start_timeout_s: how long to wait for WebHDFS to answer.
    """

    KIND = "HDFS cluster"
    LOG_NAME = "minihdfs.log"

    def __init__(self, workdir: str | os.PathLike[str] | None = None, heap_mb: int = 256,
                 start_timeout_s: float = 90.0) -> None:
        super().__init__(workdir, prefix="localhdfs-")
        self.heap_mb = heap_mb
        self.start_timeout_s = start_timeout_s
        self.http_port = free_port()
        self.rpc_port: int | None = None
        self.startup_s: float | None = None
        self._formatted = False
        self._log_offset = 0
        self._cds_dump: Path | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def webhdfs_url(self) -> str:
        """The NameNode's HTTP address: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        """The ``hdfs://`` root URI (host:port is the WebHDFS address)."""
        return f"hdfs://127.0.0.1:{self.http_port}"

    def start(self) -> "LocalHdfs":
        """Start the cluster (empty the first time) and wait until WebHDFS serves.

        Returns:
            self, for chaining.

        Raises:
            ZdlError: Java or Maven is missing, the jars cannot be resolved, or
                the cluster exits or does not serve within ``start_timeout_s``
                (the message holds the tail of its log).
        """
        if self._proc and self._proc.alive():
            return self
        began = time.monotonic()
        classpath = jars.classpath("hdfs")
        archive = jars.resolve("hdfs") / _CDS_ARCHIVE
        if archive.exists():
            cds = [f"-XX:SharedArchiveFile={archive}"]
        else:
            self._cds_dump = archive.with_name(f".{archive.name}.{uuid.uuid4().hex}.tmp")
            cds = [f"-XX:ArchiveClassesAtExit={self._cds_dump}"]
        source = jars.component_dir("hdfs") / "MiniHdfs.java"
        storage = self.workdir / "dfs"
        storage.mkdir(parents=True, exist_ok=True)
        mode = "reuse" if self._formatted else "format"
        args = [jars.java_binary(), f"-Xmx{self.heap_mb}m", *_JVM_FLAGS, *cds,
                "-cp", classpath, str(source), str(storage), str(self.http_port), mode]
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.rpc_port = None
        self._proc = ServerProcess(args, self.log_file)
        self._proc.start()
        self._formatted = True
        try:
            wait_until(self._ready, self.start_timeout_s, f"MiniDFSCluster (WebHDFS at "
                       f"{self.webhdfs_url})", log=self.log_file, alive=self._proc.alive)
        except BaseException:
            self._proc.kill()  # do not leave a half-started JVM behind
            raise
        self.startup_s = time.monotonic() - began
        _LOGGER.info("HDFS serving at %s (NameNode RPC port %s) after %.1f s",
                     self.url, self.rpc_port, self.startup_s)
        return self

    def stop(self) -> None:
        """Stop the cluster and delete its storage if the folder is ours."""
        super().stop()
        self._keep_cds_archive()

    def restart(self) -> "LocalHdfs":
        """Start again on the same port and storage (after ``kill``)."""
        if self._proc and self._proc.alive():
            self._proc.stop(self.STOP_TIMEOUT_S)
            self._keep_cds_archive()
        return self.start()

    # -- internals ---------------------------------------------------------

    def _keep_cds_archive(self) -> None:
        """Publish the class-data archive a clean exit dumped (atomically)."""
        dump, self._cds_dump = self._cds_dump, None
        if dump is None or not dump.exists():
            return
        target = dump.with_name(_CDS_ARCHIVE)
        if target.exists():
            dump.unlink(missing_ok=True)
        else:
            os.replace(dump, target)

    def _ready(self) -> bool:
        if self.rpc_port is None:
            with open(self.log_file, "rb") as log:
                log.seek(self._log_offset)
                match = _READY.search(log.read().decode(errors="replace"))
            if not match:
                return False
            self.rpc_port = int(match.group(2))
        # The NameNode initialises WebHDFS (Jersey) on its first request:
        # wait for a real answer, not just the READY line.
        resp = requests.get(f"{self.webhdfs_url}/webhdfs/v1/",
                            params={"op": "GETFILESTATUS", "user.name": "root"}, timeout=10)
        return resp.status_code == 200 and _out_of_safe_mode(self.webhdfs_url)


def _out_of_safe_mode(webhdfs_url: str) -> bool:
    """Whether the NameNode accepts writes (it is not in safe mode)."""
    # A restarted NameNode stays read-only until its DataNode reports; a mkdirs
    # of an existing folder is a harmless write that fails in safe mode.
    resp = requests.put(f"{webhdfs_url}/webhdfs/v1/",
                        params={"op": "MKDIRS", "user.name": "root"}, timeout=10)
    if resp.status_code != 200:
        _LOGGER.debug("HDFS at %s not writable yet (HTTP %s): %s",
                      webhdfs_url, resp.status_code, resp.text[:300])
    return resp.status_code == 200
