"""A Beam worker pool for ``--environment_type=EXTERNAL`` with SDK workers started ahead.

Run it where Beam's own pool would run (beside each Flink TaskManager)::

    python -m beam_zdl.external_pool --service_port=50000

and give jobs ``--environment_type=EXTERNAL --environment_config=localhost:50000``.
It answers the same gRPC service as Beam's
``apache_beam.runners.worker.worker_pool_main`` (``BeamFnExternalWorkerPool``:
``StartWorker``, ``StopWorker``) and starts each SDK worker the same way
(``SdkHarness(control_url, worker_id=...).run()`` in a child process), with
two differences:

Workers started ahead
    Flink's Beam runner asks for new SDK workers for every job, so each
    micro-batch on Flink would pay a Python start and the import of Beam and
    beam_zdl (seconds on a loaded machine) per worker. This pool keeps
    ``--spares`` child processes that have already imported them and wait on
    their stdin; ``StartWorker`` hands one the control endpoint, and a new
    spare is started in the background.

Workers kept apart per caller
    Beam's pool files workers by ``worker_id`` alone, but each TaskManager
    numbers its workers from 1: with one pool serving two TaskManagers (one
    machine, as ``LocalFlink`` runs them), a ``StopWorker("1-1")`` from one
    TaskManager stopped the other's live worker "1-1", and that task then
    waited 3 minutes ("No client connected within timeout") and failed. This
    pool files a worker under the caller's connection (gRPC peer) and its id.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from concurrent import futures
from typing import IO, Any, cast

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

__all__ = ["ExternalWorkerPool", "serve", "main"]

_LOGGER = logging.getLogger(__name__)

# Imported by a spare before it is handed a job: what each SDK worker would import anyway.
_WARM_IMPORTS = ("apache_beam.runners.worker.sdk_worker", "beam_zdl", "beam_zdl.direct",
                 "beam_zdl.io", "beam_zdl.records", "beam_zdl.wal_read")


class ExternalWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """The ``BeamFnExternalWorkerPool`` service: SDK workers as child processes.

    Args:
        spares: how many started, imported, idle workers to keep ready.
        stop_timeout_s: how long a stopped worker gets after SIGTERM before SIGKILL.
    """

    def __init__(self, spares: int = 2, stop_timeout_s: float = 10.0) -> None:
        self.spares = spares
        self.stop_timeout_s = stop_timeout_s
        self._lock = threading.Lock()
        self._idle: list[subprocess.Popen[bytes]] = []
        self._workers: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._closed = False
        self._spawning = 0  # spares being started by _refill
        self._refill()

    # -- the gRPC service ----------------------------------------------------

    def StartWorker(self, request: Any, context: Any) -> Any:
        """Hand a spare (or a new process) the worker's control endpoint."""
        try:
            proc = self._take_spare()
            job = {"control": request.control_endpoint.url, "worker_id": request.worker_id}
            stdin = cast(IO[bytes], proc.stdin)
            stdin.write((json.dumps(job) + "\n").encode())
            stdin.close()
            with self._lock:
                self._workers[(context.peer(), request.worker_id)] = proc
            _LOGGER.info("started SDK worker %s for %s (pid %d)", request.worker_id,
                         context.peer(), proc.pid)
            threading.Thread(target=self._refill, daemon=True).start()
            return beam_fn_api_pb2.StartWorkerResponse()
        except Exception as e:  # the runner shows the error
            _LOGGER.exception("could not start SDK worker %s", request.worker_id)
            return beam_fn_api_pb2.StartWorkerResponse(error=f"beam_zdl external pool: {e!r}")

    def StopWorker(self, request: Any, context: Any) -> Any:
        """Stop the worker this caller started under this id (another caller's stays)."""
        with self._lock:
            proc = self._workers.pop((context.peer(), request.worker_id), None)
        if proc is not None:
            _LOGGER.info("stopping SDK worker %s of %s (pid %d)", request.worker_id,
                         context.peer(), proc.pid)
            self._terminate(proc)
        return beam_fn_api_pb2.StopWorkerResponse()

    # -- processes -----------------------------------------------------------

    def workers(self) -> dict[tuple[str, str], int]:
        """The running workers: (caller, worker id) -> process id."""
        with self._lock:
            return {key: proc.pid for key, proc in self._workers.items()
                    if proc.poll() is None}

    def close(self) -> None:
        """Stop every worker and spare."""
        with self._lock:
            self._closed = True
            procs = [*self._idle, *self._workers.values()]
            self._idle, self._workers = [], {}
        for proc in procs:
            self._terminate(proc)

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Output goes to the pool's own (its log); a pipe nobody reads would block a worker.
        return subprocess.Popen([sys.executable, "-m", "beam_zdl.external_pool", "--spare"],
                                stdin=subprocess.PIPE, close_fds=True)

    def _take_spare(self) -> subprocess.Popen[bytes]:
        with self._lock:
            while self._idle:
                proc = self._idle.pop(0)
                if proc.poll() is None:
                    return proc
        return self._spawn()

    def _refill(self) -> None:
        while True:
            with self._lock:
                self._idle = [p for p in self._idle if p.poll() is None]
                if self._closed or len(self._idle) + self._spawning >= self.spares:
                    return
                self._spawning += 1
            try:
                proc = self._spawn()
            finally:
                with self._lock:
                    self._spawning -= 1
            with self._lock:
                if not self._closed:
                    self._idle.append(proc)
                    continue
            self._terminate(proc)  # the pool closed meanwhile
            return

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_spare() -> None:
    """A spare: import what a worker needs, wait for its job on stdin, then be the worker."""
    import importlib
    for name in _WARM_IMPORTS:
        importlib.import_module(name)
    line = sys.stdin.readline()
    if not line:  # the pool closed our stdin without a job: it is stopping
        return
    job = json.loads(line)
    from apache_beam.runners.worker.sdk_worker import SdkHarness
    SdkHarness(job["control"], worker_id=job["worker_id"], state_cache_size=0,
               data_buffer_time_limit_ms=-1).run()


def serve(port: int, spares: int = 2) -> tuple[grpc.Server, ExternalWorkerPool]:
    """Start the pool's gRPC server on ``port`` (all interfaces); return it and the pool."""
    pool = ExternalWorkerPool(spares=spares)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    return server, pool


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m beam_zdl.external_pool",
        description="Beam worker pool (EXTERNAL environment) with SDK workers started ahead.")
    parser.add_argument("--service_port", type=int, default=50000,
                        help="Port of the pool's gRPC service (jobs' --environment_config).")
    parser.add_argument("--spares", type=int, default=2,
                        help="SDK workers to keep started and imported, ready for a job.")
    parser.add_argument("--spare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.spare:
        _run_spare()
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server, pool = serve(args.service_port, args.spares)
    _LOGGER.info("beam_zdl external worker pool listening on port %d, %d spares",
                 args.service_port, args.spares)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(grace=2)
    pool.close()
    os._exit(0)  # gRPC's threads would delay the exit


if __name__ == "__main__":
    main()
