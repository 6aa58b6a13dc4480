"""Prism, Beam's portable local runner, built from the Beam Go module of Beam's version.

Beam's PrismRunner downloads a Prism binary at run time, which cannot work
offline. ``make prism`` (or :func:`prism_binary`) builds it once with
``go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<beam version>``
into ``<cache>/bin/prism``, with Go's module and build caches inside the
cache too, so reruns are instant. Pipelines get it with ``--prism_location``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from pathlib import Path

from beam_zdl.errors import ZdlError
import beam_zdl.testing.jars as jars

__all__ = ["prism_binary", "prism_runner_args"]

_LOGGER = logging.getLogger(__name__)


def _beam_version() -> str:
    import apache_beam
    return apache_beam.__version__.split(".dev")[0].split("rc")[0]


def prism_binary() -> Path:
    """``<cache>/bin/prism``, built with ``go install`` when missing."""
    cache = jars.cache_dir()
    binary = cache / "bin" / "prism"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if not go:
        raise ZdlError("Go was not found on PATH; it builds Prism (Beam's local portable "
                       "runner) for streaming pipelines. Install Go 1.24+.")
    env = dict(os.environ, GOBIN=str(cache / "bin"), GOMODCACHE=str(cache / "go" / "mod"),
               GOCACHE=str(cache / "go" / "build"), GOFLAGS="-modcacherw -buildvcs=false")
    module = f"github.com/apache/beam/sdks/v2/go/cmd/prism@v{_beam_version()}"
    _LOGGER.info("building Prism: go install %s", module)
    proc = subprocess.run([go, "install", module], env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not binary.exists():
        raise ZdlError(f"go install {module} failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
    return binary


def prism_runner_args() -> list[str]:
    """Pipeline flags to run on Prism from the cache (no download at run time)."""
    return ["--runner=PrismRunner", f"--prism_location={prism_binary()}",
            "--environment_type=LOOPBACK"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(prism_binary())
