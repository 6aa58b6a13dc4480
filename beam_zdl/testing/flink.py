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
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import beam_zdl.testing.jars as jars
from beam_zdl.errors import ZdlError
from beam_zdl.runners import FlinkOptions

__all__ = ["MAIN_CLASS", "NO_STAGING", "FlinkCheckpointOptions", "job_server_jar",
           "no_staging_jar", "client_poll_jar", "no_staging_job_server_jar",
           "flink_runner_args"]

_LOGGER = logging.getLogger(__name__)

MAIN_CLASS = "org.apache.beam.runners.flink.FlinkJobServerDriver"
_LAUNCHER = "beam-zdl-flink-job-server.jar"

# A PipelineResourcesDetector.Factory that detects nothing: with
# --pipeline_resources_detector_factory_class=<it>, the job server submits a job with no
# jars to stage, instead of its whole classpath (about 150 MB, uploaded to the cluster's
# blob server for every job: most of a micro-batch's submission time). The cluster then
# needs the runner on its own classpath (LocalFlink's TaskManagers have it), and, since
# Flink's operators carry the pipeline options, this class too.
NO_STAGING = "beam_zdl.flink.NoStagingDetectorFactory"
_NO_STAGING_JAR = "beam-zdl-flink-no-staging.jar"
_NO_STAGING_SRC = """package beam_zdl.flink;

import java.util.Collections;
import org.apache.beam.sdk.util.construction.resources.PipelineResourcesDetector;

/** Detects no resources: a job stages no jars (the cluster has the runner on its classpath). */
public class NoStagingDetectorFactory implements PipelineResourcesDetector.Factory {
  public static NoStagingDetectorFactory create() {
    return new NoStagingDetectorFactory();
  }

  @Override
  public PipelineResourcesDetector getPipelineResourcesDetector() {
    return (PipelineResourcesDetector) classLoader -> Collections.<String>emptyList();
  }
}
"""


# Flink's RestClusterClient, which the job server uses to submit a batch's job and wait for
# its result, polls the result with `new ExponentialWaitStrategy(10, 2000)`, hard-coded:
# 10 ms doubling to at most 2 s, so a job ending 2.1 s after its submission is seen at
# 2.55 s and one ending at 2.6 s at 4.55 s (0.9 s per tiny batch, median, measured on
# LocalFlink). The same class, capped at _POLL_CAP_MS, in a jar ahead of Flink's on the job
# server's classpath (and only there) has the job server see a job's end within that.
_POLL_CAP_MS = 200
_POLL_JAR = "beam-zdl-flink-client-poll.jar"
_POLL_SRC = """package org.apache.flink.client.program.rest.retry;

/**
 * beam_zdl: Flink's ExponentialWaitStrategy (same name, constructor and result up to the
 * cap), its wait capped at %d ms, so that a client polling a job's result sees its end
 * within that rather than within 2 s.
 */
public class ExponentialWaitStrategy implements WaitStrategy {
  private static final long CAP_MS = %d;
  private final long initialWait;
  private final long maxWait;

  public ExponentialWaitStrategy(long initialWait, long maxWait) {
    if (initialWait <= 0 || maxWait <= 0) {
      throw new IllegalArgumentException("initialWait and maxWait must be positive, were "
          + initialWait + " and " + maxWait);
    }
    this.initialWait = initialWait;
    this.maxWait = Math.min(maxWait, CAP_MS);
  }

  @Override
  public long sleepTime(long attempt) {
    if (attempt < 0) {
      throw new IllegalArgumentException("attempts must not be negative, was " + attempt);
    }
    long wait = attempt < 62 ? initialWait << attempt : maxWait;
    return wait > 0 && wait < maxWait ? wait : maxWait;
  }
}
""" % (_POLL_CAP_MS, _POLL_CAP_MS)


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


def _write_launcher(launcher: Path, manifest: bytes) -> Path:
    """A jar holding only ``manifest`` (its Class-Path names the jars), rewritten only when
    the manifest changed."""
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


def job_server_jar() -> Path:
    """The launcher jar (resolving the Flink runner's jars with Maven the first time)."""
    folder = jars.resolve("flink")
    class_path = sorted(p.name for p in folder.glob("*.jar") if p.name != _LAUNCHER)
    return _write_launcher(folder / _LAUNCHER, _manifest(class_path))


def _compiled_jar(name: str, java_class: str, source: str, against: str) -> Path:
    """A jar holding ``java_class`` compiled from ``source`` with ``javac`` (the first time,
    or when the source changed) against the runner's jars matching ``against``, in a
    folder of its own beside the runner's jars (their folder is the job server's
    classpath, see :func:`job_server_jar`)."""
    folder = jars.resolve("flink")
    out_dir = folder.parent / "flink-extra"
    jar = out_dir / name
    marker = out_dir / (name + ".src")
    if jar.exists() and marker.exists() and marker.read_text() == source:
        return jar
    javac = shutil.which("javac") or str(Path(jars.java_binary()).with_name("javac"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp).joinpath(*java_class.split(".")).with_suffix(".java")
        src.parent.mkdir(parents=True)
        src.write_text(source)
        core = [str(p) for p in folder.glob(against)]
        proc = subprocess.run([javac, "--release", "11", "-cp", os.pathsep.join(core),
                               "-d", str(Path(tmp) / "classes"), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ZdlError(f"javac could not compile {java_class} with {javac}: "
                           f"{proc.stderr[-2000:]}; a JDK 17 (javac) is needed")
        tmp_jar = jar.with_suffix(".tmp")
        with zipfile.ZipFile(tmp_jar, "w") as out:
            for cls in (Path(tmp) / "classes").rglob("*.class"):
                out.write(cls, str(cls.relative_to(Path(tmp) / "classes")))
        tmp_jar.replace(jar)
    marker.write_text(source)
    _LOGGER.info("compiled %s into %s", java_class, jar)
    return jar


def no_staging_jar() -> Path:
    """A jar holding :data:`NO_STAGING` (compiled with ``javac`` the first time)."""
    return _compiled_jar(_NO_STAGING_JAR, NO_STAGING, _NO_STAGING_SRC,
                         "beam-sdks-java-core-*.jar")


def client_poll_jar() -> Path:
    """A jar holding Flink's client ``ExponentialWaitStrategy`` capped at 200 ms (see
    ``_POLL_SRC``), for the job server's classpath ahead of Flink's own, and only there."""
    return _compiled_jar(_POLL_JAR, "org.apache.flink.client.program.rest.retry."
                         "ExponentialWaitStrategy", _POLL_SRC, "flink-clients-*.jar")


def no_staging_job_server_jar(capped_poll: bool = True) -> Path:
    """A job server launcher like :func:`job_server_jar` whose classpath also holds
    :data:`NO_STAGING` and, first (``capped_poll``), :func:`client_poll_jar` (both in the
    folder of :func:`no_staging_jar`)."""
    folder = jars.resolve("flink")
    extra = no_staging_jar()
    class_path = [f"../{folder.name}/{name}" for name in
                  sorted(p.name for p in folder.glob("*.jar") if p.name != _LAUNCHER)]
    first = [client_poll_jar().name] if capped_poll else []
    launcher = "beam-zdl-flink-job-server-capped-poll.jar" if capped_poll else _LAUNCHER
    return _write_launcher(extra.parent / launcher,
                           _manifest([*first, *class_path, extra.name]))


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
