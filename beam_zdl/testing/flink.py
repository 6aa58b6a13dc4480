"""Beam's Flink job server for FlinkRunner with ``--flink_master=[local]``.

Beam's FlinkRunner (Python) starts ``java -jar <flink_job_server_jar>``. Beam
publishes that jar shaded (``beam-runners-flink-<flink>-job-server``), but the
package registry this project builds from holds none of them; it holds the
unshaded ``beam-runners-flink-1.19`` runner, whose ``FlinkJobServerDriver`` is
the same job server. :func:`job_server_jar` therefore resolves that runner's
classpath with Maven (component ``java/flink``) and writes a small launcher
jar next to it: a manifest naming the main class and the classpath, nothing
else. The result is a drop-in ``--flink_job_server_jar``.

Run ``python -m beam_zdl.testing.flink`` to build it ahead of time.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import beam_zdl.testing.jars as jars
from beam_zdl.runners import FlinkOptions

__all__ = ["MAIN_CLASS", "FlinkCheckpointOptions", "job_server_jar", "flink_runner_args"]

_LOGGER = logging.getLogger(__name__)

MAIN_CLASS = "org.apache.beam.runners.flink.FlinkJobServerDriver"
_LAUNCHER = "beam-zdl-flink-job-server.jar"


# Declared in beam_zdl.runners (declaring a flag twice breaks every PipelineOptions);
# the old name stays for scripts that import it to declare --checkpointing_interval.
FlinkCheckpointOptions = FlinkOptions


def _manifest(class_path: list[str]) -> bytes:
    """A jar manifest; lines wrap at 72 bytes with a leading space, as the spec requires."""
    lines = ["Manifest-Version: 1.0", f"Main-Class: {MAIN_CLASS}",
             "Created-By: beam_zdl.testing.flink", "Class-Path: " + " ".join(class_path)]
    out = io.BytesIO()
    for line in lines:
        data = line.encode()
        out.write(data[:72] + b"\r\n")
        data = data[72:]
        while data:
            out.write(b" " + data[:71] + b"\r\n")
            data = data[71:]
    out.write(b"\r\n")
    return out.getvalue()


def job_server_jar() -> Path:
    """The launcher jar (resolving the Flink runner's jars with Maven the first time)."""
    folder = jars.resolve("flink")
    class_path = sorted(p.name for p in folder.glob("*.jar") if p.name != _LAUNCHER)
    launcher = folder / _LAUNCHER
    manifest = _manifest(class_path)
    if launcher.exists():
        with zipfile.ZipFile(launcher) as existing:
            if existing.read("META-INF/MANIFEST.MF") == manifest:
                return launcher
    tmp = launcher.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", manifest)
    tmp.replace(launcher)
    _LOGGER.info("wrote the Flink job server launcher %s", launcher)
    return launcher


def flink_runner_args(parallelism: int = 1, checkpointing_interval_ms: int = 1000) -> list[str]:
    """Pipeline flags for an embedded Flink cluster running beam_zdl's streaming read.

    Checkpointing must be on: Flink finalizes bundles (so beam_zdl commits
    offsets) only when a checkpoint that holds them completes.
    """
    return ["--runner=FlinkRunner", "--flink_master=[local]",
            f"--flink_job_server_jar={job_server_jar()}", "--environment_type=LOOPBACK",
            f"--parallelism={parallelism}",
            f"--checkpointing_interval={checkpointing_interval_ms}"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(job_server_jar())
