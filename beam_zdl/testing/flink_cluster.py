"""LocalFlink: a real Flink standalone session cluster for tests and benchmarks.

One JobManager (``StandaloneSessionClusterEntrypoint``) and ``taskmanagers``
TaskManagers (``TaskManagerRunner``) run as separate JVMs on loopback, with
the REST API on a free port and checkpoints on local disk. Maven serves no
``flink-dist``, but both entrypoints live in ``flink-runtime``, which is on
the classpath of Beam's Flink runner already (component ``java/flink``, the
jars :mod:`beam_zdl.testing.flink` resolves), so the cluster runs exactly the
Flink version the job server was built against.

Python SDK workers run outside Flink, as on a real cluster: the harness also
starts a worker pool (:mod:`beam_zdl.external_pool`, which answers like Beam's
``apache_beam.runners.worker.worker_pool_main`` and keeps workers started ahead),
and jobs use ``--environment_type=EXTERNAL --environment_config=<pool>``
(:meth:`LocalFlink.runner_args`). Each TaskManager asks the pool for its SDK
workers, which the pool starts as child processes. This is the Beam-on-Flink
deployment of Flink's Kubernetes operator (a worker-pool sidecar per
TaskManager) with one pool for all TaskManagers of this one machine; it needs
no Docker and no Go-built boot binary, and the workers import beam_zdl from
the harness's own Python. A killed TaskManager's workers lose their control
connection and exit; the pool survives and serves the restarted job.

Cluster settings chosen for tests: 2 slots per TaskManager with slots spread
evenly (a parallelism-2 job runs on both TaskManagers, and after one is
killed the job fits on the other), 1 s heartbeats with a 5 s timeout (a
SIGKILLed TaskManager is noticed in seconds), a failed job restarted after
2 s at most ``restart_attempts`` times (3) and then failed. Unbounded restarts
(what Flink uses when checkpointing is on) would keep a micro-batch whose job
cannot succeed, and so its driver, waiting forever; a bounded number makes
the job fail, and the driver fail the batch with the job's reason (the batch
stays pending).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from beam_zdl.errors import ZdlError
import beam_zdl.testing.jars as jars
from beam_zdl.testing._process import ServerProcess, free_port, port_answers, wait_until

__all__ = ["LocalFlink"]

_LOGGER = logging.getLogger(__name__)

_JOBMANAGER = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
_TASKMANAGER = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"

# What Flink 1.19's own config ships as env.java.opts.all for Java 17.
_JAVA17_OPENS = [
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
]


class LocalFlink:
    """A Flink session cluster (1 JobManager, N TaskManagers) and a Beam worker pool.

    Use as a context manager, or call ``start()`` and ``stop()``.

    Args:
        taskmanagers: how many TaskManager JVMs.
        slots: task slots per TaskManager.
        workdir: config, logs and checkpoints; a temporary folder (deleted on
            ``stop``) when None.
        jobmanager_mb / taskmanager_mb: each JVM's process memory.
        start_timeout_s: how long to wait for the REST API and the TaskManagers.
        restart_attempts: how often a failed job is restarted (after 2 s) before it
            fails for good.
    """

    def __init__(self, taskmanagers: int = 2, slots: int = 2,
                 workdir: str | os.PathLike[str] | None = None, jobmanager_mb: int = 768,
                 taskmanager_mb: int = 1024, start_timeout_s: float = 120.0,
                 restart_attempts: int = 3) -> None:
        self.taskmanager_count = taskmanagers
        self.slots = slots
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="localflink-"))
        self.jobmanager_mb = jobmanager_mb
        self.taskmanager_mb = taskmanager_mb
        self.start_timeout_s = start_timeout_s
        self.restart_attempts = restart_attempts
        self.rest_port = free_port()
        self.worker_pool_port = free_port()
        self._rpc_port = free_port()
        self._blob_port = free_port()
        self._jobmanager: ServerProcess | None = None
        self._taskmanagers: list[ServerProcess | None] = [None] * taskmanagers
        self._pool: ServerProcess | None = None

    # -- addresses ---------------------------------------------------------

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def flink_master(self) -> str:
        """For ``--flink_master``: the JobManager's REST address."""
        return f"localhost:{self.rest_port}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def log_file(self, name: str) -> Path:
        """``jobmanager``, ``taskmanager-<i>`` or ``worker-pool``."""
        return self.workdir / "log" / f"{name}.log"

    def runner_args(self, parallelism: int = 2,
                    checkpointing_interval_ms: int | None = 1000) -> list[str]:
        """Pipeline flags to run a Beam Python job on this cluster.

        Args:
            parallelism: the job's ``--parallelism``.
            checkpointing_interval_ms: ``--checkpointing_interval`` (streaming jobs
                need it: offsets are committed on completed checkpoints); None
                for bounded jobs (micro-batches).
        """
        from beam_zdl.testing.flink import NO_STAGING, no_staging_job_server_jar
        # The TaskManagers have the runner on their classpath: jobs stage no jars (the
        # job server's classpath, about 150 MB, would be uploaded for every job).
        args = ["--runner=FlinkRunner", f"--flink_master={self.flink_master}",
                f"--flink_job_server_jar={no_staging_job_server_jar()}",
                f"--pipeline_resources_detector_factory_class={NO_STAGING}",
                "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{self.worker_pool_port}",
                f"--parallelism={parallelism}"]
        if checkpointing_interval_ms is not None:
            args.append(f"--checkpointing_interval={checkpointing_interval_ms}")
        return args

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "LocalFlink":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "LocalFlink":
        """Start the worker pool, the JobManager and every TaskManager; wait until all serve."""
        (self.workdir / "log").mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if self._pool is None or not self._pool.alive():
            self._pool = self._start_worker_pool()
        if self._jobmanager is None or not self._jobmanager.alive():
            self._jobmanager = ServerProcess(
                self._jvm(self.jobmanager_mb // 2) + [_JOBMANAGER, "--configDir", str(self._conf)],
                self.log_file("jobmanager"))
            self._jobmanager.start()
        for i in range(self.taskmanager_count):
            if (tm := self._taskmanagers[i]) is None or not tm.alive():
                self._start_taskmanager(i)
        wait_until(lambda: port_answers(self.rest_port), self.start_timeout_s,
                   f"Flink REST API on port {self.rest_port}", log=self.log_file("jobmanager"),
                   alive=lambda: self._jobmanager is not None and self._jobmanager.alive())
        self.wait_for_taskmanagers(self.taskmanager_count)
        return self

    def stop(self) -> None:
        """Cancel running jobs, stop every process, delete the folder if it is ours."""
        if self._jobmanager is not None and self._jobmanager.alive():
            try:
                for job in self.running_jobs():
                    self.cancel(job)
            except Exception:  # stopping anyway
                _LOGGER.info("could not cancel the jobs of %s", self.rest_url, exc_info=True)
        for proc in [*self._taskmanagers, self._jobmanager, self._pool]:
            if proc is not None:
                proc.stop(timeout_s=15)
        self._taskmanagers = [None] * self.taskmanager_count
        self._jobmanager = self._pool = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_taskmanager(self, i: int) -> None:
        """SIGKILL TaskManager ``i``, as a crashed machine would die."""
        proc = self._taskmanager(i)
        _LOGGER.info("killing TaskManager %d (pid %s)", i, proc.pid)
        proc.kill()

    def restart_taskmanager(self, i: int) -> None:
        """Start TaskManager ``i`` again (after ``kill_taskmanager``); wait until it registers."""
        proc = self._taskmanager(i)
        if proc.alive():
            proc.stop()
        before = {tm["id"] for tm in self.taskmanagers()}
        self._start_taskmanager(i)
        wait_until(lambda: any(tm["id"] not in before for tm in self.taskmanagers()),
                   self.start_timeout_s, f"TaskManager {i} registering at {self.rest_url}",
                   log=self.log_file(f"taskmanager-{i}"),
                   alive=lambda: self._taskmanager(i).alive())

    def taskmanager_alive(self, i: int) -> bool:
        return self._taskmanager(i).alive()

    # -- REST --------------------------------------------------------------

    def rest(self, path: str, method: str = "GET", timeout_s: float = 10.0) -> Any:
        """A REST call to the JobManager; the decoded JSON answer."""
        response = requests.request(method, self.rest_url + path, timeout=timeout_s)
        if response.status_code >= 300:
            raise ZdlError(f"Flink REST {method} {self.rest_url}{path} answered "
                           f"{response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def taskmanagers(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.rest("/taskmanagers")["taskmanagers"]
        return found

    def wait_for_taskmanagers(self, count: int, timeout_s: float | None = None) -> None:
        """Wait until ``count`` TaskManagers are registered with the JobManager, with
        their slots (what a job needs to be scheduled)."""
        def registered() -> bool:
            found = self.taskmanagers()
            slots = sum(tm["slotsNumber"] for tm in found)
            return len(found) >= count and slots >= count * self.slots
        wait_until(registered,
                   timeout_s or self.start_timeout_s,
                   f"Flink session cluster at {self.rest_url} with {count} TaskManagers",
                   log=self.log_file("jobmanager"),
                   alive=lambda: self._jobmanager is not None and self._jobmanager.alive())

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the cluster knows: ``{"id": ..., "status": ...}``."""
        found: list[dict[str, Any]] = self.rest("/jobs")["jobs"]
        return found

    def running_jobs(self) -> list[str]:
        return [j["id"] for j in self.jobs()
                if j["status"] in ("CREATED", "RUNNING", "RESTARTING", "INITIALIZING")]

    def wait_for_job(self, timeout_s: float = 120.0) -> str:
        """The id of the one running job, once there is one."""
        found: list[str] = []

        def one() -> bool:
            found[:] = self.running_jobs()
            return len(found) == 1
        wait_until(one, timeout_s, f"a running job on {self.rest_url}",
                   log=self.log_file("jobmanager"))
        return found[0]

    def job_status(self, job_id: str) -> str:
        state: str = self.rest(f"/jobs/{job_id}")["state"]
        return state

    def cancel(self, job_id: str, timeout_s: float = 60.0) -> None:
        """Cancel a job and wait until it is CANCELED (or otherwise ended)."""
        self.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")
        wait_until(lambda: self.job_status(job_id) in ("CANCELED", "FAILED", "FINISHED"),
                   timeout_s, f"job {job_id} cancelled on {self.rest_url}")

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        """Flink's checkpoint statistics of a job (``/jobs/<id>/checkpoints``)."""
        stats: dict[str, Any] = self.rest(f"/jobs/{job_id}/checkpoints")
        return stats

    # -- internals ---------------------------------------------------------

    @property
    def _conf(self) -> Path:
        return self.workdir / "conf"

    def _taskmanager(self, i: int) -> ServerProcess:
        if not 0 <= i < self.taskmanager_count or (proc := self._taskmanagers[i]) is None:
            raise ZdlError(f"no TaskManager {i}: this LocalFlink has "
                           f"{self.taskmanager_count} (0..{self.taskmanager_count - 1}); "
                           "call start() first")
        return proc

    def _task_heap_mb(self) -> int:
        """What is left for task heap once the fixed parts (see _write_config) are out."""
        return max(128, self.taskmanager_mb - 64 - 128 - 64 - 32 - 64 - 192 - 64)

    def _jvm(self, heap_mb: int, direct_mb: int | None = None) -> list[str]:
        direct = [f"-XX:MaxDirectMemorySize={direct_mb}m"] if direct_mb else []
        return [jars.java_binary(), f"-Xmx{heap_mb}m", *direct,
                "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                "-Djava.net.preferIPv4Stack=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                *_JAVA17_OPENS, "-cp", self._classpath()]

    def _classpath(self) -> str:
        # The runner's jars, and the class jobs name in their options (runner_args).
        from beam_zdl.testing.flink import no_staging_jar
        return os.pathsep.join([jars.classpath("flink"), str(no_staging_jar())])

    def _start_taskmanager(self, i: int) -> None:
        proc = ServerProcess(
            # Direct memory: framework off-heap + task off-heap + network, as Flink's
            # own scripts compute -XX:MaxDirectMemorySize.
            self._jvm(64 + self._task_heap_mb(), direct_mb=128 + 64 + 64) + [
                _TASKMANAGER, "--configDir", str(self._conf),
                "-D", f"taskmanager.resource-id=tm-{i}-{int(time.time() * 1000)}"],
            self.log_file(f"taskmanager-{i}"))
        proc.start()
        self._taskmanagers[i] = proc

    def _start_worker_pool(self) -> ServerProcess:
        # beam_zdl's pool, not Beam's worker_pool_main: Beam's files workers by id alone,
        # and both TaskManagers number theirs from 1 (see beam_zdl.external_pool). Its
        # spares (SDK workers started and imported ahead) serve one job's slots at once.
        pool = ServerProcess(
            [sys.executable, "-m", "beam_zdl.external_pool",
             f"--service_port={self.worker_pool_port}",
             f"--spares={self.taskmanager_count * self.slots}"],
            self.log_file("worker-pool"))
        pool.start()
        wait_until(lambda: port_answers(self.worker_pool_port),
                   60, f"Beam worker pool on port {self.worker_pool_port}",
                   log=self.log_file("worker-pool"), alive=pool.alive)
        return pool

    def _write_config(self) -> None:
        self._conf.mkdir(parents=True, exist_ok=True)
        settings = {
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": self._rpc_port,
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.memory.process.size": f"{self.jobmanager_mb}m",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.host": "127.0.0.1",
            "taskmanager.rpc.port": "0",
            "taskmanager.data.port": "0",
            "taskmanager.numberOfTaskSlots": self.slots,
            # TaskManagerRunner started directly (not by Flink's scripts, which compute
            # these with BashJavaUtils) needs every part of its memory spelled out.
            "taskmanager.cpu.cores": self.slots,
            "taskmanager.memory.framework.heap.size": "64m",
            "taskmanager.memory.task.heap.size": f"{self._task_heap_mb()}m",
            # A bounded job's shuffle (a GroupByKey: WriteToText, Count.PerElement) is a
            # blocking sort-merge shuffle whose read buffers (batch-shuffle.size, 64m by
            # default) come out of framework off-heap memory: Flink's default of 128m
            # leaves room for them and for Netty; 64m failed with "Can't allocate enough
            # direct buffer for batch shuffle read buffer pool". Task off-heap: Beam's
            # gRPC (vendored Netty) to the SDK workers allocates direct buffers.
            "taskmanager.memory.framework.off-heap.size": "128m",
            "taskmanager.memory.framework.off-heap.batch-shuffle.size": "64m",
            "taskmanager.memory.task.off-heap.size": "64m",
            "taskmanager.memory.managed.size": "32m",
            "taskmanager.memory.network.min": "64m",
            "taskmanager.memory.network.max": "64m",
            "taskmanager.memory.jvm-metaspace.size": "192m",
            "taskmanager.memory.jvm-overhead.min": "64m",
            "taskmanager.memory.jvm-overhead.max": "64m",
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": self.rest_port,
            "blob.server.port": self._blob_port,
            "cluster.evenly-spread-out-slots": "true",
            "heartbeat.interval": "1000",
            "heartbeat.timeout": "5000",
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": self.restart_attempts,
            "restart-strategy.fixed-delay.delay": "2 s",
            "state.backend.type": "hashmap",
            "state.checkpoints.dir": self.checkpoint_dir.as_uri(),
            "execution.checkpointing.externalized-checkpoint-retention":
                "RETAIN_ON_CANCELLATION",
            "state.checkpoints.num-retained": "1",
            # The TaskManagers have Beam's runner on their classpath (it is the cluster's
            # classpath) and jobs ship it again as user jars. Child-first loading then
            # mixes one class's nested classes from two loaders ("IllegalAccessError:
            # failed to access class ...IntObjectHashMap$2" in vendored netty, a
            # bounded job stuck); parent-first loads every class once.
            "classloader.resolve-order": "parent-first",
            "io.tmp.dirs": str(self.workdir / "tmp"),
            "web.submit.enable": "false",
        }
        (self.workdir / "tmp").mkdir(exist_ok=True)
        (self._conf / "flink-conf.yaml").write_text(
            "".join(f"{k}: {v}\n" for k, v in settings.items()))
